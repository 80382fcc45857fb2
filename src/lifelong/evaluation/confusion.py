"""Which classes a classifier mistakes for which: the confusion matrix on a test split and the figures read
from it.

    counts = confusion_matrix(objective, model, stream.test_sets[0], stream.num_classes)
    counts[3, 5]                      # samples of class 3 predicted as class 5
    per_class_accuracy(counts)        # recall of each class (None where the split has no sample of it)
    accuracy_of(counts)               # equals objective.evaluate(model, split) exactly

Predictions are made exactly as `Classification.evaluate` makes them (`objective.forward`, so a
task-incremental stream's logits stay masked to each sample's task), hence the trace over the total is the
accuracy in the matrix `R`, not an approximation of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError, DataError
from lifelong.streams.experience import Split


@torch.no_grad()
def confusion_matrix(
    objective: Any, model: nn.Module, split: Split, num_classes: int, batch_size: int = 1000
) -> torch.Tensor:
    """Counts `[K, K]` (int64): row = true class, column = predicted class (the argmax of the output).

    K is `num_classes`, or the model's number of outputs where that is larger (a model may be built with
    spare outputs): a prediction of a spare output is a mistake that needs a column, or the accuracy read
    from the matrix would differ from the objective's."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}; pass stream.num_classes")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if split.y.dim() != 1:
        raise DataError(
            f"a confusion matrix needs one class label per sample, but the labels have shape "
            f"{tuple(split.y.shape)} (a language-modelling split?); use it on a classification stream"
        )
    k = num_classes
    counts = torch.zeros(k, k, dtype=torch.int64)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(split), batch_size):
            x = split.x[i : i + batch_size].to(device)
            t = None if split.t is None else split.t[i : i + batch_size].to(device)
            out = objective.forward(model, x, t)
            if out.shape[1] > k:  # spare outputs: widen, keeping the counts so far in the top-left corner
                wider = torch.zeros(out.shape[1], out.shape[1], dtype=torch.int64)
                wider[:k, :k] = counts
                counts, k = wider, out.shape[1]
            pred = out.argmax(dim=1).cpu()
            y = split.y[i : i + batch_size].long()
            _check_labels(y, k, i)
            # cell (true, predicted) as one index, so a single bincount fills the whole matrix
            counts += torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    finally:
        model.train(was_training)  # evaluation must not leave a training model in eval mode
    return counts


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """The share of each class's samples predicted correctly (recall); None for a class with no sample."""
    _check_square(confusion)
    totals = confusion.sum(dim=1)
    correct = confusion.diagonal()
    return [None if int(n) == 0 else int(c) / int(n) for c, n in zip(correct, totals, strict=True)]


def accuracy_of(confusion: torch.Tensor) -> float:
    """The overall accuracy: correct predictions (the diagonal) over all samples."""
    _check_square(confusion)
    total = int(confusion.sum())
    if total == 0:
        raise DataError("the confusion matrix counts no sample, so it has no accuracy; use a non-empty split")
    return int(confusion.diagonal().sum()) / total


def _check_labels(y: torch.Tensor, k: int, offset: int) -> None:
    bad = (y < 0) | (y >= k)
    if bool(bad.any()):
        row = offset + int(bad.nonzero()[0])
        raise DataError(
            f"sample {row}: label {int(y[bad][0])} is outside the {k} classes 0..{k - 1}; "
            "pass the stream's num_classes"
        )


def _check_square(confusion: torch.Tensor) -> None:
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise DataError(
            f"a confusion matrix is square [K, K], got shape {tuple(confusion.shape)}; "
            "pass the result of confusion_matrix(...)"
        )
