"""What a model still knows of the data it should have forgotten: accuracies and a membership-inference test.

`audit(model, forget, retain, test)` measures, without changing the model:

- `forget_accuracy`, `retain_accuracy`, `test_accuracy` (language models: next-token accuracy). After a
  good deletion the forget set scores like unseen data: about the test accuracy for a random forget set, about
  0 for a forgotten class, the model retrained without it being the reference.
- `mia_auc`: a loss-threshold membership-inference attack (Yeom et al. 2018): the lower a sample's loss, the
  likelier it was trained on. Its AUC at telling forget samples (label 1) from held-out samples (label 0),
  both subsampled to the same size with a fixed seed: 0.5 means the attack cannot tell them apart; above 0.5,
  the forget set still looks trained on; below, it looks *less* familiar than unseen data (over-forgotten,
  which is itself a tell).

    >>> report = audit(model, forget, retain, test)
    >>> report["mia_auc"], report["forget_accuracy"], report["test_accuracy"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError, DataError
from lifelong.objectives import LanguageModeling, ModelCall
from lifelong.streams.experience import Split

KINDS = ("classification", "language_modeling")


def audit(
    model: nn.Module,
    forget: Split,
    retain: Split,
    test: Split,
    kind: str = "classification",
    *,
    mia_test: Split | None = None,
    batch_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracies on the forget, retain and test sets, their mean losses, and the membership-inference
    AUC on forget against held-out samples (`mia_test`, default `test`; for a forgotten class, pass that
    class's test samples). Deterministic: the attack's subsampling uses `seed`."""
    check_kind(kind)
    for name, split in (("forget", forget), ("retain", retain), ("test", test), ("mia_test", mia_test)):
        if split is not None and (not isinstance(split, Split) or len(split) == 0):
            raise DataError(f"audit: `{name}` must be a non-empty Split (x, y), got {_describe(split)}")
    held_out = test if mia_test is None else mia_test
    was_training = model.training
    model.eval()
    try:
        f_loss, f_acc = per_sample(model, forget, kind, batch_size)
        r_loss, r_acc = per_sample(model, retain, kind, batch_size)
        t_loss, t_acc = per_sample(model, test, kind, batch_size)
        h_loss = t_loss if mia_test is None else per_sample(model, held_out, kind, batch_size)[0]
    finally:
        model.train(was_training)
    auc, pairs = mia_auc(f_loss, h_loss, seed)
    return {
        "forget_accuracy": f_acc,
        "retain_accuracy": r_acc,
        "test_accuracy": t_acc,
        "forget_loss": float(f_loss.mean()),
        "retain_loss": float(r_loss.mean()),
        "test_loss": float(t_loss.mean()),
        "mia_auc": auc,
        "mia_samples": pairs,
        "forget_size": len(forget),
        "retain_size": len(retain),
        "test_size": len(test),
    }


def mia_auc(member_loss: torch.Tensor, held_out_loss: torch.Tensor, seed: int = 0) -> tuple[float, int]:
    """AUC of the loss-threshold attack (score = -loss) telling members from held-out samples, both
    subsampled to the smaller count with `seed`; and that count."""
    n = min(len(member_loss), len(held_out_loss))
    g = torch.Generator().manual_seed(seed)
    members = member_loss[torch.randperm(len(member_loss), generator=g)[:n]]
    others = held_out_loss[torch.randperm(len(held_out_loss), generator=g)[:n]]
    # ranks, not sklearn: the same number (tested), without sklearn's ~3 s import in every `forget`
    return rank_auc((-members).double().numpy(), (-others).double().numpy()), n


def rank_auc(positive: Any, negative: Any) -> float:
    """ROC AUC from ranks (Mann-Whitney U, ties counted half): the chance that a random positive scores above
    a random negative. Equals sklearn's roc_auc_score.

    >>> rank_auc([0.9, 0.8, 0.3], [0.1, 0.3, 0.2])
    0.9444444444444444
    """
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError("an AUC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    average_rank = (end - counts + 1 + end) / 2.0  # 1-based ranks, averaged over ties
    ranks = average_rank[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


@torch.no_grad()
def per_sample(
    model: nn.Module, split: Split, kind: str, batch_size: int = 1000
) -> tuple[torch.Tensor, float]:
    """Each sample's loss (language models: its mean token loss) and the accuracy over the split (language
    models: over its tokens)."""
    call = ModelCall()
    device = next(model.parameters()).device
    losses, correct, total = [], 0, 0
    for i in range(0, len(split), batch_size):
        x, y = split.x[i : i + batch_size].to(device), split.y[i : i + batch_size].to(device)
        t = None if split.t is None else split.t[i : i + batch_size].to(device)
        out = call(model, x, t).float()
        losses.append(sample_losses(out, y, kind).cpu())
        correct += int((out.argmax(dim=-1) == y).sum())
        total += y.numel()
    return torch.cat(losses), correct / total


def sample_losses(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy per sample: `[B, classes]` logits, or `[B, T, vocabulary]` (mean over the tokens)."""
    if kind == "classification":
        return F.cross_entropy(out, y, reduction="none")
    return LanguageModeling(int(out.shape[-1])).loss(out, y, reduction="none")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")


def _describe(value: Any) -> str:
    if isinstance(value, Split):
        return "an empty Split"
    return type(value).__name__
