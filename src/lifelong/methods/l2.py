"""L2 to the previous weights: the plainest weight regulariser, and the baseline of EWC, SI and MAS.

At the end of each experience the trainable weights are stored (theta*); from the second experience on the
loss gains `strength * sum_i (theta_i - theta*_i)^2`. It is EWC with every weight equally important, the
"L2" baseline of Kirkpatrick et al. (PNAS 2017, "Overcoming catastrophic forgetting in neural networks").

The penalty is shared with EWC, online EWC, SI and MAS (`penalty.py`); the weight snapshots with every
method that keeps copies of weights (`tensor_state.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from lifelong.methods.base import Context, Method
from lifelong.methods.penalty import check_strength, quadratic_penalty
from lifelong.methods.tensor_state import Tensors, from_state, snapshot, to_state
from lifelong.streams.experience import Split

DEFAULT_STRENGTH = 0.03


class L2(Method):
    """Options: `strength` (weight of the penalty `strength * ||theta - theta*||^2`, theta* the weights at
    the end of the previous experience)."""

    name = "l2"

    def __init__(self, strength: float = DEFAULT_STRENGTH) -> None:
        check_strength(self.name, strength)
        self.strength = strength
        self.anchor: Tensors | None = None  # weights at the end of the previous experience

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength}

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        if self.anchor is None or self.strength == 0:
            return None
        return self.strength * quadratic_penalty(ctx.model, self.anchor)

    def end(self, ctx: Context) -> None:
        self.anchor = snapshot(ctx.model)

    def state_dict(self) -> dict[str, Any]:
        return to_state("anchor", self.anchor)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor = from_state("anchor", state)
