"""Feature scaling of a user stream: per-feature mean and standard deviation, fitted on the first
experience's training split only (later data must not leak into the scaling the model starts from), then
applied to every split. The statistics are plain float lists, so a run directory can keep them as JSON and
new data can be scaled the same way later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lifelong.errors import DataError

NORMALIZE = ("none", "standard")


def fit_standard(x: np.ndarray) -> dict[str, list[float]]:
    """{"mean": [...], "std": [...]} over the rows of `x`, one entry per feature (per element of a sample)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std[std == 0] = 1.0  # a constant feature is centred, not divided by 0
    return {"mean": mean.tolist(), "std": std.tolist()}


def checked(normalizer: Mapping[str, Any], n_features: int) -> dict[str, list[float]]:
    """`normalizer` as plain float lists, or a DataError saying what is wrong with it."""
    if not isinstance(normalizer, Mapping) or set(normalizer) != {"mean", "std"}:
        got = sorted(normalizer) if isinstance(normalizer, Mapping) else type(normalizer).__name__
        raise DataError(
            f"normalizer must be a dict with exactly the keys 'mean' and 'std' (lists of floats), got {got}"
        )
    out = {}
    for key in ("mean", "std"):
        arr = np.asarray(normalizer[key], dtype=np.float64).reshape(-1)
        if len(arr) != n_features:
            raise DataError(
                f"normalizer[{key!r}] has {len(arr)} values but the data has {n_features} features; "
                "use the normalizer of a stream with the same features"
            )
        if not np.isfinite(arr).all() or (key == "std" and (arr <= 0).any()):
            what = "non-finite or non-positive" if key == "std" else "non-finite"
            raise DataError(f"normalizer[{key!r}] holds {what} values; give the statistics a stream reported")
        out[key] = arr.tolist()
    return out


def standardize(x: np.ndarray, normalizer: Mapping[str, list[float]]) -> np.ndarray:
    """(x - mean) / std per feature, as float32 in the shape of `x`."""
    mean = np.asarray(normalizer["mean"], dtype=np.float64)
    std = np.asarray(normalizer["std"], dtype=np.float64)
    flat = (x.reshape(len(x), -1).astype(np.float64) - mean) / std
    return flat.astype(np.float32).reshape(x.shape)
