"""Cumulative: keep training the current model on the union of all data seen so far."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.streams.experience import Split, Stream


def seen_training_data(ctx: Context) -> Split:
    """The training splits of every experience seen so far, the current one included."""
    return Split.concat([e.train for e in ctx.seen])


def check_alone(method: Method, methods: Sequence[Method]) -> None:
    if len(methods) > 1:
        others = ", ".join(m.name for m in methods if m is not method)
        raise ConfigError(
            f"method {method.name!r} trains on all data seen so far and cannot be combined with {others}; "
            f"run it on its own"
        )


class Cumulative(Method):
    """Each experience trains (from the current weights) on every experience's training data so far."""

    name = "cumulative"

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        check_alone(self, methods)

    def data(self, ctx: Context, train: Split) -> Split:
        return seen_training_data(ctx)
