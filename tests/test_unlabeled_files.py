"""User files may leave the label empty: such rows arrive as the experience's unlabeled data (y = -1, no
truth), never as test rows, in every table format (and as y = -1 in NPZ); what cannot work is refused,
naming the file or class and the fix."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from lifelong.config import parse_config
from lifelong.errors import DataError
from lifelong.experiment import continue_run, run_config, stream_for
from lifelong.streams.files import from_files
from lifelong.streams.fingerprint import fingerprint
from lifelong.streams.labels import hold_back_labels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EMPTY = {2, 5, 6, 11, 17}  # rows left without a label


def frame(n: int = 20, empty: set[int] = EMPTY, labels=("cat", "dog"), seed: int = 0) -> pd.DataFrame:
    """Features, the row number in `row` (to follow each row), text labels with some left empty (None)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.random(n),
            "row": np.arange(n, dtype=np.float64),
            "label": [None if i in empty else labels[i % len(labels)] for i in range(n)],
        }
    )


def rows_of(split) -> list[int]:
    return [int(r) for r in split.x[:, 1]]


def write(df: pd.DataFrame, path, how: str) -> None:
    if how == "csv":
        df.to_csv(path, index=False)  # None is written as an empty cell
    elif how == "jsonl-null":
        df.to_json(path, orient="records", lines=True)
    elif how == "jsonl-blank":
        df.assign(label=df["label"].fillna("")).to_json(path, orient="records", lines=True)
    elif how == "parquet":
        df.to_parquet(path, index=False)
    elif how == "parquet-int":  # integer labels with nulls: read back as floats with NaN
        df.assign(label=df["label"].map({"cat": 0, "dog": 1})).to_parquet(path, index=False)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["csv", "jsonl-null", "jsonl-blank", "parquet", "parquet-int"])
def test_empty_labels_become_unlabeled_data_in_every_table_format(tmp_path, how):
    suffix = how.split("-")[0]
    write(frame(), tmp_path / f"e1.{suffix}", how)
    write(frame(seed=1, empty={0, 19}), tmp_path / f"e2.{suffix}", how)
    s = from_files(tmp_path, test_fraction=0.25)
    assert s.num_classes == 2
    for e, empty in zip(s, (EMPTY, {0, 19}), strict=True):
        assert e.unlabeled is not None and e.unlabeled_truth is None
        assert rows_of(e.unlabeled) == sorted(empty)  # in file order
        assert e.unlabeled.y.dtype == torch.int64 and set(e.unlabeled.y.tolist()) == {-1}
        assert e.unlabeled.x.dtype == torch.float32 and e.unlabeled.x.shape[1:] == (2,)
        assert not set(rows_of(e.test)) & empty and not set(rows_of(e.train)) & empty
        assert sorted(rows_of(e.train) + rows_of(e.test) + rows_of(e.unlabeled)) == list(range(20))
        assert len(e.test) == round(0.25 * (20 - len(empty)))  # the fraction of the labelled rows
        assert e.classes == [0, 1] and int(e.train.y.min()) >= 0 and int(e.test.y.min()) >= 0
        assert f"unlabeled={len(empty)}" in repr(e)
        labels = ["cat", "dog"] if how != "parquet-int" else [0, 1]
        for split in (e.train, e.test):  # each row keeps its own label
            assert [labels[c] for c in split.y.tolist()] == [labels[r % 2] for r in rows_of(split)]


def test_unlabeled_rows_leave_the_labelled_split_as_it_was(tmp_path):
    """The labelled rows are divided exactly as in a file without the unlabeled ones."""
    df = frame(40, empty={3, 4, 10, 21, 22, 39}, labels=("a", "b", "c"))
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    df.to_csv(tmp_path / "with" / "day.csv", index=False)
    df.dropna().to_csv(tmp_path / "without" / "day.csv", index=False)
    mixed, plain = from_files(tmp_path / "with")[0], from_files(tmp_path / "without")[0]
    assert plain.unlabeled is None
    assert rows_of(mixed.train) == rows_of(plain.train) and rows_of(mixed.test) == rows_of(plain.test)
    assert torch.equal(mixed.train.y, plain.train.y) and torch.equal(mixed.test.y, plain.test.y)


def test_npz_marks_unlabeled_rows_with_minus_one_or_nan(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(12, 2)
    y = np.array([0, 1, -1, 0, 1, 0, -1, 1, 0, 1, 0, 1])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x, y=np.where(y < 0, np.nan, y).astype(np.float64))
    for e in from_files(tmp_path, test_fraction=0.2):
        assert e.unlabeled is not None and (e.unlabeled.x[:, 0] / 2).tolist() == [2.0, 6.0]
        assert e.unlabeled.y.tolist() == [-1, -1] and e.unlabeled_truth is None
        assert len(e.train) + len(e.test) == 10
    np.savez(tmp_path / "b.npz", x=x, y=np.where(y < 0, -2, y))
    with pytest.raises(DataError) as err:
        from_files(tmp_path)
    msg = str(err.value)
    assert "b.npz: label column 'y' has 2 negative labels (e.g. -2 at row 2)" in msg
    assert "y = -1 marks unlabeled rows; other negative values are not classes" in msg


def test_minus_one_in_a_table_is_still_refused_and_the_message_says_how_to_mark_unlabeled(tmp_path):
    pd.DataFrame({"a": range(6), "label": [0, 1, -1, 0, 1, 0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"leave their 'label' cell empty to keep them as unlabeled data"):
        from_files(tmp_path / "t.csv")


def test_empty_task_labels_and_bad_labelled_values_are_still_refused(tmp_path):
    df = frame().assign(task=[1] * 19 + [None])
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t\.csv: label column 'task' is missing a value at row 19"):
        from_files(tmp_path / "t.csv", task_column="task")
    df = frame().assign(label=[None if i in EMPTY else 0.0 for i in range(20)])
    df.loc[7, "label"] = 0.5
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        DataError, match=r"t\.csv: label column 'label' has the non-integer value 0\.5 at row 7"
    ):
        from_files(tmp_path / "t.csv")


def test_train_files_may_hold_unlabeled_rows_but_test_files_may_not(tmp_path):
    week = tmp_path / "week1"
    week.mkdir()
    frame().to_csv(week / "train.csv", index=False)
    frame(8, empty=set()).to_csv(week / "test.csv", index=False)
    e = from_files(tmp_path)[0]
    assert e.unlabeled is not None and rows_of(e.unlabeled) == sorted(EMPTY)
    assert len(e.train) == 20 - len(EMPTY) and len(e.test) == 8
    frame(8, empty={1, 4}).to_csv(week / "test.csv", index=False)
    with pytest.raises(DataError) as err:
        from_files(tmp_path)
    msg = str(err.value)
    assert "week1/test.csv: 2 test rows have an empty label (e.g. row 1)" in msg
    assert "label them, or move them to the train file" in msg


def test_an_experience_with_only_unlabeled_rows_is_refused_naming_the_file(tmp_path):
    frame().to_csv(tmp_path / "e1.csv", index=False)
    frame(10, empty=set(range(10))).to_csv(tmp_path / "e2.csv", index=False)
    with pytest.raises(DataError) as err:
        from_files(tmp_path)
    msg = str(err.value)
    assert "'e2' (e2.csv) has 0 labelled rows and 10 rows with an empty label" in msg
    assert "label at least 2 of its rows" in msg and "move its rows into the file of an experience" in msg
    frame(10, empty=set(range(1, 10))).to_csv(tmp_path / "e2.csv", index=False)
    with pytest.raises(DataError, match=r"'e2' \(e2\.csv\) has 1 labelled row and 9 rows with an empty"):
        from_files(tmp_path)
    # given train/test files: a train file with no label at all
    (tmp_path / "e2.csv").unlink()
    (tmp_path / "e2").mkdir()
    frame(6, empty=set(range(6))).to_csv(tmp_path / "e2" / "train.csv", index=False)
    frame(4, empty=set()).to_csv(tmp_path / "e2" / "test.csv", index=False)
    with pytest.raises(
        DataError, match=r"e2/train\.csv, e2/test\.csv: every training row of 'e2' has an emp"
    ):
        from_files(tmp_path)


def test_no_label_anywhere_and_an_unlabeled_period_are_refused(tmp_path):
    frame(10, empty=set(range(10))).to_csv(tmp_path / "e1.csv", index=False)
    with pytest.raises(DataError, match=r"no row of 'e1' has a label \(column 'label' is empty everywhere\)"):
        from_files(tmp_path / "e1.csv")
    df = frame(20, empty=set(range(10, 20)))
    df["when"] = ["2024-01-15"] * 10 + ["2024-02-15"] * 10
    df.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(
        DataError, match=r"'2024-02' \(log\.csv\) has 0 labelled rows.*use a coarser split_by"
    ):
        from_files(tmp_path / "log.csv", time_column="when", split_by="month")
    s = from_files(tmp_path / "log.csv", time_column="when", split_by="quarter")
    assert len(s) == 1 and s[0].unlabeled is not None and len(s[0].unlabeled) == 10


def test_a_class_with_no_labelled_training_sample_is_refused_naming_it(tmp_path):
    week = tmp_path / "week1"
    week.mkdir()
    frame().to_csv(week / "train.csv", index=False)
    frame(6, empty=set(), labels=("cat", "dog", "emu")).to_csv(week / "test.csv", index=False)
    with pytest.raises(DataError) as err:
        from_files(tmp_path)
    msg = str(err.value)
    assert "class(es) 'emu' (test rows in week1) have no labelled training sample in the whole stream" in msg
    assert "Label some training rows of these classes" in msg
    # a continued run knows its classes from earlier data: the new files need not hold every one
    s = from_files(tmp_path, label_names=["cat", "dog", "emu"])
    assert s[0].classes == [0, 1] and s[0].unlabeled is not None


def test_ids_time_order_and_scaling_reach_the_unlabeled_rows(tmp_path):
    df = frame()
    df["sample"] = [f"r{i}" for i in range(20)]
    df["when"] = pd.date_range("2024-01-01", periods=20, freq="D")[::-1].strftime("%Y-%m-%d")  # newest first
    df.to_csv(tmp_path / "log.csv", index=False)
    s = from_files(tmp_path / "log.csv", id_column="sample", time_column="when", normalize="standard")
    e = s[0]
    assert e.unlabeled is not None
    assert e.info["ids"]["unlabeled"] == [f"r{i}" for i in sorted(EMPTY, reverse=True)]  # in time order
    assert len(e.info["ids"]["train"]) == len(e.train) and len(e.info["ids"]["test"]) == len(e.test)
    raw = from_files(tmp_path / "log.csv", id_column="sample", time_column="when")[0]
    assert raw.unlabeled is not None
    both = torch.cat([raw.train.x, raw.unlabeled.x]).double()
    mean, std = both.mean(0), both.std(0, unbiased=False)  # fitted on labelled and unlabeled training rows
    assert torch.allclose(torch.tensor(s.info["normalizer"]["mean"], dtype=torch.float64), mean)
    assert torch.allclose(e.unlabeled.x.double(), (raw.unlabeled.x.double() - mean) / std, atol=1e-5)


def test_fingerprint_is_stable_and_follows_the_unlabeled_rows(tmp_path):
    df = frame(30)
    df.to_csv(tmp_path / "e1.csv", index=False)
    first = fingerprint(from_files(tmp_path))
    assert json.dumps(first) == json.dumps(fingerprint(from_files(tmp_path)))
    (only,) = first["experiences"]
    assert only["unlabeled"] == len(EMPTY) and len(only["unlabeled_sha256"]) == 64
    df.loc[5, "a"] += 1.0  # an unlabeled row edited: only the unlabeled digest moves
    df.to_csv(tmp_path / "e1.csv", index=False)
    (edited,) = fingerprint(from_files(tmp_path))["experiences"]
    assert edited["unlabeled_sha256"] != only["unlabeled_sha256"]
    assert (edited["train_sha256"], edited["test_sha256"]) == (only["train_sha256"], only["test_sha256"])
    df.dropna().to_csv(tmp_path / "e1.csv", index=False)  # fully labelled: no unlabeled entry at all
    (plain,) = fingerprint(from_files(tmp_path))["experiences"]
    assert "unlabeled" not in plain and "unlabeled_sha256" not in plain


def test_held_back_labels_add_to_the_rows_that_came_without(tmp_path):
    frame(40).to_csv(tmp_path / "e1.csv", index=False)
    s = from_files(tmp_path)
    came = len(s[0].unlabeled)
    held = hold_back_labels(s, label_fraction=0.5)
    e = held[0]
    assert e.unlabeled is not None and e.unlabeled_truth is not None
    assert len(e.unlabeled) == came + (len(s[0].train) - len(e.train))
    assert e.unlabeled_truth[-came:].tolist() == [-1] * came  # nothing is known of those
    assert int(e.unlabeled_truth[:-came].min()) >= 0


def config(path) -> dict:
    return {
        "scenario": {"type": "files", "path": str(path)},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 8},
        "seed": 0,
    }


def test_continue_a_run_with_new_files_holding_unlabeled_rows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    frame(24, empty=set()).to_csv(data / "m1.csv", index=False)
    frame(24, seed=1).to_csv(data / "m2.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_config(parse_config(config(data)), tmp_path / "run", progress=False)
        frame(24, seed=2, empty={0, 1, 2}).to_csv(tmp_path / "m3.csv", index=False)
        results = continue_run(tmp_path / "run", [tmp_path / "m3.csv"], progress=False)
    assert len(results.matrix) == 3 and all(len(r) == 3 for r in results.matrix)
    cfg = parse_config(json.loads((tmp_path / "run" / "config.json").read_text()))
    stream = stream_for(cfg)
    assert [e.unlabeled is None for e in stream] == [True, False, False]
    assert rows_of(stream[2].unlabeled) == [0, 1, 2] and stream[2].unlabeled_truth is None
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["stream"]["experiences"][1]["unlabeled"] == len(EMPTY)
