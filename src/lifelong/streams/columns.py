"""What `from_files` says about the columns of a table: why a column is not a feature, and which feature
columns look like row numbers or ids (a model learns those by heart instead of learning the task)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

# "3,5" or "-12,25": a number written with a decimal comma, which pandas reads as text
_DECIMAL_COMMA = re.compile(r"^[-+]?\d+(,\d+)?$")
_SAMPLE = 1000  # values looked at to guess what a text column holds; the guess only words a warning


def why_not_numeric(values: Any) -> str:
    """The reason a non-numeric pandas column is not a feature, for `info["columns"]["ignored"]`."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return "not numeric (dates)"
    sample = values.dropna()
    sample = sample.iloc[:_SAMPLE].astype(str).str.strip()
    if len(sample) == 0:
        return "not numeric (empty)"
    with_comma = sample[sample.str.contains(",", regex=False)]
    if len(with_comma) and bool(sample.str.fullmatch(_DECIMAL_COMMA).all()):
        return f"not numeric (decimal comma: {with_comma.iloc[0]!r})"
    if _all_dates(sample):
        return "not numeric (dates)"
    return "not numeric (text/categories)"


def _all_dates(sample: Any) -> bool:
    import pandas as pd

    if not bool(sample.str.contains(r"\d").all()):
        return False  # month or day names alone ("May", "Monday") are categories
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it parses element by element
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return not bool(parsed.isna().any())


def index_like(name: str, values: Any) -> str | None:
    """Why the feature column `name` looks like a row index or an id, or None when it does not."""
    import pandas as pd

    low = name.lower()
    if re.fullmatch(r"unnamed: \d+", low) or low in ("index", "id") or low.endswith("_id"):
        return "named like an index or id"
    if pd.api.types.is_integer_dtype(values) and len(values) >= 3:
        arr = values.to_numpy()
        for start in (0, 1):
            if np.array_equal(arr, np.arange(start, start + len(arr))):
                return f"equals the row number {start}..{start + len(arr) - 1}"
    return None


def warn_ignored(reasons: dict[str, str]) -> None:
    """One warning for every column left out because it is not numeric (columns the user named in
    exclude_columns, id_column or feature_columns are left out on purpose and need no warning)."""
    unasked = {c: r for c, r in reasons.items() if r.startswith("not numeric")}
    if not unasked:
        return
    listed = ", ".join(f"{c!r} ({r})" for c, r in unasked.items())
    hints = []
    if any("decimal comma" in r for r in unasked.values()):
        hints.append("write decimal numbers with a point ('3.5', not '3,5')")
    if any("(dates)" in r for r in unasked.values()):
        hints.append("use a date column as time_column to order or split the rows by time")
    if any("text/categories" in r for r in unasked.values()):
        hints.append("encode categories as numbers (one column per category)")
    hints.append(
        "or list the columns in exclude_columns to silence this warning "
        "(feature_columns chooses the features explicitly)"
    )
    warnings.warn(
        f"columns not used as features: {listed}. To use them, {'; '.join(hints)}",
        UserWarning,
        stacklevel=3,
    )


def warn_index_like(found: dict[str, str]) -> None:
    """One warning for feature columns that look like row numbers or ids."""
    if not found:
        return
    listed = ", ".join(f"{c!r} ({why})" for c, why in found.items())
    warnings.warn(
        f"feature columns that look like row indices or ids: {listed}; a model can learn them by heart "
        "instead of the task. Set id_column to keep one as the sample ids, or list them in "
        "exclude_columns (or choose the features with feature_columns)",
        UserWarning,
        stacklevel=3,
    )
