"""Methods against forgetting. Each is one small class; see `base.py` for the protocol."""

from __future__ import annotations

from typing import Any

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.cumulative import Cumulative
from lifelong.methods.joint import Joint
from lifelong.methods.naive import Naive
from lifelong.methods.replay import Replay

__all__ = ["Context", "Cumulative", "Joint", "Method", "Naive", "Replay", "METHODS", "build_method"]

METHODS: dict[str, type[Method]] = {
    "naive": Naive,
    "joint": Joint,
    "cumulative": Cumulative,
    "replay": Replay,
}


def build_method(name: str, **options: Any) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)
