"""The method protocol: how a method joins the learner's loop.

A method is a small object with up to six hooks. The loop calls only the hooks a method overrides, in the
order the methods were given, and it never hands out a shared object to mutate: hooks return what they
change (a batch, the training data, an extra loss term). Everything a method must remember between
experiences (a replay memory, a teacher, a Fisher matrix) goes into `state_dict()`, as tensors and JSON
values, so a run killed at any point resumes exactly.

    class Method:
        def check(self, stream, objective, methods): ...  # before anything runs: raise ConfigError if unfit
        def start(self, ctx): ...                  # an experience begins (snapshot a teacher, reset weights)
        def data(self, ctx, train): return train   # the experience's training data (add old data)
        def batch(self, ctx, batch): return batch  # each mini-batch (mix in replayed samples)
        def loss(self, ctx, batch, out): ...       # an extra loss term, or None (distillation, penalty)
        def after_backward(self, ctx): ...         # gradients are ready (projection, masking)
        def end(self, ctx): ...                    # the experience ends (update memory, Fisher, merge)
        def state_dict(self) / load_state_dict(d)  # tensors and JSON values only

`start` runs once per experience and is not repeated when a run resumes in the middle of one: whatever it
creates that training needs must be in `state_dict()`. `data` is called again on resume and must be a pure
function of the context and the method's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.streams.experience import Experience, Split, Stream


@dataclass
class Context:
    """What the loop tells a method. Read it; change the model's weights or gradients only where a hook's
    purpose is exactly that (e.g. `after_backward`)."""

    model: nn.Module
    objective: Any
    optimizer: torch.optim.Optimizer | None
    experience: Experience
    index: int  # position of `experience` in the stream
    seen: list[Experience]  # experiences so far, the current one included (never future ones)
    epoch: int = 0
    step: int = 0  # optimizer steps taken so far in the whole run


class Method:
    """Base class: every hook does nothing. Override only the hooks you need."""

    name = "method"

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        """Raise `ConfigError` if this method cannot work on `stream` or beside the other `methods`."""

    def start(self, ctx: Context) -> None:
        """An experience begins."""

    def data(self, ctx: Context, train: Split) -> Split:
        """Return the training data of this experience (default: unchanged)."""
        return train

    def batch(self, ctx: Context, batch: Split) -> Split:
        """Return the mini-batch to train on (default: unchanged)."""
        return batch

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        """Return an extra loss term to add, or None."""
        return None

    def after_backward(self, ctx: Context) -> None:
        """Gradients of the total loss are in `p.grad`; the optimizer has not stepped yet."""

    def end(self, ctx: Context) -> None:
        """The experience's training is over (evaluation follows)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume with: a flat dict of tensors and JSON values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def params(self) -> dict[str, Any]:
        """Constructor parameters, recorded in the run's config."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def overrides(method: Method, hook: str) -> bool:
    """True if `method` overrides `hook` (the loop skips hooks that would do nothing)."""
    return getattr(type(method), hook) is not getattr(Method, hook)
