"""Negative flips between two versions of a model: samples the old version got right and the new one gets
wrong. A user of the old version meets these as regressions, even when the new version's accuracy is
higher (Yan et al. 2021, "Positive-Congruent Training"; MUSCLE, Echterhoff et al. 2024).

    old = predictions(old_model, split)          # argmax predictions, as evaluation makes them
    new = predictions(new_model, split)
    report = flip_report(old, new, split.y)      # negative_flip_rate, per_class, examples, ...

For language modelling a "sample" is a token position: `predictions(model, split, "language_modeling")`
gives the top-1 next token at every position, flattened, and the labels are `split.y` (any shape: it is
flattened the same way).

    >>> import torch
    >>> r = flip_report(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1]), torch.tensor([0, 1, 2, 1]))
    >>> r["negative_flip_rate"], r["positive_flip_rate"], r["examples"]
    (0.25, 0.25, [{'index': 1, 'label': 1, 'old': 1, 'new': 2}])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lifelong.errors import ConfigError, DataError
from lifelong.objectives import ModelCall, eval_batch_size
from lifelong.streams.experience import Split

KINDS = ("classification", "language_modeling")


@torch.no_grad()
def predictions(
    model: nn.Module,
    split: Split,
    kind: str = "classification",
    batch_size: int = 1000,
    objective: Any = None,
) -> torch.Tensor:
    """The argmax predictions (int64, on the CPU) of `model` on every sample of `split`, in eval mode and
    without gradients, `batch_size` samples at a time; the model's train/eval mode is left as it was.

    `kind`: "classification" gives one class per sample (shape [N]); "language_modeling" the top-1 next
    token at every position, flattened (shape [N * T], aligned with `split.y.flatten()`); language-model
    batches are made smaller where their logits would not fit the evaluation's memory budget.
    `objective`: the run's objective (`lifelong.objectives.objective_for(stream)`); give it for a
    task-incremental stream, whose outputs are masked to each sample's task as in evaluation. Without it the
    model is called as the loop calls it (task labels passed where its forward takes them; Hugging Face
    outputs reduced to their logits). A method that decides predictions (NCM, iCaRL) is scored by wrapping
    the model as evaluation does (`lifelong.learner.Predicting`).

    >>> import torch
    >>> from lifelong.streams.experience import Split
    >>> model = torch.nn.Linear(3, 2)
    >>> predictions(model, Split(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))).shape
    torch.Size([5])
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown prediction kind {kind!r}; use 'classification' or 'language_modeling'")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    lm = kind == "language_modeling"
    if lm and split.x.dim() != 2:
        raise DataError(
            f"language-model predictions need token blocks [N, T], got inputs shaped {tuple(split.x.shape)}; "
            "pass kind='classification' for a classifier"
        )
    forward = objective.forward if objective is not None else ModelCall()
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    vocab = int(getattr(objective, "num_classes", 0) or 0) if lm else 0
    out_parts: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        i = 0
        while i < len(split):
            # a language model's logits are [batch, T, vocabulary]: keep a batch of them within the
            # evaluation's budget; without an objective the vocabulary is learnt from a first, one-block batch
            size = eval_batch_size(batch_size, int(split.x.shape[1]), vocab) if vocab else batch_size
            size = 1 if lm and not vocab else size
            x = split.x[i : i + size].to(device)
            t = None if split.t is None else split.t[i : i + size].to(device)
            out = forward(model, x, t)
            expected = 3 if lm else 2
            if out.dim() != expected:
                what = "[batch, positions, vocabulary]" if lm else "[batch, classes]"
                other = "classification" if lm else "language_modeling"
                raise DataError(
                    f"the model's outputs are shaped {tuple(out.shape)}, not {what} as kind={kind!r} "
                    f"expects; pass kind={other!r} if that is what the model does"
                )
            vocab = int(out.shape[-1]) if lm else 0
            out_parts.append(out.argmax(dim=-1).reshape(-1).cpu())
            i += len(x)
    finally:
        model.train(was_training)  # a model in training must not come back in eval mode
    if not out_parts:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(out_parts).long()


def flip_report(
    old_pred: torch.Tensor | Sequence[int],
    new_pred: torch.Tensor | Sequence[int],
    y: torch.Tensor | Sequence[int],
    label_names: Sequence[Any] | None = None,
    examples: int = 10,
    max_classes: int | None = None,
) -> dict[str, Any]:
    """Negative and positive flips from `old_pred` to `new_pred` against the labels `y` (all flattened;
    language modelling: one entry per token position), as a JSON-ready dict:

    - `negative_flip_rate`: share of all samples the old version got right and the new one gets wrong;
      `positive_flip_rate`: the reverse; `negative_flips`, `positive_flips`: their counts; `samples`;
    - `old_accuracy`, `new_accuracy`;
    - `per_class`: for each class with at least one sample, `{class, name, samples, negative_flips, rate}`
      (rate: the class's negative flips over its samples), most flips first (ties: lower class first);
      `max_classes` keeps only that many (e.g. for a vocabulary of tokens);
    - `examples`: the first `examples` negative flips in index order, `{index, label, old, new}`.

    `label_names[c]` names class c (`name` is None without them).
    """
    old, new, labels = _flat("old_pred", old_pred), _flat("new_pred", new_pred), _flat("y", y)
    if not len(old) == len(new) == len(labels):
        raise DataError(
            f"old_pred has {len(old)} entries, new_pred {len(new)} and y {len(labels)}; they must be "
            "predictions of the two versions on the same samples, aligned with the labels (for language "
            "modelling: one per token, with y = split.y flattened)"
        )
    if len(labels) == 0:
        raise DataError("no samples to compare; give the predictions on a non-empty evaluation set")
    if examples < 0:
        raise ConfigError(f"examples must be at least 0, got {examples}")
    if max_classes is not None and max_classes < 0:
        raise ConfigError(f"max_classes must be at least 0 or None, got {max_classes}")
    if int(labels.min()) < 0:
        raise DataError(f"labels must be class ids >= 0, got {int(labels.min())}")
    old_right, new_right = old == labels, new == labels
    negative, positive = old_right & ~new_right, ~old_right & new_right
    n = len(labels)
    k = int(labels.max()) + 1
    per_samples = torch.bincount(labels, minlength=k)
    per_flips = torch.bincount(labels[negative], minlength=k)
    present = torch.nonzero(per_samples).squeeze(1).tolist()
    present.sort(key=lambda c: (-int(per_flips[c]), c))
    if max_classes is not None:
        present = present[:max_classes]
    per_class = [
        {
            "class": c,
            "name": _name(label_names, c),
            "samples": int(per_samples[c]),
            "negative_flips": int(per_flips[c]),
            "rate": int(per_flips[c]) / int(per_samples[c]),
        }
        for c in present
    ]
    where = torch.nonzero(negative).squeeze(1)[:examples].tolist()
    return {
        "samples": n,
        "negative_flip_rate": int(negative.sum()) / n,
        "positive_flip_rate": int(positive.sum()) / n,
        "negative_flips": int(negative.sum()),
        "positive_flips": int(positive.sum()),
        "old_accuracy": int(old_right.sum()) / n,
        "new_accuracy": int(new_right.sum()) / n,
        "per_class": per_class,
        "examples": [
            {"index": i, "label": int(labels[i]), "old": int(old[i]), "new": int(new[i])} for i in where
        ],
    }


def _flat(name: str, values: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """`values` as a flat int64 CPU tensor; floating values are refused (predictions are class ids)."""
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(
            f"{name} holds {tensor.dtype} values; give class ids (integers), e.g. logits.argmax(dim=-1)"
        )
    return tensor.detach().reshape(-1).cpu().long()


def _name(label_names: Sequence[Any] | None, c: int) -> Any:
    if label_names is None or c >= len(label_names):
        return None
    name = label_names[c]
    return name if isinstance(name, str | int | float) else str(name)
