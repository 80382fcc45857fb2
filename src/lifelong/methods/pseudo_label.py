"""Pseudo-labelling: a teacher labels unlabeled samples, the confident ones train the student.

Lee (ICML 2013 workshop), "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method"; with the
teachers of self-training (Xie et al. 2020, noisy student: the student becomes the teacher, round after
round) and of Tarvainen and Valpola (2017, an EMA teacher), the confidence scores and selection policies of
`lifelong.selftrain`. On every training batch of the loop (the labelled samples, and whatever replayed ones
another method added), the `loss` hook draws `unlabeled_ratio` unlabeled samples per labelled one from the
experience's `unlabeled` split, lets the teacher predict them, scores and selects, and adds
    weight * sum over selected of CE(student(x), pseudo-label) / number drawn
(the FixMatch normalisation: few confident samples give a small term), with soft labels the cross-entropy
against the teacher's whole distribution.

Teachers (`teacher`): `fixed`, the model as the experience began; `ema`, an exponential moving average of
the student (`decay`), updated before each step; `iterative`, the student becomes the teacher every
`round_every` epochs (without it: at each experience, like `fixed`). A round is counted at each teacher
refresh; the curriculum selection grows its share with the round.

Choices. The unlabeled draw uses a generator seeded by the run's seed and a counter in the state, and the
teacher's weights, the T-similarity heads, the FlexMatch per-sample predictions and the round diagnostics
are all in the state, so a killed run resumes bit-identical. T-similarity's heads sit on the teacher's
features (detached) and take one plain SGD step per batch at the run's learning rate, on the labelled batch
(cross-entropy) and the unlabeled draw (diversity); they never touch the model. At the end of each
experience `report` labels all of its unlabeled samples with the final teacher and records precision and
coverage against the held-back truth, ECE and the reliability diagram (`lifelong.selftrain.diagnostics`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.methods.base import Context, Method
from lifelong.methods.lwf import frozen_copy
from lifelong.methods.tensor_state import Tensors, from_state, placed, to_state
from lifelong.models import features_and_head
from lifelong.selftrain import diagnostics
from lifelong.selftrain.confidence import (
    CONFIDENCES,
    HeadEnsemble,
    check_dropout,
    confidence_of,
    mc_dropout_confidence,
)
from lifelong.selftrain.selection import SELECTIONS, select
from lifelong.streams.experience import Split, Stream

TEACHERS = ("fixed", "ema", "iterative")
CHUNK = 1024  # unlabeled samples per forward pass when labelling a whole experience


def check_unlabeled(stream: Stream, method: str) -> None:
    """Raise `ConfigError` unless some experience of `stream` holds unlabeled samples."""
    if stream.kind != "classification":
        raise ConfigError(
            f"method {method!r} learns from unlabeled samples with pseudo-labels, which needs a "
            f"classification stream; {stream.name!r} is {stream.kind}"
        )
    if not any(e.unlabeled is not None and len(e.unlabeled) > 0 for e in stream):
        raise ConfigError(
            f"method {method!r} learns from unlabeled data, and no experience of stream {stream.name!r} has "
            "any; hold labels back with scenario.label_fraction or labels_per_class, or give files with "
            "empty labels"
        )


def mix(*values: int) -> int:
    """A seed from several integers (FNV-1a style), for generators that are pure functions of a position."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def snapshot_all(model: nn.Module) -> Tensors:
    """Detached copies of every parameter and buffer of `model`, by name."""
    out = {name: p.detach().clone() for name, p in model.named_parameters()}
    out.update({name: b.detach().clone() for name, b in model.named_buffers()})
    return out


@torch.no_grad()
def ema_update(teacher: Tensors, model: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * model, in place (integer buffers are copied)."""
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        target = teacher[name]
        if target.is_floating_point():
            target.mul_(decay).add_(value.detach().to(target.device), alpha=1 - decay)
        else:
            target.copy_(value.detach())


def soft_cross_entropy(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of `student` logits against target probabilities (masked logits, -inf,
    where the target is 0 count 0)."""
    log_p = F.log_softmax(student, dim=-1)
    terms = torch.where(target > 0, target * log_p, torch.zeros_like(log_p))
    return -terms.sum(dim=-1)


class SelfTraining(Method, ABC):
    """Shared machinery of the self-training methods: the unlabeled draw, the labelled floor, the teacher
    snapshot and its report. Subclasses implement `loss` and say how the final teacher labels."""

    report_key = "pseudo_labels"

    def __init__(self, unlabeled_ratio: float, labelled_floor: int, weight: float, seed: int) -> None:
        if not unlabeled_ratio > 0:
            raise ConfigError(f"{self.name} unlabeled_ratio must be greater than 0, got {unlabeled_ratio}")
        if labelled_floor < 0:
            raise ConfigError(f"{self.name} labelled_floor must be at least 0, got {labelled_floor}")
        if weight < 0:
            raise ConfigError(f"{self.name} weight must be at least 0, got {weight}")
        self.unlabeled_ratio, self.labelled_floor, self.weight, self.seed = (
            unlabeled_ratio,
            labelled_floor,
            weight,
            seed,
        )
        self.draws = 0  # unlabeled draws so far: seeds the next one
        self.topups = 0  # labelled top-ups so far
        self.round = 0  # self-training rounds so far (teacher refreshes) in the whole run
        self.rounds: list[dict[str, Any]] = []  # diagnostics of the finished rounds of this experience
        self.num_classes = 0

    def check(self, stream: Stream, objective: Any, methods: Sequence[Method]) -> None:
        check_unlabeled(stream, self.name)
        self.num_classes = stream.num_classes

    # --- the labelled floor and the unlabeled draw ----------------------------------------------------------

    def batch(self, ctx: Context, batch: Split) -> Split:
        missing = self.labelled_floor - len(batch)
        train = ctx.experience.train
        if missing <= 0 or len(train) == 0:
            return batch
        g = torch.Generator().manual_seed(mix(self.seed, 7, self.topups))
        self.topups += 1
        extra = train.subset(torch.randint(len(train), (missing,), generator=g))
        if (batch.t is None) != (extra.t is None):
            return batch
        return Split.concat([batch, extra])

    def draw(self, ctx: Context, labelled: int) -> tuple[torch.Tensor, Split] | None:
        """`unlabeled_ratio` x `labelled` unlabeled rows of this experience (indices and samples), or None."""
        unlabeled = ctx.experience.unlabeled
        count = round(self.unlabeled_ratio * labelled)
        if unlabeled is None or len(unlabeled) == 0 or count == 0 or self.weight == 0:
            return None
        g = torch.Generator().manual_seed(mix(self.seed, self.draws))
        self.draws += 1
        index = torch.randint(len(unlabeled), (count,), generator=g)
        return index, unlabeled.subset(index)

    # --- the report -----------------------------------------------------------------------------------------

    @abstractmethod
    def label_all(self, ctx: Context, split: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(confidence, pseudo-label, selected) of every sample of `split` by the current teacher."""

    def diagnose(self, ctx: Context) -> dict[str, Any]:
        unlabeled = ctx.experience.unlabeled
        if unlabeled is None or len(unlabeled) == 0:
            empty = diagnostics.summary(
                torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), None, 0
            )
            return {"round": self.round, **empty, "class_distribution": None}
        conf, pseudo, selected = self.label_all(ctx, unlabeled)
        truth = ctx.experience.unlabeled_truth
        out = diagnostics.summary(conf.cpu(), pseudo.cpu(), selected.cpu(), truth, self.num_classes)
        return {"round": self.round, **out}

    def report(self, ctx: Context) -> dict[str, Any] | None:
        final = self.diagnose(ctx)
        if not self.rounds:
            return final
        return {"rounds": [*self.rounds, final], **final}

    def state_dict(self) -> dict[str, Any]:
        return {
            "draws": self.draws,
            "topups": self.topups,
            "round": self.round,
            "rounds": list(self.rounds),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state.get("draws", 0))
        self.topups = int(state.get("topups", 0))
        self.round = int(state.get("round", 0))
        self.rounds = list(state.get("rounds", []))


class Selecting:
    """The selection step shared by pseudo-labelling and FixMatch: a policy over (confidence, predicted
    class), with FlexMatch's per-sample memory of confident predictions (`flex`, -1 where none yet)."""

    selection: str
    threshold: float
    share: float
    round: int
    num_classes: int
    flex: torch.Tensor | None

    def choose(self, conf: torch.Tensor, pred: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The selection mask; with flexmatch and `index` (the rows drawn), the per-sample memory is updated
        with this draw's confident predictions afterwards."""
        counts, unused = None, 0
        if self.selection == "flexmatch":
            assert self.flex is not None
            known = self.flex[self.flex >= 0]
            counts = torch.bincount(known, minlength=self.num_classes)[: self.num_classes]
            unused = int((self.flex < 0).sum())
        mask = select(
            self.selection,
            conf,
            pred,
            t=self.threshold,
            share=self.share,
            round=self.round,
            counts=counts,
            unused=unused,
        )
        if self.selection == "flexmatch" and index is not None:
            assert self.flex is not None
            confident = (conf >= self.threshold).cpu()
            self.flex[index[confident]] = pred.cpu()[confident]
        return mask



class PseudoLabel(SelfTraining, Selecting):
    """Options: `confidence` (softmax | margin | entropy | tsimilarity | mc_dropout), `threshold`,
    `selection` (threshold | topk | curriculum | class_balanced | flexmatch), `teacher` (fixed | ema |
    iterative), `round_every` (iterative: epochs per round), `decay` (ema), `soft` (soft labels),
    `unlabeled_ratio` (unlabeled samples per labelled one), `labelled_floor` (least labelled samples per
    batch), `weight` (of the term), `share` (topk's share, curriculum's step), `heads` and `diversity`
    (T-similarity), `passes` (MC-dropout)."""

    name = "pseudo_label"

    def __init__(
        self,
        confidence: str = "softmax",
        threshold: float = 0.95,
        selection: str = "threshold",
        teacher: str = "fixed",
        round_every: int | None = None,
        decay: float = 0.99,
        soft: bool = False,
        unlabeled_ratio: float = 1.0,
        labelled_floor: int = 0,
        weight: float = 1.0,
        share: float = 0.2,
        heads: int = 5,
        diversity: float = 1.0,
        passes: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(unlabeled_ratio, labelled_floor, weight, seed)
        if confidence not in CONFIDENCES:
            raise ConfigError(f"unknown confidence {confidence!r}; choose one of {', '.join(CONFIDENCES)}")
        if selection not in SELECTIONS:
            raise ConfigError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
        if teacher not in TEACHERS:
            raise ConfigError(f"unknown teacher {teacher!r}; choose one of {', '.join(TEACHERS)}")
        check_threshold(threshold, self.name)
        if round_every is not None and (teacher != "iterative" or round_every < 1):
            raise ConfigError(
                f"{self.name} round_every (epochs per round, at least 1) applies to teacher 'iterative' "
                f"only; got round_every={round_every} with teacher {teacher!r}"
            )
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"{self.name} decay must lie in [0, 1), got {decay}")
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"{self.name} share must lie in (0, 1], got {share}")
        if heads < 2:
            raise ConfigError(f"{self.name} heads (T-similarity) must be at least 2, got {heads}")
        if diversity < 0:
            raise ConfigError(f"{self.name} diversity must be at least 0, got {diversity}")
        if passes < 1:
            raise ConfigError(f"{self.name} passes (MC-dropout) must be at least 1, got {passes}")
        self.confidence, self.threshold, self.selection = confidence, threshold, selection
        self.teacher_kind, self.round_every, self.decay, self.soft = teacher, round_every, decay, soft
        self.share, self.heads, self.diversity, self.passes = share, heads, diversity, passes
        self.teacher: Tensors | None = None
        self._teacher_model: nn.Module | None = None
        self.ensemble: HeadEnsemble | None = None
        self.ema_step = -1  # the step the EMA teacher last caught up with
        self.refreshed_epoch = 0  # iterative: the epoch of the last refresh in this experience
        self.flex: torch.Tensor | None = (
            None  # flexmatch: each unlabeled sample's last confident class, or -1
        )

    def params(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "threshold": self.threshold,
            "selection": self.selection,
            "teacher": self.teacher_kind,
            "round_every": self.round_every,
            "decay": self.decay,
            "soft": self.soft,
            "unlabeled_ratio": self.unlabeled_ratio,
            "labelled_floor": self.labelled_floor,
            "weight": self.weight,
            "share": self.share,
            "heads": self.heads,
            "diversity": self.diversity,
            "passes": self.passes,
        }

    def setup(self, model: nn.Module) -> None:
        if self.confidence == "mc_dropout":
            check_dropout(model, self.name)
        if self.confidence == "tsimilarity":
            try:
                _, head = features_and_head(model, f"{self.name} (confidence 'tsimilarity')")
            except ConfigError as e:
                raise ConfigError(
                    f"{e}. T-similarity trains its heads on `model.features`: give your model a `features` "
                    "module and a linear `head`, or choose confidence 'softmax', 'margin' or 'entropy'"
                ) from None
            if self.ensemble is None:
                self.ensemble = HeadEnsemble(head.in_features, head.out_features, self.heads, self.seed)

    # --- the teacher ----------------------------------------------------------------------------------------

    def start(self, ctx: Context) -> None:
        self.rounds = []
        self.refreshed_epoch = 0
        if self.teacher is None or self.teacher_kind != "ema":
            self.teacher = snapshot_all(ctx.model)  # the EMA teacher runs on across experiences
            self._teacher_model = None
            self.ema_step = ctx.step
        self.round += 1
        unlabeled = ctx.experience.unlabeled
        if self.selection == "flexmatch":
            self.flex = torch.full((0 if unlabeled is None else len(unlabeled),), -1, dtype=torch.long)

    def teacher_model(self, ctx: Context) -> nn.Module:
        assert self.teacher is not None
        if self._teacher_model is None:
            device = next(ctx.model.parameters()).device
            self._teacher_model = frozen_copy(ctx.model, placed(self.teacher, device))
        return self._teacher_model

    def advance_teacher(self, ctx: Context) -> None:
        """EMA: catch up with the student once per optimizer step. Iterative: refresh every `round_every`
        epochs, recording the finished round's diagnostics first."""
        assert self.teacher is not None
        if self.teacher_kind == "ema" and ctx.step != self.ema_step:
            ema_update(self.teacher, ctx.model, self.decay)
            self.ema_step = ctx.step
        if (
            self.teacher_kind == "iterative"
            and self.round_every is not None
            and ctx.epoch > 0
            and ctx.epoch % self.round_every == 0
            and ctx.epoch != self.refreshed_epoch
        ):
            self.rounds.append(self.diagnose(ctx))
            self.teacher = snapshot_all(ctx.model)
            self._teacher_model = None
            self.round += 1
            self.refreshed_epoch = ctx.epoch

    # --- labelling ------------------------------------------------------------------------------------------

    def score(
        self, ctx: Context, x: torch.Tensor, t: torch.Tensor | None, key: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher logits, target probabilities, confidence, predicted class) on `x`, no gradient."""
        teacher = self.teacher_model(ctx)
        with torch.no_grad():
            logits = ctx.objective.forward(teacher, x, t).float()
            probs = F.softmax(logits, dim=-1)
            if self.confidence == "mc_dropout":
                conf, probs = mc_dropout_confidence(
                    teacher,
                    x,
                    self.passes,
                    mix(self.seed, 11, key),
                    lambda m, inputs: ctx.objective.forward(m, inputs, t),
                )
            elif self.confidence == "tsimilarity":
                assert self.ensemble is not None
                features, _ = features_and_head(teacher, self.name)
                self.ensemble.to(x.device)
                conf = self.ensemble.confidence(features(x))
            else:
                conf = confidence_of(self.confidence, logits)
        return logits, probs, conf, probs.argmax(dim=-1)

    def label_all(self, ctx: Context, split: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = next(ctx.model.parameters()).device
        parts = []
        for i in range(0, len(split), CHUNK):
            x = split.x[i : i + CHUNK].to(device)
            t = None if split.t is None else split.t[i : i + CHUNK].to(device)
            _, _, conf, pred = self.score(ctx, x, t, mix(self.round, i, 3))
            parts.append((conf, pred))
        conf = torch.cat([c for c, _ in parts])
        pred = torch.cat([p for _, p in parts])
        return conf, pred, self.choose(conf, pred, None)

    # --- the loss -------------------------------------------------------------------------------------------

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        drawn = self.draw(ctx, len(batch))
        if drawn is None:
            return None
        index, unlabeled = drawn
        self.advance_teacher(ctx)
        device = out.device
        x = unlabeled.x.to(device)
        t = None if unlabeled.t is None else unlabeled.t.to(device)
        _, probs, conf, pred = self.score(ctx, x, t, self.draws)
        if self.ensemble is not None:
            self._fit_heads(ctx, batch, x)
        mask = self.choose(conf, pred, index).to(device)
        if not bool(mask.any()):
            return None
        student = ctx.objective.forward(ctx.model, x[mask], None if t is None else t[mask])
        if self.soft:
            per_sample = soft_cross_entropy(student.float(), probs[mask])
        else:
            per_sample = F.cross_entropy(student.float(), pred[mask], reduction="none")
        return self.weight * per_sample.sum() / len(x)

    def _fit_heads(self, ctx: Context, batch: Split, unlabeled_x: torch.Tensor) -> None:
        assert self.ensemble is not None
        features, _ = features_and_head(self.teacher_model(ctx), self.name)
        device = unlabeled_x.device
        with torch.no_grad():
            labelled = features(batch.x.to(device))
            unlabeled = features(unlabeled_x)
        lr = ctx.optimizer.param_groups[0]["lr"] if ctx.optimizer is not None else 0.01
        self.ensemble.fit_step(labelled, batch.y.to(device), unlabeled, lr, self.diversity)

    # --- state ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **super().state_dict(),
            "ema_step": self.ema_step,
            "refreshed_epoch": self.refreshed_epoch,
            **to_state("teacher", self.teacher),
        }
        if self.ensemble is not None:
            out["heads.weight"] = self.ensemble.weight.detach().cpu().clone()
            out["heads.bias"] = self.ensemble.bias.detach().cpu().clone()
        if self.flex is not None:
            out["flex"] = self.flex.clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema_step = int(state.get("ema_step", -1))
        self.refreshed_epoch = int(state.get("refreshed_epoch", 0))
        self.teacher = from_state("teacher", state)
        self._teacher_model = None
        if self.ensemble is not None and "heads.weight" in state:
            with torch.no_grad():
                self.ensemble.weight.copy_(state["heads.weight"])
                self.ensemble.bias.copy_(state["heads.bias"])
        self.flex = state["flex"].clone() if "flex" in state else None


def check_threshold(threshold: float, method: str) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{method} threshold is a confidence: it must lie in [0, 1], got {threshold}")
