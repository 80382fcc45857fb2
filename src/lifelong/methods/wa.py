"""WA (weight aligning): Zhao, Xiao, Gan, Zhang and Xia, "Maintaining Discrimination and Fairness in Class
Incremental Learning", CVPR 2020.

After training on new classes, the head's weight vectors of the new classes are longer than those of the
old ones, so the model favours new classes. At the end of each experience WA rescales the new classes'
head rows by gamma = mean ||w_old|| / mean ||w_new||, which makes the two groups' mean norms equal. During
training, a distillation term (temperature `temperature`) on the old classes' logits against a frozen copy of
the model from the start of the experience keeps the old classes apart. WA brings no memory of its own: it
is meant to run beside `replay` (e.g. `policy: class_balanced`), which feeds the stored samples.

Choices. The loss is cross-entropy + `distill_weight` x KD, with `distill_weight` by default the share of old
classes among the classes seen so far, n_old / (n_old + n_new), the paper's lambda (the paper weighs the
cross-entropy by 1 - lambda; here the objective's cross-entropy keeps weight 1, so other methods compose).
The KD is PyCIL's (softened cross-entropy averaged over the batch). New rows' biases are scaled by the same
gamma as their weights, so every new-class logit is scaled by gamma as a whole: the paper's head has no bias,
and leaving a bias unscaled would keep part of the imbalance (PyCIL keeps its bias and scales weights only;
on class-incremental digits the two are within noise of each other). The paper's optional clipping of the
head's weights to non-negative values is not done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.icarl import Teacher, distillation
from lifelong.models import features_and_head
from lifelong.objectives import logits_of
from lifelong.streams.experience import Split, Stream


class WA(Method):
    """Weight aligning of the head after each experience, plus distillation on the old classes.

    Options:
        temperature: temperature of the distillation on the old classes' logits.
        distill_weight: weight of the distillation term; None: n_old / n_seen classes (the paper's lambda).
    """

    name = "wa"

    def __init__(self, temperature: float = 2.0, distill_weight: float | None = None) -> None:
        if temperature <= 0:
            raise ConfigError(f"wa temperature must be positive, got {temperature}")
        if distill_weight is not None and distill_weight < 0:
            raise ConfigError(f"wa distill_weight must be at least 0, got {distill_weight}")
        self.temperature, self.distill_weight = temperature, distill_weight
        self.seen_classes: list[int] = []  # classes of the finished experiences
        self.gammas: list[float] = []  # the factor applied after each experience (1.0 when none was)
        self.teacher = Teacher()
        self._old_index: torch.Tensor | None = None  # `seen_classes` on the model's device
        self._weight: tuple[int, float] | None = None  # (experience index, its distillation weight)

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "distill_weight": self.distill_weight}

    # --- hooks ------------------------------------------------------------------------------------------

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        if stream.kind != "classification":
            raise ConfigError(
                "method 'wa' aligns the class rows of a classifier's head and needs a classification stream; "
                f"{stream.name!r} is {stream.kind}: use 'replay' or 'lwf' for language modelling"
            )
        if stream.task_classes is not None:
            raise ConfigError(
                "method 'wa' corrects the bias between old and new classes that compete in one softmax; in a "
                f"task-incremental stream ({stream.name!r}) each task's classes are scored apart and never "
                "compete: use a class-incremental stream, or 'lwf' / 'replay' for task-incremental learning"
            )

    def setup(self, model: nn.Module) -> None:
        features_and_head(model, self.name)  # only checks that the model has a linear head

    def start(self, ctx: Context) -> None:
        self._old_index = None
        if self.seen_classes and self._weight_of(ctx) > 0:
            self.teacher.snapshot(ctx.model)
        else:
            self.teacher.clear()

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        teacher = self.teacher.get(ctx.model) if self.seen_classes else None
        if teacher is None:
            return None
        if self._old_index is None or self._old_index.device != out.device:
            self._old_index = torch.tensor(self.seen_classes, device=out.device)
        with torch.no_grad():
            target = logits_of(teacher(batch.x.to(out.device)))
        old = self._old_index
        return self._weight_of(ctx) * distillation(out[:, old], target[:, old], self.temperature)

    @torch.no_grad()
    def end(self, ctx: Context) -> None:
        self.teacher.clear()  # the next experience snapshots its own: checkpoints need not carry this one
        old = sorted(self.seen_classes)
        new = sorted(set(_classes(ctx)) - set(old))
        gamma = 1.0
        if old and new:
            _, head = features_and_head(ctx.model, self.name)
            device = head.weight.device
            old_rows, new_rows = torch.tensor(old, device=device), torch.tensor(new, device=device)
            norms = head.weight.norm(dim=1)
            g = norms[old_rows].mean() / norms[new_rows].mean()
            head.weight[new_rows] *= g
            if head.bias is not None:
                head.bias[new_rows] *= g
            gamma = float(g)
        self.gammas.append(gamma)
        self.seen_classes = sorted(set(old) | set(new))
        self._old_index, self._weight = None, None

    # --- state ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen_classes": list(self.seen_classes),
            "gammas": list(self.gammas),
            **self.teacher.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen_classes = [int(c) for c in state.get("seen_classes", [])]
        self.gammas = [float(g) for g in state.get("gammas", [])]
        self.teacher.load_state_dict(state)
        self._old_index, self._weight = None, None

    # --- helpers ----------------------------------------------------------------------------------------

    def _weight_of(self, ctx: Context) -> float:
        """The distillation weight of the current experience: a function of the state and the experience,
        so it needs no saving (`start` does not run again when a run resumes mid-experience)."""
        if self.distill_weight is not None:
            return self.distill_weight
        if self._weight is None or self._weight[0] != ctx.index:
            n_seen = len(set(self.seen_classes) | set(_classes(ctx)))
            self._weight = (ctx.index, len(self.seen_classes) / max(n_seen, 1))
        return self._weight[1]


def _classes(ctx: Context) -> list[int]:
    """The classes of the current experience."""
    if ctx.experience.classes is not None:
        return [int(c) for c in ctx.experience.classes]
    return [int(c) for c in torch.unique(ctx.experience.train.y).tolist()]
