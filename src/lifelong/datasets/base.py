"""What every data source returns, and the registry that names them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.errors import DataError

if TYPE_CHECKING:  # annotations only: the registry and `lifelong datasets` must not import torch
    import torch


@dataclass
class Dataset:
    """A labelled data set with a fixed train/test split, as tensors.

    Images are float32 in [0, 1] with shape [N, C, H, W]; sequences float32 [N, L]; labels int64 [N].
    Text corpora use `TextCorpus` instead.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


@dataclass
class TextCorpus:
    """Raw text grouped into named domains (e.g. one per book or category), for language modelling."""

    name: str
    domains: dict[str, list[str]]
    source: str = ""


@dataclass
class SourceInfo:
    name: str
    kind: str  # "images" | "sequences" | "text"
    description: str
    loader: Callable[..., Any]
    locate: Callable[[], str | None]  # where it is found on this machine, or None
    how_to_get: str
    extra: dict[str, Any] = field(default_factory=dict)


#: Environment variable naming a folder that holds one subfolder per data source.
DATA_ENV = "LIFELONG_DATA"


def env_data_dir(subdir: str) -> Path | None:
    """`$LIFELONG_DATA/<subdir>`, or None when the variable is unset or empty."""
    base = os.environ.get(DATA_ENV, "")
    return Path(base).expanduser() / subdir if base else None


def user_cache_dir(subdir: str = "") -> Path:
    """`$XDG_CACHE_HOME/lifelong/<subdir>`, falling back to `~/.cache/lifelong/<subdir>`."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "lifelong" / subdir if subdir else root / "lifelong"


_REGISTRY: dict[str, SourceInfo] = {}


def register(info: SourceInfo) -> SourceInfo:
    _REGISTRY[info.name] = info
    return info


def names() -> list[str]:
    return sorted(_REGISTRY)


def info(name: str) -> SourceInfo:
    if name not in _REGISTRY:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def load(name: str, **kwargs: Any) -> Dataset | TextCorpus:
    """Load a registered data source by name (see `lifelong datasets`)."""
    return info(name).loader(**kwargs)
