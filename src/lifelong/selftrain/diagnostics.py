"""Diagnostics of pseudo-labels against the labels held back from them (`Experience.unlabeled_truth`):
precision (share of the selected pseudo-labels that are right), coverage (share of the samples selected),
the class distribution of the pseudo-labels against the true one, and calibration: the expected calibration
error (ECE, 15 equal-width confidence bins) and the reliability diagram's data. Samples whose truth is -1
(data that never had a label) are left out of every measure that needs the truth.

    >>> import torch
    >>> pseudo, truth = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, -1])
    >>> selected = torch.tensor([True, True, True, False])
    >>> precision(pseudo, truth, selected), coverage(selected, truth)
    (0.6666666666666666, 1.0)
"""

from __future__ import annotations

from typing import Any

import torch

BINS = 15


def precision(pseudo: torch.Tensor, truth: torch.Tensor, selected: torch.Tensor) -> float | None:
    """Share of the selected samples with known truth whose pseudo-label is right (None if there are none)."""
    known = selected & (truth >= 0)
    n = int(known.sum())
    return None if n == 0 else int((pseudo[known] == truth[known]).sum()) / n


def coverage(selected: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Share of the samples with known truth that were selected (None if no sample has a known truth)."""
    known = truth >= 0
    n = int(known.sum())
    return None if n == 0 else int(selected[known].sum()) / n


def class_distribution(labels: torch.Tensor, num_classes: int) -> list[float]:
    """The share of each class among `labels` (entries -1 left out); all zeros if none is left."""
    labels = labels[labels >= 0]
    counts = torch.bincount(labels.long(), minlength=num_classes)[:num_classes].double()
    total = float(counts.sum())
    return [0.0] * num_classes if total == 0 else (counts / total).tolist()


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> list[dict[str, Any]]:
    """Per equal-width confidence bin of [0, 1] (a confidence of exactly 1 in the last): its mean confidence,
    its accuracy and its count (confidence and accuracy None for an empty bin)."""
    conf = confidence.double().clamp(0.0, 1.0)
    which = (conf * bins).long().clamp(max=bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "confidence": float(conf[inside].mean()) if n else None,
                "accuracy": float(correct[inside].double().mean()) if n else None,
                "count": n,
            }
        )
    return out


def ece(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float | None:
    """Expected calibration error: the sum over bins of (count / N) * |accuracy - mean confidence| (None
    if N = 0).

    >>> ece(torch.tensor([0.75, 0.75]), torch.tensor([True, False]))  # said 0.75, right half the time
    0.25
    """
    n = len(confidence)
    if n == 0:
        return None
    total = 0.0
    for b in reliability(confidence, correct, bins):
        if b["count"]:
            total += b["count"] / n * abs(b["accuracy"] - b["confidence"])
    return round(total, 12)


def summary(
    confidence: torch.Tensor,
    pseudo: torch.Tensor,
    selected: torch.Tensor,
    truth: torch.Tensor | None,
    num_classes: int,
) -> dict[str, Any]:
    """Everything above for one round: precision, coverage, ece, class_distribution, reliability (the ones
    that need the truth are None without it), plus the counts of samples and of selected ones."""
    out: dict[str, Any] = {"unlabeled": len(pseudo), "selected": int(selected.sum())}
    if truth is None:
        truth = torch.full_like(pseudo, -1)
    known = truth >= 0
    has_truth = bool(known.any())
    out["precision"] = precision(pseudo, truth, selected)
    out["coverage"] = coverage(selected, truth)
    correct = pseudo[known] == truth[known]
    out["ece"] = ece(confidence[known], correct) if has_truth else None
    out["class_distribution"] = {
        "pseudo": class_distribution(pseudo[selected], num_classes),
        "true": class_distribution(truth, num_classes) if has_truth else None,
    }
    out["reliability"] = reliability(confidence[known], correct) if has_truth else None
    return out
