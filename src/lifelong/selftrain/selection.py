"""Selection policies: which unlabeled samples get a pseudo-label, from their confidence [N] and predicted
class [N]. Each returns a bool mask [N].

- `threshold`: confidence >= t;
- `topk`: the most confident `share` of the samples; `curriculum`: the same with the share growing with the
  self-training round, share = min(1, round * step) (Cascante-Bonilla et al. 2021, curriculum labeling);
- `class_balanced`: among the samples at or above the threshold, the same number from every predicted class
  that has any (the smallest such count, the most confident first), so no class floods the pseudo-labels;
- `flexmatch` (Zhang et al. 2021, FlexMatch): per-class thresholds t_c = t * beta(sigma_c), sigma_c the
  number of confident predictions of class c normalised by the largest such number (or by the number of
  samples not yet predicted confidently, if larger: the paper's warm-up), beta(x) = x / (2 - x). Classes the
  model learns slowly get lower thresholds.

Ties in confidence are broken by position (the earlier sample first), so a selection is reproducible.

    >>> import torch
    >>> conf, pred = torch.tensor([0.99, 0.5, 0.97, 0.96]), torch.tensor([0, 0, 1, 1])
    >>> threshold(conf, 0.95).tolist(), class_balanced(conf, pred, 0.95).tolist()
    ([True, False, True, True], [True, False, True, False])
"""

from __future__ import annotations

import math

import torch

from lifelong.errors import ConfigError

SELECTIONS = ("threshold", "topk", "curriculum", "class_balanced", "flexmatch")


def threshold(confidence: torch.Tensor, t: float) -> torch.Tensor:
    """Samples with confidence >= `t`."""
    return confidence >= t


def _ranked(confidence: torch.Tensor) -> torch.Tensor:
    """Indices from the most confident to the least, ties by position."""
    return torch.argsort(-confidence, stable=True)


def top_share(confidence: torch.Tensor, share: float) -> torch.Tensor:
    """The ceil(share * N) most confident samples (all of them for share >= 1).

    >>> top_share(torch.tensor([0.2, 0.9, 0.5, 0.7]), 0.5).tolist()
    [False, True, False, True]
    """
    n = len(confidence)
    k = min(n, math.ceil(max(0.0, share) * n - 1e-9))
    mask = torch.zeros(n, dtype=torch.bool, device=confidence.device)
    mask[_ranked(confidence)[:k]] = True
    return mask


def curriculum_share(round: int, step: float) -> float:
    """The share selected in self-training round `round` (from 1): min(1, round * step)."""
    return min(1.0, round * step)


def class_balanced(confidence: torch.Tensor, predicted: torch.Tensor, t: float) -> torch.Tensor:
    """Among samples with confidence >= `t`, the k most confident of every predicted class that has any,
    k the smallest such count."""
    above = confidence >= t
    mask = torch.zeros_like(above)
    if not bool(above.any()):
        return mask
    classes, counts = torch.unique(predicted[above], return_counts=True)
    k = int(counts.min())
    for c in classes.tolist():
        rows = torch.nonzero(above & (predicted == c)).squeeze(1)
        mask[rows[_ranked(confidence[rows])[:k]]] = True
    return mask


def flexmatch_thresholds(t: float, counts: torch.Tensor, unused: int = 0) -> torch.Tensor:
    """Per-class thresholds t * beta(sigma_c), sigma_c = counts[c] / max(max(counts), unused), beta(x) =
    x / (2 - x). `counts[c]`: confident predictions of class c so far; `unused`: samples with none yet.

    >>> [round(v, 4) for v in flexmatch_thresholds(0.9, torch.tensor([10.0, 5.0])).tolist()]  # sigma 1, 0.5
    [0.9, 0.3]
    """
    counts = counts.float()
    scale = max(float(counts.max()) if len(counts) else 0.0, float(unused))
    sigma = counts / scale if scale > 0 else torch.zeros_like(counts)
    return t * sigma / (2 - sigma)


def flexmatch(
    confidence: torch.Tensor, predicted: torch.Tensor, t: float, counts: torch.Tensor, unused: int = 0
) -> torch.Tensor:
    """Samples whose confidence reaches their predicted class's FlexMatch threshold."""
    per_class = flexmatch_thresholds(t, counts, unused).to(confidence.device)
    return confidence >= per_class[predicted]


def select(
    policy: str,
    confidence: torch.Tensor,
    predicted: torch.Tensor,
    *,
    t: float,
    share: float = 0.2,
    round: int = 1,
    counts: torch.Tensor | None = None,
    unused: int = 0,
) -> torch.Tensor:
    """The mask of `policy` (one of `SELECTIONS`); `share` is topk's share and curriculum's step."""
    if policy == "threshold":
        return threshold(confidence, t)
    if policy == "topk":
        return top_share(confidence, share)
    if policy == "curriculum":
        return top_share(confidence, curriculum_share(round, share))
    if policy == "class_balanced":
        return class_balanced(confidence, predicted, t)
    if policy == "flexmatch":
        if counts is None:
            raise ConfigError("selection 'flexmatch' needs the per-class counts of confident predictions")
        return flexmatch(confidence, predicted, t, counts, unused)
    raise ConfigError(f"unknown selection {policy!r}; choose one of {', '.join(SELECTIONS)}")
