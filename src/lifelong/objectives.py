"""What the model is trained to do and how it is scored.

The learner and every method see only this interface: `loss(out, batch)` for training, `evaluate(model,
split)` for the accuracy (or perplexity) matrix. Classification and causal language modelling implement it.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.streams.experience import Split, Stream


class Objective(Protocol):
    metric: str  # name of the score in the matrix
    higher_is_better: bool

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor: ...

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: Split, batch_size: int = 1000) -> float: ...


class Classification:
    """Cross-entropy training, accuracy scoring.

    With `task_classes` (task-incremental streams) the logits of classes outside a sample's task are masked
    out, in training and at evaluation: the usual multi-head set-up, expressed on one shared head.
    """

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, num_classes: int, task_classes: dict[int, list[int]] | None = None) -> None:
        self.num_classes = num_classes
        self.task_classes = task_classes
        self._mask: torch.Tensor | None = None
        if task_classes:
            n_tasks = max(task_classes) + 1
            mask = torch.full((n_tasks, num_classes), float("-inf"))
            for task, classes in task_classes.items():
                mask[task, classes] = 0.0
            self._mask = mask

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        out = model(x)
        if self._mask is not None and t is not None:
            out = out + self._mask.to(out.device)[t]
        return out

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(out, y, reduction=reduction)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, batch_size: int = 1000) -> float:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        correct = 0
        for i in range(0, len(split), batch_size):
            x = split.x[i : i + batch_size].to(device)
            t = None if split.t is None else split.t[i : i + batch_size].to(device)
            pred = self.forward(model, x, t).argmax(dim=1)
            correct += int((pred.cpu() == split.y[i : i + batch_size]).sum())
        model.train(was_training)
        return correct / len(split)


class LanguageModeling:
    """Next-token cross-entropy training, perplexity scoring (exp of the mean token loss)."""

    metric = "perplexity"
    higher_is_better = False

    def __init__(self, vocab_size: int) -> None:
        self.num_classes = vocab_size

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return model(x)

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        per_token = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        if reduction == "none":
            return per_token.mean(dim=1)  # one value per sequence, like classification's per-sample loss
        return per_token.mean() if reduction == "mean" else per_token.sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, batch_size: int = 64) -> float:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, tokens = 0.0, 0
        for i in range(0, len(split), batch_size):
            x = split.x[i : i + batch_size].to(device)
            y = split.y[i : i + batch_size].to(device)
            total += float(self.loss(self.forward(model, x, None), y, reduction="sum"))
            tokens += y.numel()
        model.train(was_training)
        return math.exp(total / tokens)


def objective_for(stream: Stream) -> Classification | LanguageModeling:
    """The objective a stream calls for."""
    if stream.kind == "language_modeling":
        return LanguageModeling(stream.num_classes)
    return Classification(stream.num_classes, stream.task_classes)
