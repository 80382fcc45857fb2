"""User text files as language-modelling domains (`read_text_domains`)."""

from __future__ import annotations

import doctest
import gzip
import json
import warnings
from pathlib import Path

import pytest

from lifelong.datasets.base import TextCorpus
from lifelong.errors import DataError
from lifelong.streams import text_files
from lifelong.streams.text import ByteTokenizer, text_domains
from lifelong.streams.text_files import read_text_domains


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _parquet(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def _hf(path: Path, columns: dict[str, list]) -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(columns).save_to_disk(str(path))


@pytest.fixture
def stream_folder(tmp_path: Path) -> Path:
    """One experience of every kind, named so that name order is time order."""
    root = tmp_path / "news"
    root.mkdir()
    (root / "m1.txt").write_text("First month.\nSecond line.\n")
    (root / "m2").mkdir()
    (root / "m2" / "b.txt").write_text("doc b")
    (root / "m2" / "a.txt").write_text("doc a")
    _jsonl(root / "m3.jsonl", [{"text": "j1", "id": 1}, {"text": "j2", "id": 2}])
    (root / "m4.csv").write_text('text,id\n"c1, with comma",1\nNA,2\n')
    _parquet(root / "m5.parquet", {"text": ["p1", "p2", "p3"]})
    _hf(root / "m6", {"text": ["h1", "h2"], "label": [0, 1]})
    with gzip.open(root / "m10.csv.gz", "wt") as f:
        f.write("text\nzipped\n")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "_notes.md").write_text("skipped: starts with _")
    return root


def test_every_format_in_name_order(stream_folder: Path) -> None:
    corpus = read_text_domains(stream_folder)
    assert isinstance(corpus, TextCorpus) and corpus.name == "news" and corpus.source == str(stream_folder)
    assert corpus.domains == {
        "m1": ["First month.\nSecond line."],
        "m2": ["doc a", "doc b"],  # a folder of .txt files: one document per file, in name order
        "m3": ["j1", "j2"],
        "m4": ["c1, with comma", "NA"],  # "NA" is text, not a missing value
        "m5": ["p1", "p2", "p3"],
        "m6": ["h1", "h2"],
        "m10": ["zipped"],  # natural order: m10 after m6
    }


def test_result_feeds_text_domains(stream_folder: Path) -> None:
    stream = text_domains(read_text_domains(stream_folder), block_size=2, tokenizer=ByteTokenizer())
    assert [e.domain for e in stream] == ["m1", "m2", "m3", "m4", "m5", "m6", "m10"]


def test_single_file_and_single_saved_dataset_are_one_domain(tmp_path: Path) -> None:
    _jsonl(tmp_path / "2024-05.jsonl", [{"body": "x"}, {"body": "y"}])
    corpus = read_text_domains(tmp_path / "2024-05.jsonl", text_column="body")
    assert corpus.name == "2024-05" and corpus.domains == {"2024-05": ["x", "y"]}
    _hf(tmp_path / "saved", {"text": ["only"]})
    assert read_text_domains(tmp_path / "saved").domains == {"saved": ["only"]}


def test_forced_format_reads_any_name(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# title\nbody")
    (tmp_path / "b.log").write_text("line")
    corpus = read_text_domains(tmp_path, format="txt")
    assert corpus.domains == {"a": ["# title\nbody"], "b": ["line"]}


def test_encodings_bom_and_windows_newlines(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert read_text_domains(tmp_path / "a.txt", encoding="latin-1").domains == {"a": ["café crème"]}
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbftext\r\nr\xc3\xa9sum\xc3\xa9\r\n")
    assert read_text_domains(tmp_path / "b.csv").domains == {"b": ["résumé"]}


def test_missing_rows_are_dropped_with_a_count(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"text": "keep"}, {"text": None}, {"other": 1}, {"text": "   "}])
    _parquet(tmp_path / "b.parquet", {"text": ["p", None]})
    expected = r"dropped 4 rows with missing or blank 'text': a.jsonl \(3\), b.parquet \(1\)"
    with pytest.warns(UserWarning, match=expected):
        corpus = read_text_domains(tmp_path)
    assert corpus.domains == {"a": ["keep"], "b": ["p"]}


def test_nothing_to_warn_about_is_silent(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_text_domains(tmp_path)


# ------------------------------------------------------------------------------------------------ errors


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as err:
        read_text_domains(path, **kwargs)  # type: ignore[arg-type]
    return str(err.value)


def test_missing_text_column_lists_the_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,body\n1,hello\n")
    message = _error(tmp_path)
    assert "a.csv has no column 'text'" in message and "['id', 'body']" in message
    assert "text_column: body" in message
    _parquet(tmp_path / "a.csv", {"x": [1]})  # now a Parquet file under a wrong name
    _hf(tmp_path / "hf", {"sentence": ["s"]})
    assert "text_column: sentence" in _error(tmp_path / "hf")


def test_invalid_utf8_names_file_offset_and_encoding(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("ok")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "na\x92ve"}\n')
    message = _error(tmp_path)
    assert "b.jsonl: byte 12 (0x92) is not valid utf-8" in message
    assert "encoding: cp1252" in message and "latin-1" in message
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "na\x81ve"}\n')  # 0x81 is not cp1252: only latin-1
    assert "encoding: latin-1" in _error(tmp_path)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(b'{"text": "\xff"}\n')
    (tmp_path / "b.jsonl").unlink()
    assert "b.jsonl.gz: byte 10 (after decompressing)" in _error(tmp_path)


def test_empty_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "folder" in _error(tmp_path / "empty") and "is empty" in _error(tmp_path / "empty")
    (tmp_path / "empty" / "d1").mkdir()
    assert "folder d1 is empty" in _error(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert "blank.txt is empty" in _error(tmp_path / "blank.txt")
    (tmp_path / "none.csv").write_text("")
    assert "none.csv is empty" in _error(tmp_path / "none.csv")
    (tmp_path / "header.csv").write_text("text\n")
    assert "header.csv has no rows" in _error(tmp_path / "header.csv")
    _jsonl(tmp_path / "nulls.jsonl", [{"text": None}, {"text": ""}])
    assert "every row of 'text' is missing or blank" in _error(tmp_path / "nulls.jsonl")


def test_non_string_text_column(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"text": "fine"}, {"text": 42}])
    assert "column 'text' holds int values, not text (row 1: 42)" in _error(tmp_path / "a.jsonl")
    _parquet(tmp_path / "b.parquet", {"text": [1.5, 2.5]})
    assert "holds float values" in _error(tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("text\n1\n2\n")
    assert "holds int values" in _error(tmp_path / "c.csv")


def test_unknown_file_type_lists_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.docx").write_bytes(b"PK")
    message = _error(tmp_path)
    assert "b.docx: unsupported file type" in message
    assert ".txt" in message and ".jsonl" in message and ".parquet" in message and "save_to_disk" in message


def test_layout_mistakes(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope")
    assert "format 'pdf' is not supported" in _error(tmp_path, format="pdf")
    assert "encoding 'utf-9' is unknown" in _error(tmp_path, encoding="utf-9")
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.csv").write_text("text\ny\n")
    assert "both make domain 'a'" in _error(tmp_path)
    (tmp_path / "a.csv").unlink()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inner").mkdir()
    assert "inner is a folder inside the domain folder d" in _error(tmp_path)


def test_dataset_dict_and_bad_json(tmp_path: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert "saved DatasetDict" in _error(tmp_path / "dd") and "dd/train" in _error(tmp_path / "dd")
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    assert "x.jsonl: line 2 is not valid JSON" in _error(tmp_path / "x.jsonl")


def test_doctest() -> None:
    assert doctest.testmod(text_files).failed == 0
