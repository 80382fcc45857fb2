"""Learning-rate schedules across a stream of experiences, as pure functions of the position.

`lr_at(train, experience, step, total)` gives the LR of optimizer step `step` (0-based, within experience
`experience`, which has `total` steps). No scheduler object holds state, so a resumed run sets exactly the LR
an unbroken run would have set.

    cosine    re-warm + cosine re-decay to `min_lr` at every experience (Ibrahim et al., 2024, "Simple and
              Scalable Strategies to Continually Pre-train Large Language Models")
    linear    re-warm + linear re-decay at every experience
    constant  `lr` throughout (after a warm-up at every experience, if `warmup_steps`)
    continue  no re-warm: the first experience warms up and decays (cosine) towards `min_lr`, later ones go
              on at `min_lr` (the "no re-warming" baseline of the paper)
    wsd       warmup-stable-decay, the "infinite" schedule (Hägele et al., 2024, "Scaling Laws and
              Compute-Optimal Training Beyond Fixed Training Durations"; Ibrahim et al.): warm up once, hold
              `lr`, cool down linearly to `min_lr` over the last `cooldown` share of every experience. With
              `continue_from: hot` the next experience starts from the weights before the cool-down (the
              cooled model is evaluated and served; training goes on from the hot one), see `HotWeights`.

    >>> from lifelong.training import TrainConfig
    >>> tr = TrainConfig(lr=1.0, min_lr=0.1, scheduler="wsd", cooldown=0.5)
    >>> [round(lr_at(tr, 0, s, 4), 3) for s in range(4)], [round(lr_at(tr, 1, s, 4), 3) for s in range(4)]
    ([1.0, 1.0, 0.55, 0.1], [1.0, 1.0, 0.55, 0.1])
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lifelong.methods.base import Context, Method
from lifelong.training import TrainConfig


def cooldown_start(train: TrainConfig, total: int) -> int:
    """wsd: the first step of the cool-down in an experience of `total` steps (at least one step cools)."""
    # rounded first: 0.07 * 100 is 7.000000000000001 in floating point, and 7 steps should cool, not 8
    return total - max(1, math.ceil(round(train.cooldown_share * total, 9)))


def lr_at(train: TrainConfig, experience: int, step: int, total: int) -> float:
    """The LR of step `step` of experience `experience` (which has `total` optimizer steps)."""
    lr, low, warm = train.lr, train.min_lr, train.warmup_steps
    kind = train.scheduler
    warms = warm > 0 and (experience == 0 or kind not in ("continue", "wsd"))
    if warms and step < warm:
        return lr * (step + 1) / warm
    if kind == "constant":
        return lr
    if kind == "wsd":
        start = cooldown_start(train, total)
        if step < start:
            return lr
        return lr - (lr - low) * (step - start + 1) / (total - start)
    if kind == "continue" and experience > 0:
        return low
    begin = warm if warms else 0
    progress = (step - begin) / max(1, total - begin)
    if kind == "linear":
        return low + (lr - low) * (1.0 - progress)
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine, and continue's first decay


class HotWeights(Method):
    """wsd with `continue_from: hot`: keep the weights from just before each cool-down, and start the next
    experience from them. The loop adds this itself; it is part of the run's state like any method, so a run
    killed during a cool-down resumes with the hot weights it had kept."""

    name = "wsd_hot_weights"

    def __init__(self, train: TrainConfig) -> None:
        self.train = train
        self.hot: dict[str, torch.Tensor] = {}
        self.kept_for = -1  # experience whose pre-cool-down weights `hot` holds

    def batch(self, ctx: Context, batch: Any) -> Any:
        if ctx.index != self.kept_for and ctx.local_step >= cooldown_start(self.train, ctx.total_steps):
            # what can change before the next experience: the weights that train and the buffers (frozen
            # weights stay as they are; a 135M base under LoRA adapters is not copied)
            changing = {id(p) for p in ctx.model.parameters() if p.requires_grad}
            changing |= {id(b) for b in ctx.model.buffers()}
            state = ctx.model.state_dict(keep_vars=True)
            self.hot = {k: v.detach().to("cpu", copy=True) for k, v in state.items() if id(v) in changing}
            self.kept_for = ctx.index
        return batch

    @torch.no_grad()
    def start(self, ctx: Context) -> None:
        # the loop runs this before the other methods' `start` (e.g. LoRA merges the adapter it finds: the
        # hot one)
        if self.hot and self.kept_for == ctx.index - 1:
            ctx.model.load_state_dict(self.hot, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"kept_for": self.kept_for, **{f"hot.{k}": v for k, v in self.hot.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept_for = int(state["kept_for"])
        self.hot = {k.removeprefix("hot."): v for k, v in state.items() if k.startswith("hot.")}
