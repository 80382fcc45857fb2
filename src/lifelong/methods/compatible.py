"""Compatibility-aware updates: fewer negative flips against the previous version (focal distillation).

Yan et al. (CVPR 2021), "Positive-Congruent Training: Towards Regression-Free Model Updates" (PCT), the
loss that compatibility-aware updates such as MUSCLE (Echterhoff et al. 2024) build on. When an experience
begins (from the second on), the model is frozen as the previous version, the one its users had. On every
training batch (the current samples and whatever replayed samples the batch holds) the new model is
pulled toward the previous version's outputs, most strongly on the samples the previous version got right,
so that what used to work keeps working:

    loss += strength * mean_i[(alpha + beta * 1[previous version correct on i]) * D_i]
    D_i = T^2 * KL(softmax(old_i / T) || softmax(new_i / T))   (mode "kl", focal distillation)
    D_i = 1/2 * ||new_i - old_i||^2                            (mode "logit", PCT's logit matching)

The outputs are those the loss sees: all outputs of a single-head classifier (so a new class's logit is kept
from rising on a sample the old version classified right), each sample's own task head in a
task-incremental stream (the loop's task masking, applied to both versions), and for language modelling
every position's next-token distribution, weighted by whether the old version's top-1 token is the target.
With `alpha` 0 (the default) only samples the old version got right count; in a class-incremental stream
without replay the old version is practically never right on the new classes (it would have to predict a
class it never trained on), so the term is (almost) zero there: it needs replayed old samples to act on.

The previous version is kept as LwF keeps its teacher (`lifelong.methods.lwf`): its weights live in the
state (one copy), so a resumed run distils from the same version, and the forward pass runs on a frozen
copy of the model's modules that shares those tensors. A finished run continued on new experiences
(`lifelong continue`, a store update) snapshots at the start of the first new experience: the model as the
previous run ended, the version users had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.lwf import frozen_copy
from lifelong.methods.tensor_state import Tensors, from_state, placed, to_state
from lifelong.streams.experience import Split, Stream

MODES = ("kl", "logit")


def focal_terms(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    mode: str = "kl",
    masked: bool = False,
) -> torch.Tensor:
    """The per-sample distance D_i between `student` and `teacher` outputs over the last dimension (one
    value per sample, or per position for [B, T, V] outputs).

    "kl": T^2 * KL(softmax(teacher/T) || softmax(student/T)), the term of `lwf.distillation` before its
    mean; "logit": 1/2 * the squared L2 distance between the logits. `masked`: outputs hold -inf where the
    objective masked them (task-incremental heads, the same entries in both): those entries count 0.

    >>> s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> focal_terms(s, s).tolist(), focal_terms(s, torch.zeros(2, 2), 1.0, "logit").tolist()
    ([0.0, 0.0], [2.0, 0.5])
    """
    keep = torch.isfinite(teacher) if masked else None
    if mode == "logit":
        diff = student - teacher
        if keep is not None:  # where before squaring: a masked entry's nan must not reach the gradient
            diff = torch.where(keep, diff, torch.zeros_like(diff))
        return 0.5 * diff.pow(2).sum(dim=-1)
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    terms = log_t.exp() * (log_t - log_s)
    if keep is not None:  # p = 0 there: count 0, not 0 * nan (the gradient is 0 * p = 0 as well)
        terms = torch.where(keep, terms, torch.zeros_like(terms))
    return temperature**2 * terms.sum(dim=-1)


class Compatible(Method):
    """Options: `strength` (weight of the term), `alpha` (weight of every sample), `beta` (extra weight of
    the samples the previous version got right), `temperature` (T of the softened softmax, mode kl),
    `mode` (kl: focal distillation; logit: squared distance between logits)."""

    name = "compatible"

    def __init__(
        self,
        strength: float = 1.0,
        alpha: float = 0.0,
        beta: float = 1.0,
        temperature: float = 1.0,
        mode: str = "kl",
    ) -> None:
        for option, value in (("strength", strength), ("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ConfigError(f"{self.name} {option} must be at least 0, got {value}")
        if alpha == 0 and beta == 0 and strength > 0:
            raise ConfigError(
                f"{self.name} alpha and beta are both 0: no sample would be weighted; set beta (e.g. 1) or "
                "alpha, or strength 0 to switch the term off"
            )
        if not temperature > 0:
            raise ConfigError(f"{self.name} temperature must be greater than 0, got {temperature}")
        if mode not in MODES:
            raise ConfigError(f"{self.name} mode must be 'kl' or 'logit', got {mode!r}")
        if mode == "logit" and temperature != 1.0:
            raise ConfigError(
                f"{self.name} temperature applies to mode 'kl' only; drop it (or set 1) with mode 'logit'"
            )
        self.strength, self.alpha, self.beta = strength, alpha, beta
        self.temperature, self.mode = temperature, mode
        self.previous: Tensors | None = None  # the model's weights and buffers when the experience began
        self._previous_model: nn.Module | None = None  # built from `previous` when first needed

    def params(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "mode": self.mode,
        }

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        from lifelong.schedules import HotWeights

        if any(isinstance(m, HotWeights) for m in methods):
            # the next experience starts from the hot weights, not from the cooled model users had
            raise ConfigError(
                f"{self.name} keeps the model users had (the one evaluated after each experience), but "
                "with train.scheduler 'wsd' and continue_from 'hot' each experience starts from the weights "
                "before the cool-down; use continue_from 'cooled'"
            )

    def start(self, ctx: Context) -> None:
        self._previous_model = None
        if ctx.index == 0:
            self.previous = None
            return
        model = ctx.model
        self.previous = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.previous.update({name: b.detach().clone() for name, b in model.named_buffers()})

    def previous_outputs(self, ctx: Context, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """The previous version's outputs on `x` as the objective makes them (task masking included), in
        eval mode and without gradient."""
        assert self.previous is not None
        if self._previous_model is None:
            self._previous_model = frozen_copy(ctx.model, placed(self.previous, x.device))
        with torch.no_grad():
            return ctx.objective.forward(self._previous_model, x, t)

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        if self.previous is None or self.strength == 0:
            return None
        x = batch.x.to(out.device)
        t = None if batch.t is None else batch.t.to(out.device)
        old = self.previous_outputs(ctx, x, t)
        right = old.argmax(dim=-1) == batch.y.to(out.device)  # [B], or [B, T] for language modelling
        weights = self.alpha + self.beta * right.to(out.dtype)
        masked = t is not None and bool(getattr(ctx.objective, "task_classes", None))
        terms = focal_terms(out, old.to(out.dtype), self.temperature, self.mode, masked)
        return self.strength * (weights * terms).mean()

    def state_dict(self) -> dict[str, Any]:
        return to_state("previous", self.previous)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = from_state("previous", state)
        self._previous_model = None
