"""Confidence scores of a teacher's predictions on unlabeled samples: higher means more confident, in [0, 1].

- `softmax`: the largest class probability;
- `margin`: the largest probability minus the second largest;
- `entropy`: 1 - H(p) / log C (1 for a one-hot prediction, 0 for the uniform one);
- `mc_dropout` (Gal and Ghahramani 2016): the mean over K stochastic passes (dropout active) of each pass's
  largest probability; a model without a Dropout module has no stochastic pass and is refused;
- `tsimilarity` (Odonnat et al. 2024, "Leveraging Ensemble Diversity for Robust Self-Training in the Presence
  of Sample Selection Bias"): M linear heads on the model's shared `features`, trained with cross-entropy on
  labelled samples and a diversity term on unlabeled ones (they are pushed to disagree where no label says
  otherwise); the confidence is the heads' mean pairwise agreement, for heads i != j the mean of p_i . p_j.
  Under a labelling that does not look like the stream, softmax confidence is overconfident far from the
  labelled data while the diverse heads disagree there.

    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> [round(v, 3) for v in confidence_of("softmax", logits).tolist()]
    [0.881, 0.5]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError

CONFIDENCES = ("softmax", "margin", "entropy", "tsimilarity", "mc_dropout")


def confidence_of(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """The confidence of each row of `logits` [N, C] by `kind` ('softmax', 'margin' or 'entropy'): [N].

    >>> confidence_of("margin", torch.tensor([[0.0, 0.0]])).tolist()
    [0.0]
    >>> confidence_of("entropy", torch.zeros(1, 4)).tolist()  # uniform: no confidence at all
    [0.0]
    """
    p = F.softmax(logits.float(), dim=-1)
    if kind == "softmax":
        return p.max(dim=-1).values
    if kind == "margin":
        if p.shape[-1] < 2:
            return torch.ones(p.shape[0], device=p.device)
        top = p.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    if kind == "entropy":
        if p.shape[-1] < 2:
            return torch.ones(p.shape[0], device=p.device)
        h = -(p * p.clamp_min(1e-12).log()).sum(dim=-1)
        return (1 - h / math.log(p.shape[-1])).clamp(0.0, 1.0)
    raise ConfigError(
        f"confidence {kind!r} is not computed from logits alone; choose 'softmax', 'margin' or 'entropy' "
        "here (mc_dropout and tsimilarity need the model: `mc_dropout_confidence`, `HeadEnsemble`)"
    )


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def check_dropout(model: nn.Module, method: str) -> None:
    """Raise `ConfigError` if `model` has no Dropout module (MC-dropout would give one deterministic pass)."""
    if not has_dropout(model):
        raise ConfigError(
            f"{method} confidence 'mc_dropout' needs a model with a Dropout module (nn.Dropout); "
            f"{type(model).__name__} has none: add dropout to the model, or choose confidence 'softmax', "
            "'margin', 'entropy' or 'tsimilarity'"
        )


@torch.no_grad()
def mc_dropout_confidence(
    model: nn.Module, x: torch.Tensor, passes: int, seed: int, forward: object = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence [N], mean probabilities [N, C]) over `passes` forward passes of `model` on `x` with its
    Dropout modules active and everything else in eval mode. The passes draw from their own generator
    seeded by `seed`, so the global random state is left as it was and a resumed run draws the same masks.
    `forward(model, x)` makes the logits (default: `model(x)`)."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in dropouts]
    for m in dropouts:
        m.train()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            probs = []
            for _ in range(passes):
                out = model(x) if forward is None else forward(model, x)  # type: ignore[operator]
                probs.append(F.softmax(out.float(), dim=-1))
    finally:
        for m, mode in zip(dropouts, modes, strict=True):
            m.train(mode)
    stacked = torch.stack(probs)  # [K, N, C]
    return stacked.max(dim=-1).values.mean(dim=0), stacked.mean(dim=0)


def agreement(probs: torch.Tensor) -> torch.Tensor:
    """T-similarity: the mean over head pairs i != j of p_i . p_j, for `probs` [M, N, C] (M >= 2): [N].

    >>> p = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    >>> round(float(agreement(p)[0]), 4)  # pairs (0,1) agree, (0,2) and (1,2) do not: 2 of 6 ordered pairs
    0.3333
    """
    m = probs.shape[0]
    if m < 2:
        raise ConfigError(f"T-similarity needs at least 2 heads, got {m}")
    total = probs.sum(dim=0)  # [N, C]
    # sum over all ordered pairs (i, j), i != j, of p_i . p_j = |sum_i p_i|^2 - sum_i |p_i|^2
    pairs = (total * total).sum(dim=-1) - (probs * probs).sum(dim=-1).sum(dim=0)
    return pairs / (m * (m - 1))


class HeadEnsemble(nn.Module):
    """M linear heads on shared features, for T-similarity. `fit_step` takes one SGD step on the heads only
    (the features arrive detached): cross-entropy of every head on labelled features, minus `diversity`
    times the heads' mean pairwise disagreement (1 - agreement) on unlabeled features.

    >>> heads = HeadEnsemble(4, 3, heads=3, seed=0)
    >>> heads.confidence(torch.randn(5, 4)).shape
    torch.Size([5])
    """

    def __init__(self, in_features: int, num_classes: int, heads: int = 5, seed: int = 0) -> None:
        super().__init__()
        if heads < 2:
            raise ConfigError(f"T-similarity needs at least 2 heads, got {heads}")
        g = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialisation, from our own generator
        self.weight = nn.Parameter((torch.rand(heads, num_classes, in_features, generator=g) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(heads, num_classes, generator=g) * 2 - 1) * bound)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of every head: [M, N, C]."""
        return torch.einsum("nd,mcd->mnc", features.flatten(1).float(), self.weight) + self.bias[:, None, :]

    @torch.no_grad()
    def confidence(self, features: torch.Tensor) -> torch.Tensor:
        return agreement(F.softmax(self(features), dim=-1))

    def fit_step(
        self,
        labelled: torch.Tensor,
        y: torch.Tensor,
        unlabeled: torch.Tensor,
        lr: float,
        diversity: float,
    ) -> float:
        """One plain SGD step (no optimizer state to keep: the heads' weights are all there is to resume)."""
        with torch.enable_grad():
            ce = F.cross_entropy(self(labelled.detach()).flatten(0, 1), y.repeat(self.weight.shape[0]))
            loss = ce
            if diversity > 0 and len(unlabeled):
                probs = F.softmax(self(unlabeled.detach()), dim=-1)
                loss = ce - diversity * (1 - agreement(probs)).mean()
            grads = torch.autograd.grad(loss, [self.weight, self.bias])
        with torch.no_grad():
            for p, g in zip((self.weight, self.bias), grads, strict=True):
                p.sub_(lr * g)
        return float(loss.detach())
