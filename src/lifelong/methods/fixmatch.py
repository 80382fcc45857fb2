"""FixMatch: consistency between a weakly and a strongly augmented view of each unlabeled sample.

Sohn et al. (NeurIPS 2020), "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence". For each training batch, `unlabeled_ratio` unlabeled samples per labelled one are drawn; the
model itself labels their weakly augmented view (no gradient through it), the confident pseudo-labels
(`threshold`, or another selection policy: `flexmatch` gives FlexMatch, Zhang et al. 2021) are the targets
of the strongly augmented view:
    loss += weight * sum over selected of CE(model(strong(x)), argmax model(weak(x))) / number drawn

Augmentations, on tensors (`weak_view`, `strong_view`):
- images ([N, C, H, W] floats): weak, a random shift of up to H/8 pixels (at least one; zero padding) and,
  for 3-channel images only, a horizontal flip with probability 1/2 (a flipped digit or letter is another
  symbol); strong, a shift of up to H/4, Gaussian noise (0.1 of the batch's standard deviation) and a
  cutout of a random H/2 x W/2 square;
- other float features (tables, flat vectors): weak, Gaussian noise of 0.05 of each feature's standard
  deviation; strong, noise of 0.2 and 20 % of the features dropped to 0;
- token ids (integers): weak, 10 % of the tokens replaced by tokens drawn from the same batch (so every id
  stays in the vocabulary); strong, 30 %.

Choices. The two views go through the model in one forward pass (weak and strong stacked), as the paper's
implementation does, so batch-norm statistics see both. Augmentations draw from a generator seeded by the
run's seed and a counter in the state: a resumed run draws the same views.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lifelong.errors import ConfigError
from lifelong.methods.base import Context
from lifelong.methods.pseudo_label import Selecting, SelfTraining, check_threshold, mix
from lifelong.selftrain.confidence import confidence_of
from lifelong.selftrain.selection import SELECTIONS
from lifelong.streams.experience import Split

CHUNK = 1024
FIXMATCH_CONFIDENCES = ("softmax", "margin", "entropy")


def _shift(x: torch.Tensor, most: int, g: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random (dy, dx) in [-most, most], zero-padded."""
    n, _, h, w = x.shape
    padded = F.pad(x, (most, most, most, most))
    offsets = torch.randint(0, 2 * most + 1, (n, 2), generator=g).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def _replace_tokens(x: torch.Tensor, share: float, g: torch.Generator) -> torch.Tensor:
    flat = x.reshape(-1)
    hit = torch.rand(flat.shape, generator=g) < share
    donors = flat[torch.randint(len(flat), (int(hit.sum()),), generator=g)]
    out = flat.clone()
    out[hit] = donors
    return out.view_as(x)


def weak_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A weak augmentation of the batch `x` (on the CPU; see the module docstring).

    >>> g = torch.Generator().manual_seed(0)
    >>> weak_view(torch.ones(2, 1, 8, 8), g).shape
    torch.Size([2, 1, 8, 8])
    """
    x = x.cpu()
    if not x.is_floating_point():
        return _replace_tokens(x, 0.1, g)
    if x.ndim == 4:
        out = _shift(x, max(1, x.shape[-2] // 8), g)
        if x.shape[1] == 3:
            flip = torch.rand(len(x), generator=g) < 0.5
            out[flip] = out[flip].flip(-1)
        return out
    scale = x.std(dim=0, keepdim=True) if len(x) > 1 else torch.ones_like(x[:1])
    return x + 0.05 * scale * torch.randn(x.shape, generator=g)


def strong_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A strong augmentation of the batch `x` (on the CPU; see the module docstring)."""
    x = x.cpu()
    if not x.is_floating_point():
        return _replace_tokens(x, 0.3, g)
    if x.ndim == 4:
        n, _, h, w = x.shape
        out = _shift(x, max(1, h // 4), g)
        out = out + 0.1 * float(x.std()) * torch.randn(out.shape, generator=g)
        ch, cw = max(1, h // 2), max(1, w // 2)
        tops = torch.randint(0, h - ch + 1, (n,), generator=g).tolist()
        lefts = torch.randint(0, w - cw + 1, (n,), generator=g).tolist()
        for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
            out[i, :, top : top + ch, left : left + cw] = 0.0
        return out
    scale = x.std(dim=0, keepdim=True) if len(x) > 1 else torch.ones_like(x[:1])
    noisy = x + 0.2 * scale * torch.randn(x.shape, generator=g)
    return noisy * (torch.rand(x.shape, generator=g) >= 0.2)


class FixMatch(SelfTraining, Selecting):
    """Options: `threshold`, `confidence` (softmax | margin | entropy, of the weak view), `selection`
    (threshold | topk | curriculum | class_balanced | flexmatch), `share` (topk's share, curriculum's step),
    `unlabeled_ratio` (unlabeled samples per labelled one), `labelled_floor` (least labelled samples per
    batch), `weight` (of the term)."""

    name = "fixmatch"

    def __init__(
        self,
        threshold: float = 0.95,
        confidence: str = "softmax",
        selection: str = "threshold",
        share: float = 0.2,
        unlabeled_ratio: float = 1.0,
        labelled_floor: int = 0,
        weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(unlabeled_ratio, labelled_floor, weight, seed)
        check_threshold(threshold, self.name)
        if confidence not in FIXMATCH_CONFIDENCES:
            raise ConfigError(
                f"{self.name} confidence must be one of {', '.join(FIXMATCH_CONFIDENCES)} (the model's own "
                f"weak-view prediction), got {confidence!r}; T-similarity and MC-dropout are options of "
                "pseudo_label"
            )
        if selection not in SELECTIONS:
            raise ConfigError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"{self.name} share must lie in (0, 1], got {share}")
        self.threshold, self.confidence, self.selection, self.share = threshold, confidence, selection, share
        self.flex: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "confidence": self.confidence,
            "selection": self.selection,
            "share": self.share,
            "unlabeled_ratio": self.unlabeled_ratio,
            "labelled_floor": self.labelled_floor,
            "weight": self.weight,
        }

    def start(self, ctx: Context) -> None:
        self.rounds = []
        self.round += 1  # the model is its own teacher: a round per experience
        unlabeled = ctx.experience.unlabeled
        if self.selection == "flexmatch":
            self.flex = torch.full((0 if unlabeled is None else len(unlabeled),), -1, dtype=torch.long)

    def loss(self, ctx: Context, batch: Split, out: torch.Tensor) -> torch.Tensor | None:
        drawn = self.draw(ctx, len(batch))
        if drawn is None:
            return None
        index, unlabeled = drawn
        g = torch.Generator().manual_seed(mix(self.seed, 5, self.draws))
        device = out.device
        views = torch.cat([weak_view(unlabeled.x, g), strong_view(unlabeled.x, g)]).to(device)
        t = None if unlabeled.t is None else torch.cat([unlabeled.t, unlabeled.t]).to(device)
        logits = ctx.objective.forward(ctx.model, views, t).float()
        weak, strong = logits[: len(unlabeled)].detach(), logits[len(unlabeled) :]
        conf = confidence_of(self.confidence, weak)
        pred = weak.argmax(dim=-1)
        mask = self.choose(conf, pred, index).to(device)
        per_sample = F.cross_entropy(strong, pred, reduction="none")
        # the whole strong view took part in the forward pass: unselected samples count 0, not left out
        return self.weight * (per_sample * mask).sum() / len(unlabeled)

    def label_all(self, ctx: Context, split: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's own (un-augmented) predictions in eval mode: the teacher it has become."""
        model = ctx.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        confs, preds = [], []
        try:
            with torch.no_grad():
                for i in range(0, len(split), CHUNK):
                    x = split.x[i : i + CHUNK].to(device)
                    t = None if split.t is None else split.t[i : i + CHUNK].to(device)
                    logits = ctx.objective.forward(model, x, t).float()
                    confs.append(confidence_of(self.confidence, logits))
                    preds.append(logits.argmax(dim=-1))
        finally:
            model.train(was_training)
        conf, pred = torch.cat(confs), torch.cat(preds)
        return conf, pred, self.choose(conf, pred, None)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self.flex is not None:
            out["flex"] = self.flex.clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.flex = state["flex"].clone() if "flex" in state else None
