"""One call that makes a Python run reproducible: seed every generator a model or stream may draw from.

lifelong.seed(0)                 # before building the model: its initial weights are then fixed
model = MLP(stream.input_shape, stream.num_classes)
"""

from __future__ import annotations

import random


def seed(value: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every GPU)."""
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value % (1 << 32))
    torch.manual_seed(value)  # also seeds every CUDA device
