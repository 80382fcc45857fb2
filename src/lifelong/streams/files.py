"""A user stream from files in time order: one file (or folder of files) per experience, or one table cut
into experiences by a time column.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.errors import DataError
from lifelong.streams.columns import warn_ignored, warn_index_like
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.normalize import NORMALIZE, checked, fit_standard, standardize
from lifelong.streams.tables import LAYOUTS, Part, Reader, Roles, Table
from lifelong.streams.timesplit import check_split_by, moment, split_by_time

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
class _Entry:
    domain: str
    parts: list[Part] = field(default_factory=list)  # split automatically
    train: list[Part] = field(default_factory=list)  # or given as train/test files
    test: list[Part] = field(default_factory=list)


@dataclass
class _Codes:
    """Raw labels to classes: the raw value `values[i]` (sorted) is class `classes[i]`."""

    values: np.ndarray
    classes: np.ndarray

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.values.dtype.kind == "U":
            raw = raw.astype(str)
        return self.classes[np.searchsorted(self.values, raw)]


@dataclass
class _Rows:
    """Rows of one or more tables, labels encoded, on their way to a Split."""

    x: np.ndarray
    y: np.ndarray  # int64 classes
    t: np.ndarray | None
    ids: np.ndarray | None
    time: np.ndarray | None
    source: np.ndarray  # which table each row came from

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> _Rows:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return _Rows(
            self.x[index], self.y[index], pick(self.t), pick(self.ids), pick(self.time), self.source[index]
        )

    def by_time(self) -> _Rows:
        """The rows in time order (a stable sort: rows of the same time keep their file order)."""
        return self if self.time is None else self.take(np.argsort(self.time, kind="stable"))

    def split(self) -> Split:
        t = None if self.t is None else torch.from_numpy(self.t)
        return Split(torch.from_numpy(np.ascontiguousarray(self.x)), torch.from_numpy(self.y), t)


@dataclass
class _Group:
    """The rows of one experience: `whole` to split with test_fraction, or given `train` and `test`."""

    domain: str
    files: list[str]
    whole: _Rows | None = None
    train: _Rows | None = None
    test: _Rows | None = None
    info: dict[str, Any] = field(default_factory=dict)


def from_files(
    path: PathArg | Sequence[PathArg],
    label_column: str = "label",
    format: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    feature_columns: Sequence[str] | None = None,
    task_column: str | None = None,
    *,
    exclude_columns: Sequence[str] | None = None,
    id_column: str | None = None,
    time_column: str | None = None,
    split_by: str | int | None = None,
    normalize: str = "none",
    layout: str = "auto",
    label_names: Sequence[Any] | None = None,
    normalizer: Mapping[str, Sequence[float]] | None = None,
) -> Stream:
    """Build a classification stream from files, one experience per file or sub-folder, in time order.

    `path` is a folder whose entries are sorted by name (natural order: `exp2` before `exp10`), or a list
    of paths taken in the given order. An entry is a file (CSV, Parquet, JSONL, NPZ), a folder saved with
    `datasets.Dataset.save_to_disk`, or a folder of several such files of one experience. A folder holding
    `train.*` and `test.*` gives the splits; anything else is split with `test_fraction` and `seed`
    (stratified by label, rows keep their file order). Hidden entries (`.x`, `_x`) are skipped.

    Tables: features are `feature_columns`, or every numeric column except the label, task, id and time
    columns and `exclude_columns`. Other columns are left out, and `stream.info["columns"]` says why
    (`{"features": [...], "ignored": {column: reason}, "id": ..., "label": ..., "task": ..., "time": ...}`);
    one warning lists the non-numeric ones (dates, decimal commas, text), another the feature columns that
    look like row numbers or ids. `id_column` holds sample ids, kept per experience in
    `experience.info["ids"] = {"train": [...], "test": [...]}` (str, in the rows' order).

    `time_column` orders the rows of each experience by time (parsed with pandas.to_datetime; numbers are
    ordered as numbers). With `split_by` the rows of all files are pooled, sorted by time and cut into
    experiences: one per `year`, `quarter`, `month`, `week` or `day` (named like `2024-03`, `2024-W09`), or
    `split_by=N` consecutive chunks of equal size.

    `normalize="standard"` scales every feature by the mean and standard deviation of the first
    experience's training split (kept in `stream.info["normalizer"]`); `normalizer={"mean", "std"}` applies
    given statistics instead of fitting them.

    NPZ files hold arrays `x` [N, ...] and `y` [N] (and arrays named by `task_column`, `id_column`,
    `time_column`). `layout` says how image arrays are laid out: `channels_last` ([N, H, W, C], transposed
    to [N, C, H, W]), `channels_first` (kept as they are), or `auto`: [N, H, W, C] with C in 1, 3, 4 and
    H, W > 4 is taken as channels-last (with a warning). With `auto` and `channels_last`, [N, H, W] becomes
    [N, 1, H, W].

    Labels that are not already 0..K-1 (strings, sparse integers) are mapped to 0..K-1 in sorted order over
    all files; `stream.info["label_names"][k]` is the original label of class k. Given `label_names`, class
    k is `label_names[k]` and a label outside them is refused (a run's model has outputs for those only).

    A row whose label is empty (a blank cell, NaN, null, blank text; in NPZ, where an integer array has no
    empty value, also `y == -1`) is unlabeled data: it goes to `experience.unlabeled` (a Split whose `y` is
    -1; `unlabeled_truth` is None, as nothing is known of it), never to the test split, and `test_fraction`
    divides the labelled rows only. Refused instead: unlabeled rows in a `test.*` file (a test row needs a
    label to be scored), an experience with no labelled row (nothing to train on or test with), and, in a
    stream holding unlabeled rows, a class with no labelled training sample anywhere (unless `label_names`
    is given: a continued run knows its classes from earlier data). Other negative labels are refused.
    `normalize="standard"` fits on the first experience's labelled and unlabeled training rows.

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
    if normalize not in NORMALIZE:
        raise DataError(f"normalize {normalize!r} is unknown; use one of {', '.join(NORMALIZE)}")
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    roles = _roles(label_column, feature_columns, task_column, exclude_columns, id_column, time_column)
    check_split_by(split_by, time_column)

    name, entries = _resolve(path, format)
    if split_by is not None and any(e.train for e in entries):
        given = next(e.domain for e in entries if e.train)
        raise DataError(
            f"{given!r} gives train/test files, but split_by cuts experiences by time from whole tables; "
            "give files without train/test splits, or leave split_by out"
        )
    reader = Reader(roles, layout)
    tables: list[tuple[_Entry, list[Table], list[Table], list[Table]]] = []
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
    for _, _, _, test in tables:
        for tb in test:
            if tb.unlabeled is not None:
                rows = np.flatnonzero(tb.unlabeled)
                raise DataError(
                    f"{tb.label}: {len(rows)} test rows have an empty label (e.g. row {rows[0]}); a test row "
                    "needs its label to be scored: label them, or move them to the train file, where rows "
                    "without a label are the experience's unlabeled data"
                )
    if any(t.y.dtype.kind == "U" for t in every):
        for t in every:  # some files have text labels: compare all as text
            t.y = t.y.astype(str)
    if task_column is not None and any(t.t.dtype.kind == "U" for t in every):  # type: ignore[union-attr]
        for t in every:
            t.t = t.t.astype(str)  # type: ignore[union-attr]
    labelled = np.concatenate([t.y if t.unlabeled is None else t.y[~t.unlabeled] for t in every])
    if len(labelled) == 0:
        raise DataError(
            f"no row of {name!r} has a label (column {label_column!r} is empty everywhere); an experience "
            "needs labelled rows to train on and to test with: label some rows of every file"
        )
    names, y_codes = _label_codes(labelled, label_names)
    task_names, t_codes = (None, None)
    if task_column is not None:
        task_names, t_codes = _encode(np.concatenate([t.t for t in every]), keep_any_int=True)  # type: ignore[misc]

    if split_by is not None:
        pooled = [t for _, parts, _, _ in tables for t in parts]
        groups = _time_groups(pooled, y_codes, t_codes, split_by, name)
    else:
        groups = _file_groups(tables, y_codes, t_codes)
    divided = [_divide(g, test_fraction, seed, split_by) for g in groups]

    ref = reader.reference
    assert ref is not None
    if label_names is None and any(len(unlabeled) for _, _, unlabeled in divided):
        _refuse_unlearnable(groups, divided, names)
    stats = None
    if normalizer is not None or normalize == "standard":
        n_features = int(np.prod(ref.shape))
        first = np.concatenate([divided[0][0].x, divided[0][2].x])  # unlabeled rows are inputs too
        stats = checked(normalizer, n_features) if normalizer is not None else fit_standard(first)
        for part in (r for rows in divided for r in rows if len(r)):
            part.x = standardize(part.x, stats)
    experiences = [_experience(i, g, *rows) for i, (g, rows) in enumerate(zip(groups, divided, strict=True))]

    info: dict[str, Any] = {
        "source": str(path) if isinstance(path, str | PathLike) else [str(p) for p in path],
        "label_names": names,
        "feature_names": ref.names,
        "columns": {
            "features": ref.names,
            "ignored": dict(reader.reasons),
            "id": id_column,
            "label": label_column if ref.names is not None else "y",
            "task": task_column,
            "time": time_column,
        },
    }
    if reader.ignored:
        info["ignored_columns"] = sorted(reader.ignored)
    if task_names is not None:
        info["task_names"] = task_names
    if stats is not None:
        info["normalizer"] = stats
    if reader.layout is not None:
        info["layout"] = reader.layout
    warn_ignored(reader.reasons)
    warn_index_like(reader.index_like)
    reader.warn_detected_layout()
    return Stream(
        name=name,
        experiences=experiences,
        kind="classification",
        num_classes=len(names),
        input_shape=ref.shape,
        info=info,
    )


def _roles(
    label: str,
    features: Sequence[str] | None,
    task: str | None,
    exclude: Sequence[str] | None,
    id_column: str | None,
    time: str | None,
) -> Roles:
    """The column roles, or a DataError when one column is given two parts."""
    for arg, value in (("feature_columns", features), ("exclude_columns", exclude)):
        if isinstance(value, str):
            raise DataError(f"{arg} must be a list of column names; for one column write [{value!r}]")
    roles = Roles(
        label,
        task,
        id_column,
        time,
        None if features is None else [str(c) for c in features],
        [str(c) for c in exclude or []],
    )
    named = [
        (a, c)
        for a, c in (
            ("label_column", label),
            ("task_column", task),
            ("id_column", id_column),
            ("time_column", time),
        )
        if c is not None
    ]
    for i, (arg, col) in enumerate(named):
        for other, col2 in named[i + 1 :]:
            if col == col2:
                raise DataError(f"{arg} and {other} are both {col!r}; a column can play one part only")
    for arg, listed in (("feature_columns", roles.features or []), ("exclude_columns", roles.exclude)):
        for role, col in named:
            if col in listed:
                part = role.split("_")[0]
                raise DataError(f"{arg} include {col!r}, the {part} column; remove it from {arg}")
    both = [c for c in roles.features or [] if c in roles.exclude]
    if both:
        raise DataError(f"columns {both} are in both feature_columns and exclude_columns; keep one")
    return roles


def _label_codes(raw: np.ndarray, label_names: Sequence[Any] | None) -> tuple[list, _Codes | None]:
    """The class names and the map from raw labels to classes: sorted raw labels, or `label_names`."""
    if label_names is None:
        return _encode(raw)
    known = [n if isinstance(n, str) else int(n) for n in _checked_names(label_names)]
    as_text = raw.dtype.kind == "U" or any(isinstance(n, str) for n in known)
    keys = np.array([str(n) for n in known]) if as_text else np.array(known, dtype=np.int64)
    present = np.unique(raw.astype(str) if as_text else raw)
    new = present[~np.isin(present, keys)]
    if len(new):
        raise DataError(
            f"the files have labels {new.tolist()} that are not among the run's classes: the run's model has "
            f"outputs for {known}; new classes need a new run (or drop the rows with those labels)"
        )
    order = np.argsort(keys, kind="stable")
    return known, _Codes(keys[order], order)


def _checked_names(label_names: Sequence[Any]) -> list[Any]:
    names = list(label_names)
    bad = [n for n in names if isinstance(n, bool) or not isinstance(n, str | int | np.integer)]
    if bad:
        raise DataError(f"label_names must be ints or strings (the original labels), got {bad[:3]}")
    if len({str(n) for n in names}) != len(names):
        raise DataError(f"label_names {names} name a class twice; each class needs its own name")
    return names


def _file_groups(
    tables: list[tuple[_Entry, list[Table], list[Table], list[Table]]],
    y_codes: _Codes | None,
    t_codes: _Codes | None,
) -> list[_Group]:
    """One experience per entry, rows in time order when there is a time column."""
    groups = []
    for entry, parts, train, test in tables:
        if parts:
            whole = _concat(parts, y_codes, t_codes).by_time()
            groups.append(_Group(entry.domain, [t.label for t in parts], whole=whole))
        else:
            groups.append(
                _Group(
                    entry.domain,
                    [t.label for t in train + test],
                    train=_concat(train, y_codes, t_codes).by_time(),
                    test=_concat(test, y_codes, t_codes).by_time(),
                )
            )
    return groups


def _time_groups(
    tables: list[Table], y_codes: _Codes | None, t_codes: _Codes | None, split_by: str | int, where: str
) -> list[_Group]:
    """The rows of all tables in time order, one experience per period or chunk."""
    pooled = _concat(tables, y_codes, t_codes).by_time()
    assert pooled.time is not None
    groups = []
    for domain, index in split_by_time(pooled.time, split_by, where):
        rows = pooled.take(index)
        files = [tables[i].label for i in np.unique(rows.source)]
        span = [moment(rows.time[0]), moment(rows.time[-1])]  # type: ignore[index]
        groups.append(_Group(domain, files, whole=rows, info={"period": span}))
    return groups


def _divide(
    group: _Group, test_fraction: float, seed: int, split_by: str | int | None
) -> tuple[_Rows, _Rows, _Rows]:
    """Train, test and unlabeled rows of one experience (each in the order the rows had). Only labelled
    rows are split with `test_fraction`: rows without a label (y = -1) are never test rows."""
    if group.whole is None:
        assert group.train is not None and group.test is not None
        train, unlabeled = _labelled(group.train)
        if len(train) == 0:
            raise DataError(
                f"{', '.join(group.files)}: every training row of {group.domain!r} has an empty label "
                f"({len(unlabeled)} unlabeled rows); an experience needs labelled rows to train on: label "
                "some rows of its train file"
            )
        return train, group.test, unlabeled
    whole, unlabeled = _labelled(group.whole)
    if len(whole) < 2:
        fix = (
            "use a coarser split_by" if split_by is not None else "add rows, or give train.* and test.* files"
        )
        if len(unlabeled) == 0:
            raise DataError(
                f"{group.domain!r} has {len(whole)} row; it needs at least 2 to split into train and test "
                f"({fix})"
            )
        where = f"{group.domain!r} ({', '.join(group.files)})"
        if split_by is None:
            fix = (
                "label at least 2 of its rows (one is kept for testing), or move its rows into the file of "
                "an experience that has labels, where they are that experience's unlabeled data"
            )
        raise DataError(
            f"{where} has {len(whole)} labelled row{'' if len(whole) == 1 else 's'} and {len(unlabeled)} "
            "rows with an empty label; an experience needs at least 2 labelled rows, to train on and to test "
            f"with ({fix})"
        )
    rng = np.random.default_rng([seed, zlib.crc32(group.domain.encode())])
    train_idx, test_idx = _stratified_split(whole.y, test_fraction, rng)
    return whole.take(train_idx), whole.take(test_idx), unlabeled


def _labelled(rows: _Rows) -> tuple[_Rows, _Rows]:
    """The rows with a label and those without (y = -1), each in its order."""
    known = rows.y >= 0
    if known.all():
        return rows, rows.take(np.zeros(0, dtype=np.int64))
    return rows.take(np.flatnonzero(known)), rows.take(np.flatnonzero(~known))


def _refuse_unlearnable(groups: list[_Group], divided: list[tuple[_Rows, _Rows, _Rows]], names: list) -> None:
    """A DataError naming the classes that have labelled rows only in test splits, in a stream that holds
    unlabeled rows: their training rows were most likely left unlabeled, and neither training nor
    self-training can learn a class the model never sees labelled. (A stream with every label given only
    warns about such classes: testing on an unseen class can be deliberate.)"""
    size = len(names)
    trained = np.sum([np.bincount(train.y, minlength=size) for train, _, _ in divided], axis=0)
    missing = [c for c in range(size) if trained[c] == 0]
    if not missing:
        return
    tested = [(g.domain, np.unique(test.y)) for g, (_, test, _) in zip(groups, divided, strict=True)]
    listed = "; ".join(
        f"{names[c]!r} (test rows in {', '.join(d for d, present in tested if c in present)})"
        for c in missing
    )
    raise DataError(
        f"class(es) {listed} have no labelled training sample in the whole stream, whose other rows "
        "include rows with an empty label: the model cannot learn a class it never sees labelled. Label "
        "some training rows of these classes (an empty label marks a row unlabeled), or drop their test rows"
    )


def _experience(i: int, group: _Group, train: _Rows, test: _Rows, unlabeled: _Rows) -> Experience:
    task = None
    if train.t is not None and int(train.t.min()) == int(train.t.max()):
        task = int(train.t[0])
    info: dict[str, Any] = {"files": group.files, **group.info}
    if train.ids is not None and test.ids is not None:
        info["ids"] = {"train": train.ids.tolist(), "test": test.ids.tolist()}
        if len(unlabeled) and unlabeled.ids is not None:
            info["ids"]["unlabeled"] = unlabeled.ids.tolist()
    return Experience(
        id=i,
        train=train.split(),
        test=test.split(),
        classes=np.flatnonzero(np.bincount(train.y)).tolist(),  # O(N), unlike unique
        task=task,
        domain=group.domain,
        info=info,
        unlabeled=unlabeled.split() if len(unlabeled) else None,  # y is -1; nothing is known of its truth
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


def _part(p: Path, forced: str | None, root: Path) -> tuple[Part, str]:
    """One readable unit and its stem (`train`, `exp1`, ...)."""
    label = _label(p, root)
    if p.is_dir():
        if forced == "hf" or (forced is None and _is_hf_dataset(p)):
            return Part(p, "hf", label), p.name
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
    return Part(p, found[0], label), found[1]


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
                train=[Part(p / "train", "hf", _label(p / "train", root))],
                test=[Part(p / "test", "hf", _label(p / "test", root))],
            )
        if len(splits) == 1:
            return _Entry(p.name, parts=[Part(p / splits[0], "hf", _label(p / splits[0], root))])
        raise DataError(
            f"{_label(p, root)} is a saved DatasetDict with splits {splits}; it needs 'train' and 'test' "
            "splits, or a single split to divide with test_fraction"
        )
    children = _visible(p)
    if not children:
        raise DataError(f"folder {_label(p, root)} has no usable files; supported: {_SUPPORTED}")
    parts = [_part(c, forced, root) for c in children]
    by_stem: dict[str, list[Part]] = {}
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


def _encode(raw: np.ndarray, keep_any_int: bool = False) -> tuple[list, _Codes | None]:
    """Sorted distinct labels and the map from raw labels to 0..K-1 (None: keep them as they are)."""
    names = np.unique(raw)
    identity = raw.dtype.kind == "i" and (keep_any_int or np.array_equal(names, np.arange(len(names))))
    return names.tolist(), None if identity else _Codes(names, np.arange(len(names)))


def _concat(tables: list[Table], y_codes: _Codes | None, t_codes: _Codes | None) -> _Rows:
    def mapped(raw: np.ndarray, codes: _Codes | None) -> np.ndarray:
        return np.ascontiguousarray(raw if codes is None else codes(raw), dtype=np.int64)

    def joined(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

    kinds = {t.time.dtype.kind for t in tables if t.time is not None}
    if len(kinds) > 1:
        raise DataError(
            "the time column holds dates in some files and numbers in others; use one kind in every file"
        )
    raw = np.concatenate([t.y for t in tables])
    known = np.concatenate(
        [np.ones(len(tb.y), bool) if tb.unlabeled is None else ~tb.unlabeled for tb in tables]
    )
    y = np.full(len(raw), -1, dtype=np.int64)  # -1: a row without a label
    y[known] = mapped(raw[known], y_codes)
    t = joined([tb.t for tb in tables])
    return _Rows(
        x=np.concatenate([tb.x for tb in tables]),
        y=y,
        t=None if t is None else mapped(t, t_codes),
        ids=joined([tb.ids for tb in tables]),
        time=joined([tb.time for tb in tables]),
        source=np.repeat(np.arange(len(tables)), [len(tb.y) for tb in tables]),
    )


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
