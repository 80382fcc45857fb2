"""What the model is trained to do and how it is scored.

The learner and every method see only this interface: `loss(out, batch)` for training, `evaluate(model,
split)` for the accuracy (or perplexity) matrix. Classification and causal language modelling implement it.

`forward(model, x, t)` is how the loop and the methods call a model, so any model fits it the same way: a
model may return a tensor of logits, a dict with "logits" or an object with a `.logits` tensor (a Hugging
Face `ModelOutput`), and one whose `forward` has a parameter `task` (or `t`) receives the batch's task
labels under that name (None where the stream has none).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import DataError
from lifelong.streams.experience import Split, Stream

TASK_KEYWORDS = ("task", "t")  # names under which a model's forward may take the task labels


def logits_of(out: Any, model: object = None) -> torch.Tensor:
    """The logits in a model's output `out`: `out` itself when it is a tensor, `out["logits"]` of a dict,
    `out.logits` of an object (a Hugging Face `ModelOutput`). Anything else raises DataError, naming
    `model`'s class where given."""
    if isinstance(out, torch.Tensor):  # the common case costs this one check
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    what = f"a {type(out).__name__}"
    if isinstance(out, Mapping):
        what += f" with keys {sorted(str(k) for k in out)} and no tensor under 'logits'"
    who = "the model" if model is None else f"the model {type(model).__name__}"
    raise DataError(
        f"{who} returned {what}, not logits; return a tensor of logits [batch, classes], "
        "or a dict/object with `logits`"
    )


def task_keyword(model: Callable[..., Any]) -> str | None:
    """The keyword (`task` or `t`) under which `model`'s forward takes task labels, or None."""
    forward = type(model).forward if isinstance(model, nn.Module) else model
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a callable without a signature (a C function) takes no task
        return None
    for name in TASK_KEYWORDS:
        p = parameters.get(name)
        if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return name
    return None


class ModelCall:
    """Calls a model as the objectives do: with the task labels where its forward takes them, looked up
    once per model class (not per step), and returning its logits."""

    def __init__(self) -> None:
        self._keywords: dict[type, str | None] = {}

    def output(self, model: Callable[..., Any], x: torch.Tensor, t: torch.Tensor | None) -> Any:
        """What `model` returns for `x` (and task labels `t`), before the logits are taken out."""
        cls = type(model)
        if cls in self._keywords:
            keyword = self._keywords[cls]
        else:
            keyword = task_keyword(model)
            # a module's forward is its class's; a plain function (e.g. a functional_call wrapper) is
            # looked at each time, as functions of one type differ
            if isinstance(model, nn.Module):
                self._keywords[cls] = keyword
        return model(x) if keyword is None else model(x, **{keyword: t})

    def __call__(self, model: Callable[..., Any], x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        out = self.output(model, x, t)
        return out if isinstance(out, torch.Tensor) else logits_of(out, model)


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
        self._call = ModelCall()
        self._mask: torch.Tensor | None = None
        if task_classes:
            n_tasks = max(task_classes) + 1
            mask = torch.full((n_tasks, num_classes), float("-inf"))
            for task, classes in task_classes.items():
                mask[task, classes] = 0.0
            self._mask = mask

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        out = self._call(model, x, t)
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
        self._call = ModelCall()

    def forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return self._call(model, x, t)

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
        batch_size = eval_batch_size(
            batch_size, int(split.y.shape[1]) if split.y.dim() > 1 else 1, self.num_classes
        )
        total, tokens = 0.0, 0
        for i in range(0, len(split), batch_size):
            x = split.x[i : i + batch_size].to(device)
            y = split.y[i : i + batch_size].to(device)
            total += float(self.loss(self.forward(model, x, None), y, reduction="sum"))
            tokens += y.numel()
        model.train(was_training)
        return math.exp(total / tokens)


LOGITS_BUDGET = 256 * 2**20  # bytes of float32 logits one evaluation batch may hold


def eval_batch_size(requested: int, block: int, vocab: int) -> int:
    """The evaluation batch for a language model: `requested` sequences, fewer when their logits (block x
    vocabulary floats each) would pass `LOGITS_BUDGET` (SmolLM2: 1000 x 256 x 49152 floats are 50 GB).

    >>> eval_batch_size(1000, 64, 256), eval_batch_size(1000, 256, 49152)
    (1000, 5)
    """
    return max(1, min(requested, LOGITS_BUDGET // max(1, block * vocab * 4)))


def objective_for(stream: Stream) -> Classification | LanguageModeling:
    """The objective a stream calls for."""
    if stream.kind == "language_modeling":
        return LanguageModeling(stream.num_classes)
    return Classification(stream.num_classes, stream.task_classes)
