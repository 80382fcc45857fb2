"""User text files as language-modelling domains: one file or folder per experience, in time order.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "2024-01.txt").write_text("January notes.")
    >>> _ = (folder / "2024-02.jsonl").write_text('{"text": "one"}\\n{"text": "two"}\\n')
    >>> corpus = read_text_domains(folder)
    >>> corpus.domains
    {'2024-01': ['January notes.'], '2024-02': ['one', 'two']}
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import warnings
import zipfile
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from lifelong.datasets.base import TextCorpus
from lifelong.errors import DataError
from lifelong.streams.files import _is_hf_dataset, _is_hf_dict, _visible

FORMATS = ("txt", "csv", "jsonl", "parquet", "hf")
_EXTENSIONS = {
    ".txt": "txt",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSIONS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress, ".zip": None}
SUPPORTED = (
    ".txt (one document), .csv, .jsonl/.ndjson, .parquet/.pq (one document per row; .txt, .csv and "
    ".jsonl may add .gz/.bz2/.xz/.zip), folders of such files (one domain), or folders saved with "
    "datasets.Dataset.save_to_disk"
)


@dataclass
class _Part:
    path: Path
    format: str
    compression: str  # "" or the suffix (".gz", ...)
    label: str  # the path as shown in messages


def read_text_domains(
    path: str | PathLike[str],
    text_column: str = "text",
    encoding: str = "utf-8",
    format: str | None = None,
) -> TextCorpus:
    """Read text files into a `TextCorpus` with one domain per file or folder, for `text_domains`.

    `path` is a folder whose entries are experiences in name order (natural order: `part2` before
    `part10`; names starting with `.` or `_` are skipped), or a single file or saved data set (one domain).
    A domain is named by the file's stem or the folder's name. Per entry:

    - a `.txt` file: one document; a folder of files: one domain, each `.txt` file one document and each
      table file one document per row, in name order;
    - a `.csv`, `.jsonl` or `.parquet` file, or a folder saved with `datasets.Dataset.save_to_disk`:
      one document per row of `text_column`.

    `encoding` decodes .txt, .csv and .jsonl files (a UTF-8 byte-order mark is dropped); Parquet and
    saved data sets are UTF-8 by definition. `format` forces one reader for every file regardless of its
    name (`txt`, `csv`, `jsonl`, `parquet` or `hf`). Rows whose text is missing or blank are dropped, and
    one warning says how many per file. Every file is checked (type, column, encoding) before the result
    is returned; a problem raises `DataError` naming the file and the fix.
    """
    if format is not None and format not in FORMATS:
        raise DataError(f"format {format!r} is not supported; use one of {', '.join(FORMATS)} or None")
    if not isinstance(text_column, str) or not text_column:
        raise DataError(f"text_column must be a column name (a non-empty string), got {text_column!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"encoding {encoding!r} is unknown; use e.g. utf-8, cp1252 or latin-1") from None
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root} does not exist; give a text file or a folder with one file per domain")
    if root.is_dir() and not _is_hf_dataset(root) and not _is_hf_dict(root):
        children = _visible(root)
        if not children:
            raise DataError(f"folder {root} is empty; put one file or folder per domain in it ({SUPPORTED})")
        name, plan = root.name, [_plan(c, format, root) for c in children]
    else:
        plan = [_plan(root, format, root.parent)]
        name = plan[0][0]
    seen: dict[str, str] = {}
    for domain, parts in plan:
        first = parts[0].label
        if domain in seen:
            raise DataError(
                f"{seen[domain]} and {first} both make domain {domain!r}; rename one (domains are named by "
                "the file stem or folder name)"
            )
        seen[domain] = first
    reader = _Reader(text_column, encoding)
    domains = {}
    for domain, parts in plan:
        documents = [doc for part in parts for doc in reader.read(part)]
        if not documents:
            raise DataError(f"domain {domain!r} ({', '.join(p.label for p in parts)}) holds no text")
        domains[domain] = documents
    if reader.dropped:
        counts = ", ".join(f"{label} ({n})" for label, n in reader.dropped.items())
        warnings.warn(
            f"dropped {sum(reader.dropped.values())} rows with missing or blank {text_column!r}: {counts}",
            stacklevel=2,
        )
    return TextCorpus(name, domains, source=str(root))


# ---------------------------------------------------------------------------------------------- layout


def _plan(entry: Path, forced: str | None, root: Path) -> tuple[str, list[_Part]]:
    """(domain, parts) of one experience, checked for file types before anything is read."""
    if entry.is_dir() and not _is_hf_dataset(entry) and not (forced == "hf" and _has_files_only(entry)):
        if _is_hf_dict(entry):
            raise DataError(_dataset_dict(entry, root))
        children = _visible(entry)
        if not children:
            raise DataError(
                f"folder {_label(entry, root)} is empty; put the domain's files in it, or remove it"
            )
        parts = []
        for child in children:
            if child.is_dir() and not _is_hf_dataset(child):
                raise DataError(
                    f"{_label(child, root)} is a folder inside the domain folder {_label(entry, root)}; only "
                    "files (or data sets saved with datasets.Dataset.save_to_disk) may sit there"
                )
            parts.append(_part(child, forced, root)[0])
        return entry.name, parts
    part, stem = _part(entry, forced, root)
    return stem, [part]


def _has_files_only(folder: Path) -> bool:
    return not any(c.is_dir() for c in _visible(folder))


def _part(p: Path, forced: str | None, root: Path) -> tuple[_Part, str]:
    label = _label(p, root)
    if p.is_dir():
        if forced not in (None, "hf"):
            raise DataError(f"{label} is a saved data set but format={forced!r}; use format 'hf' or None")
        if _is_hf_dict(p):
            raise DataError(_dataset_dict(p, root))
        return _Part(p, "hf", "", label), p.name
    if forced == "hf":
        raise DataError(f"{label} is a file, but format 'hf' reads folders saved with Dataset.save_to_disk")
    suffixes = [s.lower() for s in p.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSIONS else ""
    inner = "" if len(suffixes) < 1 + bool(compression) else suffixes[-1 - bool(compression)]
    fmt = forced or _EXTENSIONS.get(inner)
    if fmt is None:
        raise DataError(f"{label}: unsupported file type; supported: {SUPPORTED} (or set format)")
    if compression and fmt == "parquet":
        raise DataError(f"{label}: Parquet compresses inside the file; give the .parquet file uncompressed")
    stem = p.name[: len(p.name) - len(compression) - len(inner)]
    return _Part(p, fmt, compression, label), stem or p.name


def _label(p: Path, root: Path) -> str:
    try:
        return str(p.resolve().relative_to(root.resolve())) or p.name
    except ValueError:
        return str(p)


def _dataset_dict(p: Path, root: Path) -> str:
    return (
        f"{_label(p, root)} is a saved DatasetDict (several splits); give the folder of one split instead "
        f"(e.g. {_label(p / 'train', root)}), as lifelong splits each domain into train and test itself"
    )


# ---------------------------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, text_column: str, encoding: str):
        self.column = text_column
        self.encoding = encoding
        self.dropped: dict[str, int] = {}

    def read(self, part: _Part) -> list[str]:
        if part.format == "txt":
            text = self._text(part).strip("\n")
            if not text.strip():
                raise DataError(f"{part.label} is empty; add text or remove the file")
            return [text]
        if part.format == "csv":
            return self._documents(part, *self._csv(part))
        if part.format == "jsonl":
            return self._documents(part, *self._jsonl(part))
        if part.format == "parquet":
            return self._documents(part, *self._parquet(part))
        return self._documents(part, *self._hf(part))

    def _bytes(self, part: _Part) -> bytes:
        raw = part.path.read_bytes()
        try:
            if part.compression == ".zip":
                with zipfile.ZipFile(io.BytesIO(raw)) as z:
                    names = [n for n in z.namelist() if not n.endswith("/")]
                    if len(names) == 1:
                        return z.read(names[0])
                raise DataError(f"{part.label} holds {len(names)} files; a .zip must hold exactly one")
            decompress = _COMPRESSIONS.get(part.compression)
            return decompress(raw) if decompress else raw
        except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as e:
            raise DataError(f"{part.label} is not a valid {part.compression} file ({e}); remake it") from None

    def _text(self, part: _Part) -> str:
        raw = self._bytes(part)
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            where = " (after decompressing)" if part.compression else ""
            raise DataError(
                f"{part.label}: byte {e.start}{where} (0x{raw[e.start]:02x}) is not valid {self.encoding}; "
                f"set {_encoding_hint(raw)}, or save the file as {self.encoding}"
            ) from None
        if text.startswith("\ufeff"):  # a byte-order mark, as Windows editors write
            text = text[1:]
        return text.replace("\r\n", "\n")

    def _csv(self, part: _Part) -> tuple[list[Any], list[str]]:
        import pandas as pd

        text = self._text(part)
        if not text.strip():
            raise DataError(f"{part.label} is empty; add a header line and rows, or remove the file")
        try:
            # only empty fields are missing: "NA" or "null" may be real text
            frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
        except (ValueError, pd.errors.ParserError) as e:
            raise DataError(f"{part.label} is not valid CSV: {e}") from None
        columns = [str(c) for c in frame.columns]
        return (frame[self.column].tolist() if self.column in columns else []), columns

    def _jsonl(self, part: _Part) -> tuple[list[Any], list[str]]:
        values: list[Any] = []
        columns: dict[str, None] = {}
        for number, line in enumerate(self._text(part).split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{part.label}: line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{part.label}: line {number} is not a JSON object; write one {{}} per line")
            columns.update(dict.fromkeys(row))
            values.append(row.get(self.column))
        if not values:
            raise DataError(f"{part.label} is empty; add one JSON object per line, or remove the file")
        return (values if self.column in columns else []), list(columns)

    def _parquet(self, part: _Part) -> tuple[list[Any], list[str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            columns = list(pq.read_schema(part.path).names)
            if self.column not in columns:
                return [], columns
            table = pq.read_table(part.path, columns=[self.column])
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{part.label} is not a readable Parquet file ({e})") from None
        return table.column(self.column).to_pylist(), columns

    def _hf(self, part: _Part) -> tuple[list[Any], list[str]]:
        import datasets

        try:
            data = datasets.load_from_disk(str(part.path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"{part.label} is not a data set saved with save_to_disk ({e})") from None
        if not isinstance(data, datasets.Dataset):
            raise DataError(_dataset_dict(part.path, part.path.parent))
        columns = list(data.column_names)
        return (list(data[self.column]) if self.column in columns else []), columns

    def _documents(self, part: _Part, values: list[Any], columns: list[str]) -> list[str]:
        if self.column not in columns:
            raise DataError(
                f"{part.label} has no column {self.column!r}; its columns are {columns}. Name the column "
                f"that holds the text with text_column: {_guess(columns)}"
            )
        if not values:
            raise DataError(f"{part.label} has no rows; add rows or remove the file")
        documents, missing = [], 0
        for row, value in enumerate(values):
            if isinstance(value, str):
                if value.strip():
                    documents.append(value)
                else:
                    missing += 1
            elif value is None or (isinstance(value, float) and value != value):  # null or NaN
                missing += 1
            else:
                raise DataError(
                    f"{part.label}: column {self.column!r} holds {type(value).__name__} values, not text "
                    f"(row {row}: {value!r:.60}); name the text column with text_column, or store the "
                    "values as strings"
                )
        if missing:
            self.dropped[part.label] = missing
        if not documents:
            raise DataError(f"{part.label}: every row of {self.column!r} is missing or blank; fill it in")
        return documents


def _guess(columns: list[str]) -> str:
    """The column to suggest: one named like text, else the first."""
    for name in columns:
        if name.lower() in ("text", "content", "body", "document", "sentence", "message", "review"):
            return name
    return columns[0] if columns else "<name>"


def _encoding_hint(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "encoding: utf-16 (the file starts with a UTF-16 byte-order mark)"
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return "encoding: latin-1 (it decodes any byte)"
    return "encoding: cp1252 (Windows text; it decodes this file) or encoding: latin-1"
