"""Mean teacher: consistency with an exponential moving average of the model.

Tarvainen and Valpola (NeurIPS 2017), "Mean teachers are better role models: Weight-averaged consistency
targets improve semi-supervised deep learning results". The teacher's weights are an exponential moving
average of the student's (`decay`), updated once per optimizer step; on `unlabeled_ratio` unlabeled samples
per labelled one, each seen by student and teacher under independent noise (the weak augmentation of
`lifelong.methods.fixmatch`), the student's class probabilities are pulled toward the teacher's:
    loss += weight * mean_i ||softmax(student(noise(x_i))) - softmax(teacher(noise'(x_i)))||^2 / C
(the mean squared error over samples and classes, the paper's consistency cost).

Choices. The teacher runs on across experiences (it is never reset), its weights live in the state; the
noise and the draw come from generators seeded by the run's seed and a counter in the state. There is no
selection: every drawn sample counts, so the report's coverage is 1 and its precision is the teacher's
accuracy on the experience's unlabeled data (softmax confidence for the calibration figures).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context
from lifelong.methods.fixmatch import weak_view
from lifelong.methods.lwf import frozen_copy
from lifelong.methods.pseudo_label import SelfTraining, ema_update, mix, snapshot_all
from lifelong.methods.tensor_state import Tensors, from_state, placed, to_state
from lifelong.selftrain.confidence import confidence_of
from lifelong.streams.experience import Split

CHUNK = 1024


class MeanTeacher(SelfTraining):
    """Options: `decay` (of the EMA teacher), `unlabeled_ratio` (unlabeled samples per labelled one),
    `labelled_floor` (least labelled samples per batch), `weight` (of the consistency term)."""

    name = "mean_teacher"

    def __init__(
        self,
        decay: float = 0.99,
        unlabeled_ratio: float = 1.0,
        labelled_floor: int = 0,
        weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(unlabeled_ratio, labelled_floor, weight, seed)
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"{self.name} decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.teacher: Tensors | None = None
        self._teacher_model: nn.Module | None = None
        self.ema_step = -1

    def params(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "unlabeled_ratio": self.unlabeled_ratio,
            "labelled_floor": self.labelled_floor,
            "weight": self.weight,
        }

    def start(self, ctx: Context) -> None:
        self.rounds = []
        self.round += 1
        if self.teacher is None:
            self.teacher = snapshot_all(ctx.model)
            self._teacher_model = None
            self.ema_step = ctx.step  # later experiences first catch up with the previous one's last step

    def teacher_model(self, ctx: Context) -> nn.Module:
        assert self.teacher is not None
        if self._teacher_model is None:
            device = next(ctx.model.parameters()).device
            self._teacher_model = frozen_copy(ctx.model, placed(self.teacher, device))
        return self._teacher_model

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        drawn = self.draw(ctx, len(batch))
        if drawn is None:
            return None
        assert self.teacher is not None
        if ctx.step != self.ema_step:  # once per optimizer step, before the teacher is used
            ema_update(self.teacher, ctx.model, self.decay)
            self.ema_step = ctx.step
        _, unlabeled = drawn
        g = torch.Generator().manual_seed(mix(self.seed, 13, self.draws))
        device = out.device
        t = None if unlabeled.t is None else unlabeled.t.to(device)
        student_x, teacher_x = weak_view(unlabeled.x, g).to(device), weak_view(unlabeled.x, g).to(device)
        with torch.no_grad():
            target = F.softmax(ctx.objective.forward(self.teacher_model(ctx), teacher_x, t).float(), dim=-1)
        student = F.softmax(ctx.objective.forward(ctx.model, student_x, t).float(), dim=-1)
        return self.weight * F.mse_loss(student, target)

    def label_all(self, ctx: Context, split: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        teacher = self.teacher_model(ctx)
        device = next(ctx.model.parameters()).device
        confs, preds = [], []
        with torch.no_grad():
            for i in range(0, len(split), CHUNK):
                x = split.x[i : i + CHUNK].to(device)
                t = None if split.t is None else split.t[i : i + CHUNK].to(device)
                logits = ctx.objective.forward(teacher, x, t).float()
                confs.append(confidence_of("softmax", logits))
                preds.append(logits.argmax(dim=-1))
        conf, pred = torch.cat(confs), torch.cat(preds)
        return conf, pred, torch.ones_like(pred, dtype=torch.bool)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema_step": self.ema_step, **to_state("teacher", self.teacher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema_step = int(state.get("ema_step", -1))
        self.teacher = from_state("teacher", state)
        self._teacher_model = None
