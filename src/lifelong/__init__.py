"""lifelong: keep neural networks learning from a stream of new data without forgetting."""

from lifelong.version import __version__

__all__ = ["__version__"]
