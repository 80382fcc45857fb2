import doctest
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from lifelong.errors import DataError
from lifelong.streams import files
from lifelong.streams.files import from_files

# the frames below keep the row number in column "c" on purpose (to check row order); the warning that it
# looks like an index is tested in test_user_tables.py
pytestmark = pytest.mark.filterwarnings("ignore:feature columns that look like row indices")


def frame(n: int = 20, labels=(0, 1), offset: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.random(n) + offset,
            "b": rng.random(n),
            "c": np.arange(n, dtype=np.int64),
            "label": [labels[i % len(labels)] for i in range(n)],
        }
    )


def write(df: pd.DataFrame, path) -> None:
    suffix = path.name.split(".", 1)[1]
    if suffix in ("csv", "csv.gz"):
        df.to_csv(path, index=False)
    elif suffix in ("parquet", "pq"):
        df.to_parquet(path, index=False)
    elif suffix in ("jsonl", "ndjson"):
        df.to_json(path, orient="records", lines=True)
    elif suffix == "npz":
        np.savez(path, x=df[["a", "b", "c"]].to_numpy(), y=df["label"].to_numpy())
    else:
        raise AssertionError(suffix)


# ----------------------------------------------------------------------------- formats, order, shapes


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl", "ndjson", "npz", "csv.gz", "pq"])
def test_each_format(tmp_path, ext):
    for i in (1, 2, 10):
        write(frame(20, labels=(0, 1, 2), offset=i, seed=i), tmp_path / f"exp{i}.{ext}")
    s = from_files(tmp_path)
    assert [e.domain for e in s] == ["exp1", "exp2", "exp10"]  # natural order
    assert [e.id for e in s] == [0, 1, 2]
    assert s.kind == "classification" and s.num_classes == 3 and s.input_shape == (3,)
    assert s.name == tmp_path.name
    for i, e in zip((1, 2, 10), s, strict=True):
        assert e.train.x.dtype == torch.float32 and e.train.y.dtype == torch.int64
        assert e.train.x.shape[1:] == (3,) and e.train.t is None
        assert len(e.train) == 16 and len(e.test) == 4
        assert e.classes == [0, 1, 2]
        assert float(e.train.x[:, 0].min()) >= i  # the rows came from the file of that experience
    assert s.info["label_names"] == [0, 1, 2]


def test_list_of_paths_keeps_given_order(tmp_path):
    paths = []
    for name in ("b.csv", "a.parquet", "c.npz"):
        write(frame(10, offset=len(paths)), tmp_path / name)
        paths.append(tmp_path / name)
    s = from_files([str(p) for p in paths])
    assert [e.domain for e in s] == ["b", "a", "c"]
    assert s.name == "files"
    assert [int(e.train.x[:, 0].min()) for e in s] == [0, 1, 2]


def test_rows_keep_file_order_and_split_is_partition(tmp_path):
    write(frame(50, labels=(0, 1, 2, 3, 4)), tmp_path / "e1.csv")
    write(frame(50, labels=(0, 1, 2, 3, 4)), tmp_path / "e2.csv")
    e = from_files(tmp_path, test_fraction=0.3)[0]
    rows = torch.cat([e.train.x[:, 2], e.test.x[:, 2]]).long()
    assert sorted(rows.tolist()) == list(range(50))
    assert torch.all(e.train.x[1:, 2] > e.train.x[:-1, 2])  # file order kept
    assert len(e.test) == 15


def test_stratified_split(tmp_path):
    labels = [0] * 40 + [1] * 10 + [2] * 2 + [3]
    df = pd.DataFrame({"f": np.arange(len(labels), dtype=float), "label": labels})
    df.to_csv(tmp_path / "one.csv", index=False)
    df.to_csv(tmp_path / "two.csv", index=False)
    e = from_files(tmp_path, test_fraction=0.2)[0]
    test_counts = torch.bincount(e.test.y, minlength=4).tolist()
    assert sum(test_counts) == round(53 * 0.2)
    assert test_counts[0] == 8 and test_counts[1] == 2
    assert test_counts[3] == 0  # a singleton class stays in train
    assert e.classes == [0, 1, 2, 3]


def test_split_is_deterministic_and_seeded(tmp_path):
    for i in range(2):
        write(frame(40, seed=i), tmp_path / f"e{i}.csv")
    a, b, c = from_files(tmp_path, seed=1), from_files(tmp_path, seed=1), from_files(tmp_path, seed=2)
    for ea, eb in zip(a, b, strict=True):
        assert torch.equal(ea.test.x, eb.test.x) and torch.equal(ea.train.y, eb.train.y)
    assert not all(torch.equal(ea.test.x, ec.test.x) for ea, ec in zip(a, c, strict=True))
    # the split of one file does not depend on which other files are in the stream
    alone = from_files([tmp_path / "e1.csv", tmp_path / "e0.csv"], seed=1)
    assert torch.equal(alone[0].test.x, a[1].test.x)


def test_string_labels_mapped_over_all_files(tmp_path):
    pd.DataFrame({"x": [1.0, 2, 3, 4, 5, 6], "label": ["dog", "cat"] * 3}).to_csv(
        tmp_path / "t1.csv", index=False
    )
    pd.DataFrame({"x": [1.0, 2, 3, 4, 5, 6], "label": ["emu", "ant"] * 3}).to_json(
        tmp_path / "t2.jsonl", orient="records", lines=True
    )
    s = from_files(tmp_path, test_fraction=0.34)
    assert s.info["label_names"] == ["ant", "cat", "dog", "emu"]
    assert s.num_classes == 4
    assert s[0].classes == [1, 2] and s[1].classes == [0, 3]
    # t1 rows are x=1 dog, x=2 cat, ... so each row's label follows from its feature
    for split in (s[0].train, s[0].test):
        assert torch.equal(split.y, torch.where(split.x[:, 0] % 2 == 1, 2, 1))


def test_sparse_int_labels_mapped(tmp_path):
    pd.DataFrame({"x": np.arange(6.0), "label": [3, 10] * 3}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"x": np.arange(6.0), "label": [10, 42] * 3}).to_csv(tmp_path / "b.csv", index=False)
    s = from_files(tmp_path, test_fraction=0.34)
    assert s.info["label_names"] == [3, 10, 42]
    assert s[0].classes == [0, 1] and s[1].classes == [1, 2]
    # dense labels that appear only in some files are kept as they are
    pd.DataFrame({"x": np.arange(6.0), "label": [0, 1] * 3}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"x": np.arange(6.0), "label": [2, 1] * 3}).to_csv(tmp_path / "b.csv", index=False)
    s = from_files(tmp_path, test_fraction=0.34)
    assert s.num_classes == 3 and s[1].classes == [1, 2]


def test_mixed_int_and_string_labels_compare_as_text(tmp_path):
    pd.DataFrame({"x": np.arange(4.0), "label": [1, 2] * 2}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"x": np.arange(4.0), "label": ["b", "a"] * 2}).to_csv(tmp_path / "b.csv", index=False)
    s = from_files(tmp_path, test_fraction=0.5)
    assert s.info["label_names"] == ["1", "2", "a", "b"]


def test_feature_columns_label_column_and_ignored_text(tmp_path):
    for i in range(2):
        df = frame(10, seed=i).rename(columns={"label": "target"})
        df["note"] = "text"
        df.to_parquet(tmp_path / f"p{i}.parquet")
    s = from_files(tmp_path, label_column="target")
    assert s.input_shape == (3,) and s.info["feature_names"] == ["a", "b", "c"]
    assert s.info["ignored_columns"] == ["note"]
    s = from_files(tmp_path, label_column="target", feature_columns=["c", "a"])
    assert s.input_shape == (2,) and s.info["feature_names"] == ["c", "a"]
    e = s[0]
    assert torch.equal(torch.sort(torch.cat([e.train.x[:, 0], e.test.x[:, 0]])).values, torch.arange(10.0))


def test_column_order_may_differ_between_files(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    frame(10)[["label", "c", "b", "a"]].to_csv(tmp_path / "b.csv", index=False)
    s = from_files(tmp_path, test_fraction=0.5, seed=3)
    full = [torch.cat([e.train.x, e.test.x]) for e in s]
    assert torch.allclose(full[0].sum(0), full[1].sum(0))


def test_task_column(tmp_path):
    for i in range(3):
        df = frame(10, seed=i)
        df["task"] = f"t{i}"
        df.to_csv(tmp_path / f"e{i}.csv", index=False)
    s = from_files(tmp_path, task_column="task")
    assert s.input_shape == (3,)  # the task column is not a feature
    assert [e.task for e in s] == [0, 1, 2]
    assert s.info["task_names"] == ["t0", "t1", "t2"]
    assert torch.all(s[2].train.t == 2) and s[2].test.t is not None


def test_train_test_files_in_experience_folders(tmp_path):
    for i, ext in enumerate(["csv", "npz"]):
        d = tmp_path / f"week{i + 1}"
        d.mkdir()
        write(frame(12, labels=(0, 1)), d / f"train.{ext}")
        write(frame(5, labels=(1, 2)), d / f"test.{ext}")
    s = from_files(tmp_path)
    assert [e.domain for e in s] == ["week1", "week2"]
    assert [(len(e.train), len(e.test)) for e in s] == [(12, 5), (12, 5)]
    assert s[0].classes == [0, 1] and s.num_classes == 3
    assert s[1].info["files"] == ["week2/train.npz", "week2/test.npz"]


def test_experience_folder_of_several_files_is_concatenated(tmp_path):
    d = tmp_path / "day1"
    d.mkdir()
    write(frame(10), d / "part2.csv")
    write(frame(10), d / "part10.parquet")
    write(frame(10), tmp_path / "day2.csv")
    s = from_files(tmp_path)
    assert [e.domain for e in s] == ["day1", "day2"]
    assert len(s[0].train) + len(s[0].test) == 20
    assert s[0].info["files"] == ["day1/part2.csv", "day1/part10.parquet"]


def test_hidden_entries_are_skipped(tmp_path):
    write(frame(10), tmp_path / "a.csv")
    write(frame(10), tmp_path / "b.csv")
    (tmp_path / ".DS_Store").write_text("junk")
    (tmp_path / "_SUCCESS").write_text("")
    assert len(from_files(tmp_path)) == 2


def test_forced_format(tmp_path):
    for i in range(2):
        frame(10).to_csv(tmp_path / f"log{i}.txt", index=False)
    s = from_files(tmp_path, format="csv")
    assert [e.domain for e in s] == ["log0", "log1"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"d is a saved Hugging Face data set but format='csv'"):
        from_files(tmp_path, format="csv")


def test_npz_keeps_sample_shape(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(tmp_path / f"img{i}.npz", x=rng.random((10, 2, 4, 4)), y=np.arange(10) % 5)
    s = from_files(tmp_path)
    assert s.input_shape == (2, 4, 4) and s[0].train.x.shape[1:] == (2, 4, 4)


def test_npz_string_labels_and_task_array(tmp_path):
    for i in range(2):
        np.savez(
            tmp_path / f"e{i}.npz",
            x=np.ones((6, 2)),
            y=np.array(["no", "yes"] * 3),
            t=np.full(6, 5 + i),
        )
    s = from_files(tmp_path, task_column="t", test_fraction=0.34)
    assert s.info["label_names"] == ["no", "yes"]
    assert [e.task for e in s] == [5, 6]  # integer task labels are kept as they are


def test_single_file_is_one_experience(tmp_path):
    write(frame(10), tmp_path / "only.csv")
    s = from_files(tmp_path / "only.csv")
    assert len(s) == 1 and s.name == "only"


# ----------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def hf():
    return pytest.importorskip("datasets")


def test_hf_save_to_disk(tmp_path, hf):
    for i in (1, 2, 10):
        hf.Dataset.from_pandas(frame(20, labels=("x", "y"), offset=i)).save_to_disk(
            str(tmp_path / f"month{i}")
        )
    for fmt in (None, "hf"):
        s = from_files(tmp_path, format=fmt)
        assert [e.domain for e in s] == ["month1", "month2", "month10"]
        assert s.input_shape == (3,) and s.info["label_names"] == ["x", "y"]
        assert [(len(e.train), len(e.test)) for e in s] == [(16, 4)] * 3
        assert float(s[2].train.x[:, 0].min()) >= 10


def test_hf_dataset_dict_and_split_folders(tmp_path, hf):
    hf.DatasetDict(
        {
            "train": hf.Dataset.from_pandas(frame(12)),
            "validation": hf.Dataset.from_pandas(frame(3)),
            "test": hf.Dataset.from_pandas(frame(4)),
        }
    ).save_to_disk(str(tmp_path / "e1"))
    (tmp_path / "e2").mkdir()
    hf.Dataset.from_pandas(frame(8)).save_to_disk(str(tmp_path / "e2" / "train"))
    hf.Dataset.from_pandas(frame(3)).save_to_disk(str(tmp_path / "e2" / "test"))
    s = from_files(tmp_path)
    assert [(e.domain, len(e.train), len(e.test)) for e in s] == [("e1", 12, 4), ("e2", 8, 3)]


def test_hf_missing_package(tmp_path, monkeypatch):
    import builtins

    d = tmp_path / "e1"
    d.mkdir()
    (d / "state.json").write_text("{}")
    (tmp_path / "e2.csv").write_text("a,label\n1,0\n2,1\n")
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"e1.*`datasets` package.*pip install"):
        from_files(tmp_path)


# ----------------------------------------------------------------------------- errors


def test_missing_label_column(tmp_path):
    frame(10).rename(columns={"label": "y"}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"a\.csv has no label column 'label'.*\['a', 'b', 'c', 'y'\]"):
        from_files(tmp_path)


def test_missing_task_column(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"a\.csv has no task column 'task'"):
        from_files(tmp_path, task_column="task")


@pytest.mark.parametrize(
    "bad, word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf"), (1e300, "too large")]
)
def test_non_finite_features(tmp_path, bad, word):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    df = frame(10)
    df.loc[7, "b"] = bad
    df.loc[8, "a"] = bad
    df.to_parquet(tmp_path / "b.parquet")
    with pytest.raises(
        DataError, match=rf"b\.parquet: feature value is {word}.* at row 7, column 'b' \(2 bad"
    ):
        from_files(tmp_path)


def test_non_finite_npz(tmp_path):
    x = np.ones((5, 2, 3))
    x[3, 1, 2] = np.nan
    np.savez(tmp_path / "a.npz", x=x, y=np.zeros(5, dtype=int))
    with pytest.raises(DataError, match=r"a\.npz: feature value is NaN at row 3, x\[3, 1, 2\]"):
        from_files(tmp_path)


def test_missing_label_value_is_unlabeled_and_non_integer_label_is_refused(tmp_path):
    df = frame(10).astype({"label": float})
    df.loc[4, "label"] = np.nan
    df.to_csv(tmp_path / "a.csv", index=False)
    e = from_files(tmp_path)[0]  # an empty label: the row is unlabeled data (tests/test_unlabeled_files.py)
    assert e.unlabeled is not None and e.unlabeled.x[:, 2].tolist() == [4.0]
    assert e.unlabeled.y.tolist() == [-1]
    df.loc[4, "label"] = 0.5
    df.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"non-integer value 0\.5 at row 4"):
        from_files(tmp_path)


def test_inconsistent_feature_count(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    frame(10).assign(d=1.0).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(
        DataError, match=r"inconsistent feature count: b\.csv has 4 .* a\.csv has 3.*extra here: \['d'\]"
    ):
        from_files(tmp_path)
    np.savez(tmp_path / "b.npz", x=np.ones((5, 4)), y=np.zeros(5, dtype=int))
    with pytest.raises(
        DataError, match=r"inconsistent feature count: b\.npz has 4 feature columns but a\.csv has 3"
    ):
        from_files([tmp_path / "a.csv", tmp_path / "b.npz"])


def test_non_numeric_feature_columns(tmp_path):
    df = frame(10)
    df["b"] = df["b"].astype(str)
    df.loc[6, "b"] = "oops"
    df["name"] = "n"
    df.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(
        DataError, match=r"a\.csv: feature columns \['b', 'name'\] are not numeric.*'oops' at row 6"
    ):
        from_files(tmp_path, feature_columns=["a", "b", "name"])
    # by default the column is left out in the first file; a later file where it is numeric is flagged
    frame(10).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match=r"b\.csv has 3 numeric feature columns but a\.csv has 2"):
        from_files(tmp_path)


def test_feature_columns_missing(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"a\.csv lacks feature columns \['zz'\]"):
        from_files(tmp_path, feature_columns=["a", "zz"])
    with pytest.raises(DataError, match="feature_columns include 'label', the label column; remove it"):
        from_files(tmp_path, feature_columns=["a", "label"])


def test_no_numeric_features(tmp_path):
    pd.DataFrame({"s": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match=r"a\.csv has no numeric feature columns"):
        from_files(tmp_path)


@pytest.mark.parametrize("name, content", [("e.csv", ""), ("e.csv", "a,b,label\n"), ("e.jsonl", "")])
def test_empty_file(tmp_path, name, content):
    write(frame(10), tmp_path / "d.csv")
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=re.escape(name) + " is empty"):
        from_files(tmp_path)


def test_empty_parquet_and_npz(tmp_path):
    frame(0).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet is empty"):
        from_files(tmp_path)
    np.savez(tmp_path / "b.npz", x=np.zeros((0, 3)), y=np.zeros(0))
    with pytest.raises(DataError, match=r"b\.npz is empty"):
        from_files([tmp_path / "b.npz"])


def test_unsupported_extension(tmp_path):
    write(frame(10), tmp_path / "a.csv")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        DataError, match=r"notes\.txt: unsupported file type; supported: \.csv, \.parquet.*\.npz"
    ):
        from_files(tmp_path)
    with pytest.raises(DataError, match=r"format 'xlsx' is not supported; use one of csv, parquet"):
        from_files(tmp_path, format="xlsx")


def test_folder_without_usable_files(tmp_path):
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(DataError, match=r"has no usable files; supported"):
        from_files(tmp_path)
    sub = tmp_path / "exp1"
    sub.mkdir()
    with pytest.raises(DataError, match=r"folder exp1 has no usable files"):
        from_files(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        from_files(tmp_path / "nope")
    with pytest.raises(DataError, match="list of paths is empty"):
        from_files([])


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.ones((4, 2)), y=np.zeros(4))
    with pytest.raises(
        DataError, match=r"a\.npz lacks arrays \['x'\]; NPZ files must hold 'x'.*and 'y'.*\['features', 'y'\]"
    ):
        from_files(tmp_path)
    np.savez(tmp_path / "a.npz", x=np.ones((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match=r"'y' has shape \(3,\) but 'x' has 4 rows"):
        from_files(tmp_path)


def test_npz_refuses_pickles(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.array([[1, None]], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match=r"could not read a\.npz as NPZ"):
        from_files(tmp_path)


def test_train_without_test_file(tmp_path):
    d = tmp_path / "e1"
    d.mkdir()
    write(frame(10), d / "train.csv")
    with pytest.raises(DataError, match=r"folder e1 has a train file but no test file"):
        from_files(tmp_path)
    write(frame(10), d / "test.csv")
    write(frame(10), d / "extra.csv")
    with pytest.raises(DataError, match=r"holds train/test files and also \['e1/extra\.csv'\]"):
        from_files(tmp_path)


def test_too_few_rows_to_split(tmp_path):
    pd.DataFrame({"a": [1.0], "label": [0]}).to_csv(tmp_path / "tiny.csv", index=False)
    with pytest.raises(DataError, match=r"'tiny' has 1 row; it needs at least 2"):
        from_files(tmp_path)


def test_bad_test_fraction(tmp_path):
    with pytest.raises(DataError, match="test_fraction"):
        from_files(tmp_path, test_fraction=1.0)


def test_unreadable_csv(tmp_path):
    (tmp_path / "a.csv").write_text('a,label\n"1,0\n')
    with pytest.raises(DataError, match=r"could not read a\.csv as CSV"):
        from_files(tmp_path)


def test_hf_dict_without_train_test(tmp_path):
    d = tmp_path / "e1"
    d.mkdir()
    (d / "dataset_dict.json").write_text(json.dumps({"splits": ["a", "b"]}))
    with pytest.raises(DataError, match=r"DatasetDict with splits \['a', 'b'\]"):
        from_files(tmp_path)


def test_docstring_examples():
    assert doctest.testmod(files).failed == 0
