"""A user stream from files in time order: one file (or folder of files) per experience.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> rng = np.random.default_rng(0)
    >>> for i in (1, 2, 10):
    ...     np.savez(folder / f"exp{i}.npz", x=rng.random((20, 3)), y=np.arange(20) % 2)
    >>> stream = from_files(folder)
    >>> [e.domain for e in stream], stream.num_classes, stream.input_shape, len(stream[0].test)
    (['exp1', 'exp2', 'exp10'], 2, (3,), 4)
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.errors import DataError
from lifelong.streams.experience import Experience, Split, Stream

FORMATS = ("csv", "parquet", "jsonl", "npz", "hf")
_EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".npz": "npz",
}
# pandas infers these from the name, so `data.csv.gz` reads as compressed CSV.
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")
_SUPPORTED = (
    ".csv, .parquet/.pq, .jsonl/.ndjson, .npz (CSV and JSONL may add .gz/.bz2/.xz/.zst/.zip), "
    "or folders saved with datasets.Dataset.save_to_disk (format='hf')"
)

PathArg = str | PathLike[str]


@dataclass
class _Part:
    path: Path
    fmt: str
    label: str  # how messages name it: the path relative to the stream folder


@dataclass
class _Entry:
    domain: str
    parts: list[_Part] = field(default_factory=list)  # split automatically
    train: list[_Part] = field(default_factory=list)  # or given as train/test files
    test: list[_Part] = field(default_factory=list)


@dataclass
class _Table:
    x: np.ndarray  # float32 [N, ...]
    y: np.ndarray  # raw labels: int64 or str
    t: np.ndarray | None  # raw task labels
    label: str


@dataclass
class _Reference:
    """Features of the first file read: every later file must match it."""

    label: str
    names: list[str] | None  # None for NPZ
    shape: tuple[int, ...]


def from_files(
    path: PathArg | Sequence[PathArg],
    label_column: str = "label",
    format: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    feature_columns: Sequence[str] | None = None,
    task_column: str | None = None,
) -> Stream:
    """Build a classification stream from files, one experience per file or sub-folder, in time order.

    `path` is a folder whose entries are sorted by name (natural order: `exp2` before `exp10`), or a list
    of paths taken in the given order. An entry is a file (CSV, Parquet, JSONL, NPZ), a folder saved with
    `datasets.Dataset.save_to_disk`, or a folder of several such files of one experience. A folder holding
    `train.*` and `test.*` gives the splits; anything else is split with `test_fraction` and `seed`
    (stratified by label, rows keep their file order). Hidden entries (`.x`, `_x`) are skipped.

    Tables: features are `feature_columns`, or every numeric column except the label and task columns
    (non-numeric ones are skipped and listed in `stream.info["ignored_columns"]`). NPZ files hold arrays
    `x` [N, ...] and `y` [N] (and the `task_column` array when given). Labels that are not already
    0..K-1 (strings, sparse integers) are mapped to 0..K-1 in sorted order over all files;
    `stream.info["label_names"][k]` is the original label of class k.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "day1.csv").write_text("a,b,label\\n" + "1,2,cat\\n3,4,dog\\n" * 5)
        >>> _ = (folder / "day2.csv").write_text("a,b,label\\n" + "5,6,dog\\n7,8,emu\\n" * 5)
        >>> s = from_files(folder)
        >>> s.num_classes, s.info["label_names"], s[1].classes
        (3, ['cat', 'dog', 'emu'], [1, 2])
    """
    if format is not None and format not in FORMATS:
        raise DataError(f"format {format!r} is not supported; use one of {', '.join(FORMATS)} or None")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if feature_columns is not None:
        feature_columns = [str(c) for c in feature_columns]
        clash = [c for c in feature_columns if c in (label_column, task_column)]
        if clash:
            raise DataError(f"feature_columns include the label/task column {clash}; remove it")

    name, entries = _resolve(path, format)
    reader = _Reader(label_column, feature_columns, task_column)
    tables: list[tuple[_Entry, list[_Table], list[_Table], list[_Table]]] = []
    for entry in entries:
        tables.append(
            (
                entry,
                [reader.read(p) for p in entry.parts],
                [reader.read(p) for p in entry.train],
                [reader.read(p) for p in entry.test],
            )
        )
    every = [t for _, *groups in tables for g in groups for t in g]
    if any(t.y.dtype.kind == "U" for t in every):
        for t in every:  # some files have text labels: compare all as text
            t.y = t.y.astype(str)
    if task_column is not None and any(t.t.dtype.kind == "U" for t in every):  # type: ignore[union-attr]
        for t in every:
            t.t = t.t.astype(str)  # type: ignore[union-attr]
    label_names, y_map = _encode(np.concatenate([t.y for t in every]))
    task_names, t_map = (None, None)
    if task_column is not None:
        task_names, t_map = _encode(np.concatenate([t.t for t in every]), keep_any_int=True)  # type: ignore[misc]

    experiences = []
    for i, (entry, parts, train_parts, test_parts) in enumerate(tables):
        if parts:
            whole = _concat(parts, y_map, t_map)
            if len(whole) < 2:
                raise DataError(
                    f"{entry.domain!r} has {len(whole)} row; it needs at least 2 to split into train and "
                    "test (add rows, or give train.* and test.* files)"
                )
            rng = np.random.default_rng([seed, zlib.crc32(entry.domain.encode())])
            train_idx, test_idx = _stratified_split(whole.y.numpy(), test_fraction, rng)
            train = whole.subset(torch.from_numpy(train_idx))
            test = whole.subset(torch.from_numpy(test_idx))
            files = [p.label for p in parts]
        else:
            train = _concat(train_parts, y_map, t_map)
            test = _concat(test_parts, y_map, t_map)
            files = [p.label for p in train_parts + test_parts]
        task = None
        if train.t is not None and int(train.t.min()) == int(train.t.max()):
            task = int(train.t[0])
        experiences.append(
            Experience(
                id=i,
                train=train,
                test=test,
                classes=torch.bincount(train.y).nonzero().flatten().tolist(),  # O(N), unlike unique
                task=task,
                domain=entry.domain,
                info={"files": files},
            )
        )

    ref = reader.reference
    assert ref is not None
    info: dict[str, Any] = {
        "source": str(path) if isinstance(path, str | PathLike) else [str(p) for p in path],
        "label_names": label_names,
        "feature_names": ref.names,
    }
    if reader.ignored:
        info["ignored_columns"] = sorted(reader.ignored)
    if task_names is not None:
        info["task_names"] = task_names
    return Stream(
        name=name,
        experiences=experiences,
        kind="classification",
        num_classes=len(label_names),
        input_shape=ref.shape,
        info=info,
    )


# ---------------------------------------------------------------------------------------------- layout


def _natural_key(name: str) -> tuple:
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if p.isdigit() else p for p in parts), name


def _visible(folder: Path) -> list[Path]:
    return sorted(
        (c for c in folder.iterdir() if not c.name.startswith((".", "_"))), key=lambda c: _natural_key(c.name)
    )


def _is_hf_dataset(p: Path) -> bool:
    return p.is_dir() and (p / "state.json").is_file()


def _is_hf_dict(p: Path) -> bool:
    return p.is_dir() and (p / "dataset_dict.json").is_file()


def _file_format(p: Path, forced: str | None) -> tuple[str, str] | None:
    """(format, stem) of a data file, or None when its extension is not supported."""
    suffixes = [s.lower() for s in p.suffixes]
    found: tuple[str, str] | None = None
    if suffixes and suffixes[-1] in _EXTENSIONS:
        found = _EXTENSIONS[suffixes[-1]], p.name[: -len(suffixes[-1])]
    elif len(suffixes) >= 2 and suffixes[-1] in _COMPRESSIONS:
        fmt = _EXTENSIONS.get(suffixes[-2])
        if fmt in ("csv", "jsonl"):
            found = fmt, p.name[: -len(suffixes[-2]) - len(suffixes[-1])]
    if forced is not None:
        return forced, found[1] if found else p.stem
    return found


def _unsupported(label: str) -> DataError:
    return DataError(f"{label}: unsupported file type; supported: {_SUPPORTED}")


def _resolve(path: PathArg | Sequence[PathArg], forced: str | None) -> tuple[str, list[_Entry]]:
    if isinstance(path, str | PathLike):
        root = Path(path)
        if not root.exists():
            raise DataError(f"{root} does not exist")
        if root.is_dir() and not (_is_hf_dataset(root) or _is_hf_dict(root)):
            children = _visible(root)
            if not children:
                raise DataError(f"folder {root} has no usable files; supported: {_SUPPORTED}")
            return root.name, [_entry(c, forced, root) for c in children]
        # a single file or saved data set is a one-experience stream
        return root.name.split(".")[0] or root.name, [_entry(root, forced, root.parent)]
    paths = [Path(p) for p in path]
    if not paths:
        raise DataError("the list of paths is empty; give one file or folder per experience")
    for p in paths:
        if not p.exists():
            raise DataError(f"{p} does not exist")
    common = Path(*_common_parts(paths))
    return "files", [_entry(p, forced, common) for p in paths]


def _common_parts(paths: list[Path]) -> list[str]:
    parents = [p.resolve().parent.parts for p in paths]
    out = []
    for level in zip(*parents, strict=False):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return out or ["/"]


def _label(p: Path, root: Path) -> str:
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def _part(p: Path, forced: str | None, root: Path) -> tuple[_Part, str]:
    """One readable unit and its stem (`train`, `exp1`, ...)."""
    label = _label(p, root)
    if p.is_dir():
        if forced == "hf" or (forced is None and _is_hf_dataset(p)):
            return _Part(p, "hf", label), p.name
        if _is_hf_dataset(p):
            raise DataError(
                f"{label} is a saved Hugging Face data set but format={forced!r}; use 'hf' or None"
            )
        raise DataError(
            f"{label} is a folder inside an experience folder; only files (or data sets saved with "
            "datasets.Dataset.save_to_disk) may sit there"
        )
    if forced == "hf":
        raise DataError(f"{label} is a file, but format='hf' expects folders saved with Dataset.save_to_disk")
    found = _file_format(p, forced)
    if found is None:
        raise _unsupported(label)
    return _Part(p, found[0], label), found[1]


def _entry(p: Path, forced: str | None, root: Path) -> _Entry:
    if p.is_file() or _is_hf_dataset(p) or (forced == "hf" and not _is_hf_dict(p) and not _has_dirs(p)):
        part, stem = _part(p, forced, root)
        return _Entry(stem, parts=[part])
    if _is_hf_dict(p):
        # a saved DatasetDict: use its train/test splits; other splits (validation) are not experiences
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        if "train" in splits and "test" in splits:
            return _Entry(
                p.name,
                train=[_Part(p / "train", "hf", _label(p / "train", root))],
                test=[_Part(p / "test", "hf", _label(p / "test", root))],
            )
        if len(splits) == 1:
            return _Entry(p.name, parts=[_Part(p / splits[0], "hf", _label(p / splits[0], root))])
        raise DataError(
            f"{_label(p, root)} is a saved DatasetDict with splits {splits}; it needs 'train' and 'test' "
            "splits, or a single split to divide with test_fraction"
        )
    children = _visible(p)
    if not children:
        raise DataError(f"folder {_label(p, root)} has no usable files; supported: {_SUPPORTED}")
    parts = [_part(c, forced, root) for c in children]
    by_stem: dict[str, list[_Part]] = {}
    for part, stem in parts:
        by_stem.setdefault(stem.lower(), []).append(part)
    if "train" not in by_stem and "test" not in by_stem:
        return _Entry(p.name, parts=[part for part, _ in parts])
    other = [part.label for part, stem in parts if stem.lower() not in ("train", "test")]
    if "train" not in by_stem or "test" not in by_stem:
        have, need = ("train", "test") if "train" in by_stem else ("test", "train")
        raise DataError(
            f"folder {_label(p, root)} has a {have} file but no {need} file; add {need}.* or rename "
            f"{have}.* so the experience is split with test_fraction"
        )
    if other:
        raise DataError(
            f"folder {_label(p, root)} holds train/test files and also {other}; move the extra files out"
        )
    return _Entry(p.name, train=by_stem["train"], test=by_stem["test"])


def _has_dirs(p: Path) -> bool:
    return p.is_dir() and any(c.is_dir() for c in _visible(p))


# ---------------------------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, label_column: str, feature_columns: list[str] | None, task_column: str | None):
        self.label_column = label_column
        self.feature_columns = feature_columns
        self.task_column = task_column
        self.reference: _Reference | None = None
        self.ignored: set[str] = set()

    def read(self, part: _Part) -> _Table:
        if part.path.is_file() and part.path.stat().st_size == 0:
            raise DataError(f"{part.label} is empty")
        if part.fmt == "npz":
            table, names = self._npz(part), None
        else:
            table, names = self._frame(part)
        self._check_features(table, names)
        return table

    def _check_features(self, table: _Table, names: list[str] | None) -> None:
        shape = tuple(table.x.shape[1:])
        ref = self.reference
        if ref is None:
            self.reference = _Reference(table.label, names, shape)
        elif shape != ref.shape:
            what = "feature columns" if len(shape) == 1 and len(ref.shape) == 1 else "per-sample shape"
            a, b = (shape[0], ref.shape[0]) if what == "feature columns" else (shape, ref.shape)
            raise DataError(
                f"inconsistent feature count: {table.label} has {a} {what} but {ref.label} has {b}; "
                "every file of a stream needs the same features"
            )
        elif ref.names is None and names is not None:
            ref.names = names  # NPZ came first; later tables must match this table's columns

    def _frame(self, part: _Part) -> tuple[_Table, list[str]]:
        df = _read_frame(part)
        if len(df) == 0:
            raise DataError(f"{part.label} is empty (no data rows)")
        df.columns = [str(c) for c in df.columns]
        columns = list(df.columns)
        for role, col in (("label", self.label_column), ("task", self.task_column)):
            if col is not None and col not in columns:
                arg = "label_column" if role == "label" else "task_column"
                raise DataError(
                    f"{part.label} has no {role} column {col!r}; its columns are {columns} (set {arg}=...)"
                )
        names = self._feature_names(df, part)
        x = _finite(df[names].to_numpy(dtype=np.float64, na_value=np.nan), part.label, names)
        y = _labels(df[self.label_column], part.label, self.label_column)
        t = None if self.task_column is None else _labels(df[self.task_column], part.label, self.task_column)
        return _Table(x, y, t, part.label), names

    def _feature_names(self, df: Any, part: _Part) -> list[str]:
        import pandas as pd

        is_num = {c: pd.api.types.is_numeric_dtype(df[c]) for c in df.columns}
        ref = self.reference
        if self.feature_columns is not None:
            missing = [c for c in self.feature_columns if c not in is_num]
            if missing:
                raise DataError(
                    f"{part.label} lacks feature columns {missing}; its columns are {list(df.columns)}"
                )
            names = list(self.feature_columns)
        else:
            roles = (self.label_column, self.task_column)
            candidates = [c for c in df.columns if c not in roles]
            if ref is not None and ref.names is not None:
                missing = [c for c in ref.names if c not in candidates]
                extra = [c for c in candidates if c not in ref.names and is_num[c]]
                if missing or extra:
                    n_here = len([c for c in candidates if is_num[c]])
                    raise DataError(
                        f"inconsistent feature count: {part.label} has {n_here} numeric feature columns but "
                        f"{ref.label} has {len(ref.names)}; missing here: {missing}, extra here: {extra} "
                        "(or pass feature_columns=...)"
                    )
                names = list(ref.names)  # the first file's column order
            else:
                names = [c for c in candidates if is_num[c]]
                self.ignored.update(c for c in candidates if not is_num[c])
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

    def _npz(self, part: _Part) -> _Table:
        if self.feature_columns is not None:
            raise DataError(f"{part.label}: feature_columns applies to tables; NPZ files use the array 'x'")
        try:
            with np.load(part.path, allow_pickle=False) as z:
                keys = list(z.files)
                need = ["x", "y"] + ([self.task_column] if self.task_column is not None else [])
                missing = [k for k in need if k not in keys]
                if missing:
                    raise DataError(
                        f"{part.label} lacks arrays {missing}; NPZ files must hold 'x' (features [N, ...]) "
                        f"and 'y' (labels [N]); it has {keys}"
                    )
                x, y = z["x"], z["y"]
                t = z[self.task_column] if self.task_column is not None else None
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
        for key, arr in (("y", y), (self.task_column, t)):
            if arr is not None and (arr.ndim != 1 or len(arr) != len(x)):
                raise DataError(
                    f"{part.label}: {key!r} has shape {arr.shape} but 'x' has {len(x)} rows; "
                    f"{key!r} must be one label per row"
                )
        flat = _finite(x.reshape(len(x), -1).astype(np.float64), part.label, None, shape=x.shape[1:])
        return _Table(
            flat.reshape(x.shape),
            _labels(y, part.label, "y"),
            None if t is None else _labels(t, part.label, str(self.task_column)),
            part.label,
        )


def _read_frame(part: _Part) -> Any:
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


def _load_hf(part: _Part) -> Any:
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


def _labels(values: Any, label: str, column: str) -> np.ndarray:
    """Raw labels as int64 or str, rejecting missing and non-integer numeric values."""
    is_series = hasattr(values, "isna")
    na = values.isna().to_numpy() if is_series else None
    arr = values.to_numpy() if is_series else np.asarray(values)
    if arr.dtype.kind == "f":
        na = np.isnan(arr) if na is None else na | np.isnan(arr)
    if na is not None and na.any():
        raise DataError(f"{label}: label column {column!r} is missing a value at row {np.flatnonzero(na)[0]}")
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        frac = arr != np.round(arr)
        if frac.any():
            row = np.flatnonzero(frac)[0]
            raise DataError(
                f"{label}: label column {column!r} has the non-integer value {arr[row]} at row {row}; "
                "classification needs integer or string labels"
            )
        return arr.astype(np.int64)
    return arr.astype(str)


def _encode(raw: np.ndarray, keep_any_int: bool = False) -> tuple[list, np.ndarray | None]:
    """Sorted distinct labels and the value table to map raw labels to 0..K-1 (None: keep as is)."""
    names = np.unique(raw)
    identity = raw.dtype.kind == "i" and (keep_any_int or np.array_equal(names, np.arange(len(names))))
    return names.tolist(), None if identity else names


def _concat(tables: list[_Table], y_map: np.ndarray | None, t_map: np.ndarray | None) -> Split:
    def mapped(raw: np.ndarray, table: np.ndarray | None) -> torch.Tensor:
        if table is not None:
            if table.dtype.kind == "U":
                raw = raw.astype(str)
            raw = np.searchsorted(table, raw)
        return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.int64))

    x = np.concatenate([t.x for t in tables])
    y = np.concatenate([t.y for t in tables]) if len(tables) > 1 else tables[0].y
    t = None
    if tables[0].t is not None:
        t = mapped(np.concatenate([tb.t for tb in tables]), t_map)  # type: ignore[misc]
    return Split(torch.from_numpy(np.ascontiguousarray(x)), mapped(y, y_map), t)


def _stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices (each in file order); every class keeps a train row when it has 2+."""
    n = len(y)
    n_test = min(max(round(n * fraction), 1), n - 1)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = counts * (n_test / n)
    cap = np.maximum(counts - 1, 0)
    take = np.minimum(np.floor(quota).astype(np.int64), cap)
    # largest remainder first, random among ties, then singleton classes only if nothing else is left
    order = np.lexsort((rng.random(len(counts)), -(quota - np.floor(quota))))
    for limit in (cap, counts):
        for c in order:
            short = n_test - int(take.sum())
            if short <= 0:
                break
            take[c] += min(short, int(limit[c] - take[c]))
    rank = np.empty(n, dtype=np.int64)
    rank[rng.permutation(n)] = np.arange(n)
    rows = np.lexsort((rank, inverse))  # grouped by class, random inside each class
    starts = np.cumsum(counts) - counts
    position = np.arange(n) - starts[inverse[rows]]
    is_test = np.zeros(n, dtype=bool)
    is_test[rows] = position < take[inverse[rows]]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
