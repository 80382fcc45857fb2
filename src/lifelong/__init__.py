"""lifelong: keep neural networks learning from a stream of new data without forgetting.

import lifelong
from lifelong.methods import Replay
from lifelong.models import MLP
from lifelong.streams import class_incremental

stream = class_incremental(lifelong.datasets.load("fashion_mnist"), experiences=5)
model = MLP(stream.input_shape, stream.num_classes, hidden=[400, 400])
results = lifelong.Learner(model, [Replay(memory=500)], lr=0.01).run(stream)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Errors and the version need only the standard library, so they are imported now; everything else is
# imported on first access (PEP 562): `import lifelong` must not pay for torch, which takes seconds and
# would make `lifelong --help` slow.
from lifelong.errors import ConfigError, DataError, DatasetNotFoundError, LifelongError, StateError
from lifelong.version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` provides these
    from lifelong import datasets, methods, models, streams
    from lifelong.inference import load
    from lifelong.learner import Learner, Results
    from lifelong.seeding import seed
    from lifelong.training import TrainConfig

# public name -> the module that defines it (a submodule when the name is the module itself)
_LAZY: dict[str, str] = {
    "Learner": "lifelong.learner",
    "Results": "lifelong.learner",
    "TrainConfig": "lifelong.training",
    "load": "lifelong.inference",
    "seed": "lifelong.seeding",
    "datasets": "lifelong.datasets",
    "methods": "lifelong.methods",
    "models": "lifelong.models",
    "streams": "lifelong.streams",
}

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
    "load",
    "methods",
    "models",
    "seed",
    "streams",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lifelong' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"lifelong.{name}" else getattr(module, name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
