"""Time in user tables: parse a time column, and cut rows sorted by time into experiences, one per period
(`split_by: month`, ...) or N consecutive chunks of equal size (`split_by: N`)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from lifelong.errors import DataError

PERIODS = {"year": "Y", "quarter": "Q", "month": "M", "week": "W", "day": "D"}  # pandas period codes


def check_split_by(split_by: str | int | None, time_column: str | None) -> None:
    """A DataError unless `split_by` is a period name or a positive int, given with a time column."""
    if split_by is None:
        return
    if time_column is None:
        raise DataError("split_by needs time_column: the column whose dates order and split the rows")
    if isinstance(split_by, bool) or not isinstance(split_by, int | str):
        raise DataError(
            f"split_by must be one of {', '.join(PERIODS)} or a number of chunks, got {split_by!r}"
        )
    if isinstance(split_by, str) and split_by not in PERIODS:
        raise DataError(f"split_by {split_by!r} is unknown; use one of {', '.join(PERIODS)} or an integer N")
    if isinstance(split_by, int) and split_by < 1:
        raise DataError(f"split_by must be at least 1 chunk, got {split_by}")


def parse_times(values: Any, where: str, column: str) -> np.ndarray:
    """Sort keys of a time column: datetime64 for dates (any format pandas reads), float64 for numbers."""
    import pandas as pd

    series = pd.Series(values)
    missing = np.flatnonzero(series.isna().to_numpy())
    if len(missing):
        raise DataError(
            f"{where}: time column {column!r} is missing a value at row {missing[0]} ({len(missing)} rows "
            "in all); fill in or drop those rows"
        )
    if pd.api.types.is_bool_dtype(series):
        raise DataError(f"{where}: time column {column!r} holds true/false values, not dates or numbers")
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64)  # e.g. a step counter: ordered as numbers
    if not pd.api.types.is_datetime64_any_dtype(series):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns when it parses element by element
            try:
                parsed = pd.to_datetime(series, errors="coerce", format="mixed")
            except (ValueError, TypeError):  # time zones that differ between rows
                parsed = pd.to_datetime(series, errors="coerce", format="mixed", utc=True)
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            raise DataError(
                f"{where}: time column {column!r} has {series.iloc[bad[0]]!r} at row {bad[0]}, which is "
                f"not a date or time ({len(bad)} such rows); fix or drop those rows"
            )
        series = parsed
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_localize(None)  # local wall time: periods follow the calendar of the data
    return series.to_numpy(dtype="datetime64[us]")


def split_by_time(times: np.ndarray, split_by: str | int, where: str) -> list[tuple[str, np.ndarray]]:
    """(name, row indices) of each experience, in time order; `times` must be sorted."""
    n = len(times)
    if isinstance(split_by, int):
        if split_by > n:
            raise DataError(f"{where} has {n} rows, too few to split into {split_by} chunks; lower split_by")
        return [
            (f"{moment(times[c[0]], 'D')}..{moment(times[c[-1]], 'D')}", c)
            for c in np.array_split(np.arange(n), split_by)
        ]
    if times.dtype.kind != "M":
        raise DataError(
            f"{where}: split_by {split_by!r} needs dates, but the time column holds numbers; convert it "
            "to dates or give split_by a number of chunks"
        )
    import pandas as pd

    periods = pd.Series(times).dt.to_period(PERIODS[split_by])
    codes = periods.to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], n]
    return [(_period_name(codes[s], split_by), np.arange(s, e)) for s, e in zip(starts, ends, strict=True)]


def _period_name(period: Any, split_by: str) -> str:
    if split_by == "week":  # ISO week, e.g. 2024-W09 (pandas would write the week's first/last day)
        year, week, _ = period.start_time.isocalendar()
        return f"{year}-W{week:02d}"
    return str(period)  # 2024, 2024Q1, 2024-03, 2024-03-05


def moment(t: Any, unit: Literal["D", "s"] = "s") -> str:
    """A time as text: ISO 8601 to `unit` (D: the date) for dates, plain for numbers."""
    if isinstance(t, np.datetime64):
        return str(np.datetime_as_string(t, unit=unit))
    return f"{float(t):g}"
