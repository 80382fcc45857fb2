"""The method protocol: how a method joins the learner's loop.

A method is a small object with up to six hooks. The loop calls only the hooks a method overrides, in the
order the methods were given, and it never hands out a shared object to mutate: hooks return what they
change (a batch, the training data, an extra loss term). Everything a method must remember between
experiences (a replay memory, a teacher, a Fisher matrix) goes into `state_dict()`, as tensors and JSON
values, so a run killed at any point resumes exactly.

    class Method:
        def check(self, stream, objective, methods): ...  # before anything runs: raise ConfigError if unfit
        def setup(self, model): ...                # once per run, before any training or restore (adapters)
        def start(self, ctx): ...                  # an experience begins (snapshot a teacher, reset weights)
        def data(self, ctx, train): return train   # the experience's training data (add old data)
        def batch(self, ctx, batch): return batch  # each mini-batch (mix in replayed samples)
        def main_loss(self, ctx, batch, out): ...  # replaces the objective's loss (at most one method)
        def loss(self, ctx, batch, out): ...       # an extra loss term, or None (distillation, penalty)
        def after_backward(self, ctx): ...         # gradients are ready (projection, masking)
        def end(self, ctx): ...                    # the experience ends (update memory, Fisher, merge)
        def report(self, ctx): ...                 # what it measured, into results.json (pseudo-labels)
        def predict(self, model, x, out): ...      # outputs used at evaluation (nearest-mean classifier)
        def state_dict(self) / load_state_dict(d)  # tensors and JSON values only

`start` runs once per experience and is not repeated when a run resumes in the middle of one: whatever it
creates that training needs must be in `state_dict()`. `data` is called again on resume and must be a pure
function of the context and the method's state. `setup` may change the model's structure (it runs again
on resume, before the checkpoint is loaded, so it must be deterministic).

Methods compose (`[Replay(500), LwF()]`), and combinations that cannot work fail when the learner is built
(`check_composition`): a method that must run alone, two methods that both replace the main loss, both
decide the predictions, both feed replayed samples, or both choose which weights train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError
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
    local_step: int = 0  # optimizer steps taken so far in this experience
    total_steps: int = 0  # optimizer steps this experience takes


class Method:
    """Base class: every hook does nothing. Override only the hooks you need."""

    name = "method"
    # composition: what this method claims, so that conflicting combinations fail early
    alone = False  # trains in its own way (joint, GDumb, frozen features): no other method can join
    rehearsal = False  # feeds stored samples into training (replay, DER, iCaRL, ...)
    selects_trainable = False  # decides which weights train (LoRA, half fine-tuning)
    report_key: str | None = None  # where `report` entries go in results.json (default: the method's name)

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        """Raise `ConfigError` if this method cannot work on `stream` or beside the other `methods`."""

    def setup(self, model: nn.Module) -> None:
        """Once per run, before anything is written, the optimizer is made or a checkpoint restored: change
        the model's structure here (e.g. insert adapters), or raise `ConfigError` if the model does not fit
        (e.g. no `features`/`head`). Must be deterministic and idempotent."""

    def start(self, ctx: Context) -> None:
        """An experience begins."""

    def data(self, ctx: Context, train: Split) -> Split:
        """Return the training data of this experience (default: unchanged)."""
        return train

    def batch(self, ctx: Context, batch: Split) -> Split:
        """Return the mini-batch to train on (default: unchanged)."""
        return batch

    def main_loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor:
        """Replace the objective's loss on this batch (e.g. DER: cross-entropy on the current samples only,
        a logit-matching term on the replayed ones). At most one method of a run may override this."""
        return ctx.objective.loss(out, batch.y)

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        """Return an extra loss term to add, or None."""
        return None

    def after_backward(self, ctx: Context) -> None:
        """Gradients of the total loss are in `p.grad`; the optimizer has not stepped yet."""

    def end(self, ctx: Context) -> None:
        """The experience's training is over (evaluation follows)."""

    def report(self, ctx: Context) -> dict[str, Any] | None:
        """After `end`: what the method measured on this experience, as JSON values (or None). The learner
        adds it to results.json under `report_key` (one entry per experience) and to events.jsonl."""
        return None

    def predict(self, model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The outputs to score at evaluation, given the model's outputs `out` on inputs `x` (before a
        task-incremental stream's task masking). E.g. iCaRL's nearest-mean-of-exemplars scores."""
        return out

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


def overrides(method: Method | type[Method], hook: str) -> bool:
    """True if `method` overrides `hook` (the loop skips hooks that would do nothing)."""
    cls = method if isinstance(method, type) else type(method)
    return getattr(cls, hook) is not getattr(Method, hook)


def check_composition(methods: Sequence[Method | type[Method]]) -> None:
    """Raise `ConfigError` if `methods` (instances or classes) cannot run together, naming them."""
    classes = [m if isinstance(m, type) else type(m) for m in methods]
    names = [c.name for c in classes]
    if len(classes) > 1:
        for c in classes:
            if c.alone:
                others = ", ".join(n for n in names if n != c.name) or c.name
                raise ConfigError(
                    f"method {c.name!r} trains in its own way and cannot be combined with {others}; "
                    "run it on its own"
                )
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[0]
        named = list(dict.fromkeys(c for c in classes if c.name == twice))  # distinct classes, in order
        if len(named) == 1:
            raise ConfigError(f"method {twice!r} is given twice; give each method once")
        # different classes under one name: custom methods that kept a name they inherited
        both = " and ".join(_qualified(c) for c in named)
        problem = (
            f"two methods have the default name {twice!r} ({both})"
            if twice == Method.name
            else f"methods {both} share the name {twice!r}"
        )
        raise ConfigError(
            f"{problem}, and a run tells methods apart by name; set a class attribute "
            f'`name = "..."` on each custom Method subclass'
        )
    claims = [
        (lambda c: c.rehearsal, "both feed stored samples into training", "keep one memory-based method"),
        (lambda c: overrides(c, "main_loss"), "both replace the main loss", "keep one of them"),
        (lambda c: overrides(c, "predict"), "both decide the predictions at evaluation", "keep one"),
        (lambda c: c.selects_trainable, "both decide which weights train", "keep one of them"),
    ]
    for claims_it, problem, fix in claims:
        holders = [c.name for c in classes if claims_it(c)]
        if len(holders) > 1:
            raise ConfigError(f"methods {holders[0]!r} and {holders[1]!r} {problem}; {fix}")


def _qualified(cls: type) -> str:
    """`module.Class`, or the bare class name for a built-in method (they live in lifelong.methods)."""
    if cls.__module__.startswith("lifelong.methods."):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
