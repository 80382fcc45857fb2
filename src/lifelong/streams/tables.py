"""Reading one user file (CSV, Parquet, JSONL, NPZ, saved Hugging Face data set) into a table: features,
raw labels, task labels, sample ids and times, with the roles of the columns and the checks that name the
file, row and column of a problem. Used by `files.from_files`, which turns the tables into a stream.

A row whose label is empty (a blank cell, NaN, null, blank text; in NPZ also `y == -1`, since an integer
array has no empty value) is unlabeled data: `Table.unlabeled` marks it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import DataError
from lifelong.streams.columns import index_like, why_not_numeric
from lifelong.streams.timesplit import parse_times

LAYOUTS = ("auto", "channels_first", "channels_last")


@dataclass
class Part:
    path: Path
    fmt: str
    label: str  # how messages name it: the path relative to the stream folder


@dataclass
class Table:
    x: np.ndarray  # float32 [N, ...]
    y: np.ndarray  # raw labels: int64 or str
    t: np.ndarray | None  # raw task labels
    label: str
    ids: np.ndarray | None = None  # sample ids as str
    time: np.ndarray | None = None  # sort keys: datetime64 or float64
    # rows whose label is empty (bool mask; their `y` is a placeholder: -1 or ""); None: every row has one
    unlabeled: np.ndarray | None = None


@dataclass
class Reference:
    """Features of the first file read: every later file must match it."""

    label: str
    names: list[str] | None  # None for NPZ
    shape: tuple[int, ...]


@dataclass
class Roles:
    """The columns that play a part other than feature; none of them is ever a feature."""

    label: str
    task: str | None
    id: str | None
    time: str | None
    features: list[str] | None  # None: every numeric column not named here
    exclude: list[str]

    @property
    def special(self) -> list[str]:
        return [c for c in (self.label, self.task, self.id, self.time) if c is not None]


class Reader:
    """Reads the files of one stream in turn: every file must have the features of the first, and what was
    left out (columns, and why) or guessed (image layout) is collected for one summary per stream."""

    def __init__(self, roles: Roles, layout: str):
        self.roles = roles
        self.layout_option = layout
        self.reference: Reference | None = None
        self.ignored: set[str] = set()  # non-numeric columns left out (`info["ignored_columns"]`)
        self.reasons: dict[str, str] = {}  # every column left out, and why
        self.index_like: dict[str, str] = {}  # feature columns that look like row numbers or ids
        self.layout: str | None = None  # how the first NPZ image array was laid out
        self.detected: list[tuple[str, tuple[int, ...]]] = []  # NPZ files taken as channels-last by `auto`

    def read(self, part: Part) -> Table:
        if part.path.is_file() and part.path.stat().st_size == 0:
            raise DataError(f"{part.label} is empty")
        if part.fmt == "npz":
            table, names = self._npz(part), None
        else:
            table, names = self._frame(part)
        self._check_features(table, names)
        negative = table.y < 0 if table.y.dtype.kind == "i" else np.zeros(len(table.y), dtype=bool)
        if table.unlabeled is not None:
            negative &= ~table.unlabeled  # the placeholder of an empty label
        if negative.any():
            rows = np.flatnonzero(negative)
            if part.fmt == "npz":
                why = (
                    "y = -1 marks unlabeled rows; other negative values are not classes: map the labels to "
                    "0..K-1 (or to names) before building the stream"
                )
            else:
                why = (
                    f"-1 often marks unlabeled rows: drop them, or leave their {self.roles.label!r} cell "
                    "empty to keep them as unlabeled data, or if they are real classes, map the labels to "
                    "0..K-1 (or to names) before building the stream"
                )
            column = self.roles.label if part.fmt != "npz" else "y"
            raise DataError(
                f"{table.label}: label column {column!r} has {len(rows)} negative labels (e.g. "
                f"{table.y[rows[0]]} at row {rows[0]}); {why}"
            )
        return table

    def _ignore(self, column: str, reason: str) -> None:
        self.reasons.setdefault(column, reason)

    def warn_detected_layout(self) -> None:
        if self.detected:
            files = ", ".join(label for label, _ in self.detected[:3]) + (
                ", ..." if len(self.detected) > 3 else ""
            )
            shape = self.detected[0][1]
            warnings.warn(
                f"NPZ array 'x' of shape {shape} (in {files}) looks like channels-last images "
                "[N, H, W, C]; it was transposed to [N, C, H, W]. Set layout='channels_last' to silence "
                "this warning, or layout='channels_first' to keep the arrays as they are",
                UserWarning,
                stacklevel=3,
            )

    def _check_features(self, table: Table, names: list[str] | None) -> None:
        shape = tuple(table.x.shape[1:])
        ref = self.reference
        if ref is None:
            self.reference = Reference(table.label, names, shape)
        elif shape != ref.shape:
            what = "feature columns" if len(shape) == 1 and len(ref.shape) == 1 else "per-sample shape"
            a, b = (shape[0], ref.shape[0]) if what == "feature columns" else (shape, ref.shape)
            raise DataError(
                f"inconsistent feature count: {table.label} has {a} {what} but {ref.label} has {b}; "
                "every file of a stream needs the same features"
            )
        elif ref.names is None and names is not None:
            ref.names = names  # NPZ came first; later tables must match this table's columns

    def _frame(self, part: Part) -> tuple[Table, list[str]]:
        df = _read_frame(part)
        if len(df) == 0:
            raise DataError(f"{part.label} is empty (no data rows)")
        df.columns = [str(c) for c in df.columns]
        columns = list(df.columns)
        roles = self.roles
        for role, col in (
            ("label", roles.label),
            ("task", roles.task),
            ("id", roles.id),
            ("time", roles.time),
        ):
            if col is not None and col not in columns:
                raise DataError(
                    f"{part.label} has no {role} column {col!r}; its columns are {columns} "
                    f"(set {role}_column=...)"
                )
        names = self._feature_names(df, part)
        if roles.features is None:  # features chosen by us: say which look like row numbers or ids
            for c in names:
                why = index_like(c, df[c])
                if why is not None:
                    self.index_like.setdefault(c, why)
        x = _finite(df[names].to_numpy(dtype=np.float64, na_value=np.nan), part.label, names)
        y, empty = _labels(df[roles.label], part.label, roles.label, empty_ok=True)
        t = None if roles.task is None else _labels(df[roles.task], part.label, roles.task)[0]
        ids = None if roles.id is None else _ids(df[roles.id], part.label, roles.id)
        time = None if roles.time is None else parse_times(df[roles.time], part.label, roles.time)
        return Table(x, y, t, part.label, ids, time, _mask(empty)), names

    def _feature_names(self, df: Any, part: Part) -> list[str]:
        import pandas as pd

        is_num = {c: pd.api.types.is_numeric_dtype(df[c]) for c in df.columns}
        ref = self.reference
        roles = self.roles
        if roles.id is not None:
            self._ignore(roles.id, "id column")
        for c in roles.exclude:
            if c in is_num:
                self._ignore(c, "excluded")
        if roles.features is not None:
            missing = [c for c in roles.features if c not in is_num]
            if missing:
                raise DataError(
                    f"{part.label} lacks feature columns {missing}; its columns are {list(df.columns)}"
                )
            names = list(roles.features)
            for c in df.columns:
                if c not in names and c not in roles.special:
                    self._ignore(c, "not in feature_columns")
        else:
            candidates = [c for c in df.columns if c not in roles.special and c not in roles.exclude]
            for c in candidates:
                if not is_num[c]:
                    self._ignore(c, why_not_numeric(df[c]))
                    self.ignored.add(c)
            if ref is not None and ref.names is not None:
                missing = [c for c in ref.names if c not in candidates]
                extra = [c for c in candidates if c not in ref.names and is_num[c]]
                if missing or extra:
                    n_here = len([c for c in candidates if is_num[c]])
                    raise DataError(
                        f"inconsistent feature count: {part.label} has {n_here} numeric feature columns but "
                        f"{ref.label} has {len(ref.names)}; missing here: {missing}, extra here: {extra} "
                        "(or pass feature_columns=... or exclude_columns=...)"
                    )
                names = list(ref.names)  # the first file's column order
            else:
                names = [c for c in candidates if is_num[c]]
                if not names:
                    raise DataError(
                        f"{part.label} has no numeric feature columns (columns: {list(df.columns)}); "
                        "convert features to numbers or pass feature_columns=..."
                    )
        bad = [c for c in names if not is_num[c]]
        if bad:
            examples = []
            for c in bad:
                col = df[c]
                coerced = pd.to_numeric(col, errors="coerce")
                rows = np.flatnonzero(coerced.isna().to_numpy() & col.notna().to_numpy())
                if len(rows):
                    examples.append(f"{c!r} (e.g. {col.iloc[rows[0]]!r} at row {rows[0]})")
                else:
                    examples.append(repr(c))
            raise DataError(
                f"{part.label}: feature columns {bad} are not numeric: {', '.join(examples)}; "
                "convert them to numbers or leave them out of feature_columns"
            )
        return names

    def _npz(self, part: Part) -> Table:
        roles = self.roles
        if roles.features is not None:
            raise DataError(f"{part.label}: feature_columns applies to tables; NPZ files use the array 'x'")
        extra = [k for k in (roles.task, roles.id, roles.time) if k is not None]
        try:
            with np.load(part.path, allow_pickle=False) as z:
                keys = list(z.files)
                missing = [k for k in ["x", "y", *extra] if k not in keys]
                if missing:
                    raise DataError(
                        f"{part.label} lacks arrays {missing}; NPZ files must hold 'x' (features [N, ...]) "
                        f"and 'y' (labels [N]); it has {keys}"
                    )
                x, y = z["x"], z["y"]
                arrays = {k: z[k] for k in extra}
        except DataError:
            raise
        except Exception as e:  # zip, pickle and format errors all mean the same to the user
            raise DataError(f"could not read {part.label} as NPZ (save with numpy.savez): {e}") from e
        if x.ndim < 2:
            raise DataError(f"{part.label}: 'x' has shape {x.shape}; it must be [N, features...]")
        if len(x) == 0:
            raise DataError(f"{part.label} is empty (0 rows in 'x')")
        if x.dtype.kind not in "biuf":
            raise DataError(f"{part.label}: 'x' has dtype {x.dtype}; features must be numeric")
        for key, arr in (("y", y), *arrays.items()):
            if arr.ndim != 1 or len(arr) != len(x):
                raise DataError(
                    f"{part.label}: {key!r} has shape {arr.shape} but 'x' has {len(x)} rows; "
                    f"{key!r} must be one value per row"
                )
        flat = _finite(x.reshape(len(x), -1).astype(np.float64), part.label, None, shape=x.shape[1:])
        labels, empty = _labels(y, part.label, "y", empty_ok=True)
        if labels.dtype.kind == "i":
            empty |= labels == -1  # an integer array has no empty value: -1 marks unlabeled, as in sklearn
        return Table(
            self._channels_first(flat.reshape(x.shape), part.label),
            labels,
            None if roles.task is None else _labels(arrays[roles.task], part.label, roles.task)[0],
            part.label,
            None if roles.id is None else _ids(arrays[roles.id], part.label, roles.id),
            None if roles.time is None else parse_times(arrays[roles.time], part.label, roles.time),
            _mask(empty),
        )

    def _channels_first(self, x: np.ndarray, label: str) -> np.ndarray:
        """Image arrays as [N, C, H, W], following `layout`; the layout applied is kept for stream.info."""
        option, applied = self.layout_option, None
        if x.ndim == 3 and option != "channels_first":
            x, applied = x[:, None], "no_channels"  # one-channel images [N, H, W]
        elif x.ndim == 4:
            looks_last = x.shape[3] in (1, 3, 4) and x.shape[1] > 4 and x.shape[2] > 4
            if option == "channels_last" or (option == "auto" and looks_last):
                if option == "auto":
                    self.detected.append((label, tuple(x.shape)))
                x, applied = x.transpose(0, 3, 1, 2), "channels_last"
            else:
                applied = "channels_first"
        elif option == "channels_last":
            raise DataError(
                f"{label}: layout 'channels_last' needs 'x' shaped [N, H, W, C] (or [N, H, W]), got {x.shape}"
            )
        if self.layout is None:
            self.layout = applied
        return x


def _read_frame(part: Part) -> Any:
    try:
        import pandas as pd
    except ImportError as e:
        raise DataError("reading tables needs pandas; install it with pip install 'lifelong[data]'") from e
    try:
        if part.fmt == "csv":
            return pd.read_csv(part.path)
        if part.fmt == "jsonl":
            return pd.read_json(part.path, lines=True)
        if part.fmt == "parquet":
            return pd.read_parquet(part.path, engine="pyarrow")
        return _load_hf(part)
    except DataError:
        raise
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{part.label} is empty") from e
    except ImportError as e:
        raise DataError(f"reading {part.label} needs a missing package: {e}") from e
    except Exception as e:  # parser errors differ per format and engine; the cause is kept
        raise DataError(f"could not read {part.label} as {part.fmt.upper()}: {e}") from e


def _load_hf(part: Part) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"{part.label} is a Hugging Face data set; reading it needs the `datasets` package "
            "(pip install 'lifelong[hf]')"
        ) from e
    ds = datasets.load_from_disk(str(part.path))
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{part.label} is a DatasetDict; put it directly in the stream folder")
    return ds.to_pandas()


def _finite(x: np.ndarray, label: str, names: list[str] | None, shape: tuple = ()) -> np.ndarray:
    """x as float32, or a DataError naming the first NaN/inf (or float32 overflow)."""
    bad = ~np.isfinite(x)
    overflow = False
    if not bad.any():
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        bad = ~np.isfinite(x32)
        if not bad.any():
            return x32
        overflow = True
    row, col = np.argwhere(bad)[0]
    value = x[row, col]
    what = "too large for float32" if overflow else ("NaN" if np.isnan(value) else str(value))
    if names is not None:
        where = f"column {names[col]!r}"
    else:
        where = f"x[{row}, {', '.join(str(int(i)) for i in np.unravel_index(col, shape))}]"
    raise DataError(
        f"{label}: feature value is {what} at row {row}, {where} ({int(bad.sum())} bad values in all); "
        "clean or impute the data before building the stream"
    )


def _labels(values: Any, label: str, column: str, empty_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Raw labels as int64 or str, and the mask of rows whose value is empty (NaN, None, blank text).
    Empty values are refused unless `empty_ok` (class labels: such rows are unlabeled data); their place in
    the labels holds -1 or "". Non-integer numbers are refused."""
    is_series = hasattr(values, "isna")
    arr = values.to_numpy() if is_series else np.asarray(values)
    na = values.isna().to_numpy() if is_series else np.zeros(len(arr), dtype=bool)
    if arr.dtype.kind == "f":
        na = na | np.isnan(arr)
    elif arr.dtype.kind == "U":
        na = na | (np.char.strip(arr) == "")
    elif arr.dtype.kind == "O":
        na = na | np.array([isinstance(v, str) and not v.strip() for v in arr], dtype=bool)
    rows = np.arange(len(arr))
    if na.any():
        if not empty_ok:
            raise DataError(
                f"{label}: label column {column!r} is missing a value at row {np.flatnonzero(na)[0]}"
            )
        rows = np.flatnonzero(~na)
        arr = arr[rows]
        if arr.dtype.kind == "O":
            arr = np.array(arr.tolist())  # what is left once the nulls are gone: ints, or text
    if arr.dtype.kind in "biu":
        known = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        frac = arr != np.round(arr)
        if frac.any():
            i = np.flatnonzero(frac)[0]
            raise DataError(
                f"{label}: label column {column!r} has the non-integer value {arr[i]} at row {rows[i]}; "
                "classification needs integer or string labels"
            )
        known = arr.astype(np.int64)
    else:
        known = arr.astype(str)
    if len(known) == len(na):
        return known, na
    out = np.full(len(na), -1 if known.dtype.kind == "i" else "", dtype=known.dtype)
    out[rows] = known
    return out, na


def _mask(empty: np.ndarray) -> np.ndarray | None:
    return empty if empty.any() else None


def _ids(values: Any, label: str, column: str) -> np.ndarray:
    """Sample ids as str, or a DataError for a missing one."""
    import pandas as pd

    series = pd.Series(values)
    missing = np.flatnonzero(series.isna().to_numpy())
    if len(missing):
        raise DataError(
            f"{label}: id column {column!r} is missing a value at row {missing[0]}; give every row an id"
        )
    if pd.api.types.is_float_dtype(series) and bool((series == series.round()).all()):
        series = series.astype(np.int64)  # ids read as floats (JSON, NPZ) are written 17, not 17.0
    return np.array(series.astype(str).tolist(), dtype=str)
