"""Checks that a stream fits a model, made before anything is trained or written."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lifelong.errors import DataError
from lifelong.objectives import ModelCall, logits_of
from lifelong.streams.experience import Split, Stream


def check_finite(split: Split, where: str) -> None:
    """Raise DataError naming the first row and feature holding NaN or inf."""
    if not torch.is_floating_point(split.x):
        return
    if bool(torch.isfinite(split.x.sum())):
        # NaN and inf propagate through a sum: one reduction clears the whole split (10x cheaper than an
        # element-wise mask); only a non-finite sum (a bad value, or an overflow) needs the full scan
        return
    finite = torch.isfinite(split.x)
    if bool(finite.all()):
        return
    flat = (~finite).reshape(finite.shape[0], -1)
    row = int(torch.nonzero(flat.any(dim=1))[0])
    col = int(torch.nonzero(flat[row])[0])
    value = split.x.reshape(split.x.shape[0], -1)[row, col].item()
    raise DataError(
        f"{where} has a non-finite feature ({value}) at row {row}, feature {col} "
        f"({int((~finite).sum())} non-finite values in all); clean or impute the data before training"
    )


def check_stream_fits_model(stream: Stream, model: nn.Module, objective: Any) -> None:
    """Features finite, input shape accepted by the model, labels within the model's outputs."""
    for e in stream:
        for split_name, split in (("train", e.train), ("test", e.test)):
            where = f"experience {e.id + 1} ({split_name} split)"
            check_finite(split, where)
            if tuple(split.x.shape[1:]) != tuple(stream.input_shape):
                raise DataError(
                    f"{where} has samples of shape {tuple(split.x.shape[1:])} but the stream declares "
                    f"{tuple(stream.input_shape)}; every experience must have the same input shape"
                )
    probe = stream[0].test.x[:2]
    probe_t = None if stream[0].test.t is None else stream[0].test.t[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            # as the objectives call it: with the task labels where its forward takes them
            out = ModelCall().output(model, probe.to(device), None if probe_t is None else probe_t.to(device))
    except (RuntimeError, ValueError, IndexError) as err:
        raise DataError(
            f"input of shape {tuple(probe.shape[1:])} does not fit the model {type(model).__name__}: {err}. "
            "Build the model for the stream's input shape (e.g. MLP(stream.input_shape, ...))"
        ) from None
    finally:
        model.train(was_training)
    outputs = logits_of(out, model).shape[-1]  # a tuple, a string, a dict without logits: fails here
    for e in stream:
        for split_name, split in (("train", e.train), ("test", e.test)):
            lo, hi = int(split.y.min()), int(split.y.max())
            if lo < 0 or hi >= outputs:
                bad = lo if lo < 0 else hi
                what = "token id" if stream.kind == "language_modeling" else "label"
                fix = f"build the model with at least {hi + 1} outputs or fix the labels"
                if lo < 0 and stream.kind == "classification":
                    n_bad = sum(int((s.y < 0).sum()) for x in stream for s in (x.train, x.test))
                    fix = (
                        f"{n_bad} rows have negative labels; -1 often marks unlabeled rows: drop them, or "
                        "map the labels to 0..K-1 if they are real classes"
                    )
                raise DataError(
                    f"experience {e.id + 1} ({split_name} split) has {what} {bad}, but the model has "
                    f"{outputs} outputs (valid: 0..{outputs - 1}); {fix}"
                )
    if stream.kind == "language_modeling":
        for e in stream:
            hi = int(e.train.x.max())
            if hi >= outputs:
                raise DataError(
                    f"experience {e.id + 1} has token id {hi} but the vocabulary has {outputs} ids"
                )
