"""lifelong: keep neural networks learning from a stream of new data without forgetting.

import lifelong
from lifelong.methods import Replay
from lifelong.models import MLP
from lifelong.streams import class_incremental

stream = class_incremental(lifelong.datasets.load("fashion_mnist"), experiences=5)
model = MLP(stream.input_shape, stream.num_classes, hidden=[400, 400])
results = lifelong.Learner(model, [Replay(memory=500)], lr=0.01).run(stream)
"""

from lifelong import datasets, methods, models, streams
from lifelong.errors import ConfigError, DataError, DatasetNotFoundError, LifelongError, StateError
from lifelong.learner import Learner, Results
from lifelong.training import TrainConfig
from lifelong.version import __version__

__all__ = [
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "Learner",
    "LifelongError",
    "Results",
    "StateError",
    "TrainConfig",
    "__version__",
    "datasets",
    "methods",
    "models",
    "streams",
]
