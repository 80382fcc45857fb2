"""User tables say what was done with every column, and labels are checked when a stream is built:
column roles (features, excluded, ids, time), splitting one table by time, feature scaling, image layout
of NPZ arrays, fixed class names, and the label checks of Split and Stream."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lifelong.config import parse_config
from lifelong.errors import ConfigError, DataError
from lifelong.experiment import build_stream, run_config
from lifelong.learner import Learner
from lifelong.models import MLP
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.files import from_files


def caught(fn, *args, **kwargs):
    """fn's result and the messages of the UserWarnings it emitted."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in got if issubclass(w.category, UserWarning)]


def about(messages: list[str], phrase: str) -> list[str]:
    return [m for m in messages if phrase in m]


def messy(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """A table as exported from a spreadsheet: dates, categories, decimal commas, an id, a row number."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "city": rng.choice(["Oslo", "Lyon", "Graz"], n),
            "price": [f"{v:.1f}".replace(".", ",") for v in rng.random(n) * 10],
            "a": rng.random(n),
            "b": rng.random(n),
            "label": np.arange(n) % 3,
        }
    )


# --- what was done with each column ----------------------------------------------------------------------


def test_ignored_columns_are_named_with_their_reason(tmp_path):
    for i in range(2):
        messy(seed=i).to_csv(tmp_path / f"day{i}.csv")  # index=True writes the `Unnamed: 0` column
    s, said = caught(from_files, tmp_path)
    cols = s.info["columns"]
    assert cols["features"] == ["Unnamed: 0", "a", "b"] and s.input_shape == (3,)
    assert cols["ignored"]["when"] == "not numeric (dates)"
    assert cols["ignored"]["city"] == "not numeric (text/categories)"
    assert cols["ignored"]["price"].startswith("not numeric (decimal comma: '")
    assert set(cols["ignored"]) == {"when", "city", "price"}
    assert cols["label"] == "label" and cols["id"] is None and cols["task"] is None and cols["time"] is None
    assert s.info["ignored_columns"] == ["city", "price", "when"]  # the older key still works

    ignored = about(said, "columns not used as features")
    assert len(ignored) == 1  # one summary for the whole stream, not one per file
    for phrase in ("'when' (not numeric (dates))", "'city' (not numeric (text/categories))", "decimal comma"):
        assert phrase in ignored[0]
    assert "exclude_columns" in ignored[0] and "feature_columns" in ignored[0]
    index = about(said, "look like row indices or ids")
    assert len(index) == 1 and "'Unnamed: 0'" in index[0]
    assert "id_column" in index[0] and "exclude_columns" in index[0]


def test_row_number_and_id_named_columns_are_flagged(tmp_path):
    df = messy()[["a", "label"]].assign(
        row=np.arange(30), user_id=np.random.default_rng(1).integers(0, 9, 30)
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    s, said = caught(from_files, tmp_path / "t.csv")
    (index,) = about(said, "look like row indices or ids")
    assert "'row' (equals the row number 0..29)" in index and "'user_id' (named like an index or id)" in index
    assert not about(said, "columns not used as features")  # every column was numeric
    # chosen explicitly: the user said which columns are features, so nothing is flagged
    _, said = caught(from_files, tmp_path / "t.csv", feature_columns=["a", "row"])
    assert not about(said, "look like row indices")


def test_exclude_columns_and_id_column(tmp_path):
    df = messy()
    df["sample"] = [f"s{i:03d}" for i in range(30)]
    df["a"] = np.arange(30) * 0.5  # the id can be read back from the features
    df.to_csv(tmp_path / "t.csv", index=False)
    s, said = caught(
        from_files, tmp_path / "t.csv", exclude_columns=["when", "city", "price"], id_column="sample"
    )
    cols = s.info["columns"]
    assert cols["features"] == ["a", "b"] and cols["id"] == "sample"
    assert cols["ignored"] == {
        "sample": "id column",
        "when": "excluded",
        "city": "excluded",
        "price": "excluded",
    }
    assert not about(said, "columns not used as features")  # excluded on purpose: no warning
    e = s[0]
    ids = e.info["ids"]
    assert len(ids["train"]) == len(e.train) and len(ids["test"]) == len(e.test)
    assert sorted(ids["train"] + ids["test"]) == sorted(df["sample"])
    for split, names in ((e.train, ids["train"]), (e.test, ids["test"])):
        assert [f"s{int(v * 2):03d}" for v in split.x[:, 0].tolist()] == names  # same row order


def test_column_roles_that_clash_are_refused(tmp_path):
    messy().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="exclude_columns include 'label', the label column"):
        from_files(tmp_path / "t.csv", exclude_columns=["label"])
    with pytest.raises(DataError, match="id_column and time_column are both 'when'"):
        from_files(tmp_path / "t.csv", id_column="when", time_column="when")
    with pytest.raises(DataError, match=r"exclude_columns must be a list of column names; .* \['a'\]"):
        from_files(tmp_path / "t.csv", exclude_columns="a")
    with pytest.raises(DataError, match="has no id column 'nope'"):
        from_files(tmp_path / "t.csv", id_column="nope")


# --- time ------------------------------------------------------------------------------------------------


def dated(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """Rows over January to March 2024, shuffled; `a` is the day of the year (the time, as a feature)."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2024-01-01", periods=n, freq="D")
    df = pd.DataFrame(
        {"when": days.strftime("%Y-%m-%d"), "a": np.arange(n, dtype=float), "label": np.arange(n) % 3}
    )
    return df.iloc[rng.permutation(n)].reset_index(drop=True)


def test_split_by_month(tmp_path):
    dated().to_csv(tmp_path / "log.csv", index=False)
    s = from_files(tmp_path / "log.csv", time_column="when", split_by="month")
    assert [e.domain for e in s] == ["2024-01", "2024-02", "2024-03"]
    months = {0: range(0, 31), 1: range(31, 60), 2: range(60, 90)}  # 2024 is a leap year
    for i, e in enumerate(s):
        for split in (e.train, e.test):
            days = split.x[:, 0].long().tolist()
            assert days == sorted(days)  # rows in time order
            assert set(days) <= set(months[i])
        assert len(e.train) + len(e.test) == len(months[i])
    assert s[1].info["period"] == ["2024-02-01T00:00:00", "2024-02-29T00:00:00"]
    assert s.info["columns"]["time"] == "when" and "when" not in s.info["columns"]["ignored"]


def test_split_by_a_number_of_chunks(tmp_path):
    dated().to_csv(tmp_path / "log.csv", index=False)
    s = from_files(tmp_path / "log.csv", time_column="when", split_by=4)
    sizes = [len(e.train) + len(e.test) for e in s]
    assert sizes == [23, 23, 22, 22]
    seen = [torch.cat([e.train.x[:, 0], e.test.x[:, 0]]).long().sort().values for e in s]
    assert torch.equal(torch.cat(seen), torch.arange(90))  # consecutive, in time order
    assert s[0].domain == "2024-01-01..2024-01-23"


@pytest.mark.parametrize(
    ("split_by", "names"),
    [("year", ["2024"]), ("quarter", ["2024Q1"]), ("week", ["2024-W01", "2024-W02"])],
)
def test_period_names(tmp_path, split_by, names):
    dated(14).to_csv(tmp_path / "log.csv", index=False)
    s, _ = caught(from_files, tmp_path / "log.csv", time_column="when", split_by=split_by, test_fraction=0.5)
    assert [e.domain for e in s] == names


def test_split_by_day_needs_two_rows_a_day(tmp_path):
    twice = pd.concat([dated(3), dated(3, seed=1)])
    twice.to_csv(tmp_path / "log.csv", index=False)
    s, _ = caught(from_files, tmp_path / "log.csv", time_column="when", split_by="day", test_fraction=0.5)
    assert [e.domain for e in s] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    dated(3).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match=r"'2024-01-01' has 1 row; .* \(use a coarser split_by\)"):
        from_files(tmp_path / "log.csv", time_column="when", split_by="day")


def test_time_column_orders_rows_of_each_file(tmp_path):
    dated(30).to_csv(tmp_path / "jan.csv", index=False)
    e = from_files(tmp_path, time_column="when")[0]
    for split in (e.train, e.test):
        assert torch.all(split.x[1:, 0] > split.x[:-1, 0])


def test_bad_time_input(tmp_path):
    df = dated(30).assign(b=1.0)
    df.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match="split_by needs time_column"):
        from_files(tmp_path / "log.csv", split_by="month")
    with pytest.raises(DataError, match="split_by 'fortnight' is unknown"):
        from_files(tmp_path / "log.csv", time_column="when", split_by="fortnight")
    with pytest.raises(DataError, match="needs dates, but the time column holds numbers"):
        from_files(tmp_path / "log.csv", time_column="a", split_by="month")
    df.loc[4, "when"] = "soon"
    df.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match=r"time column 'when' has 'soon' at row 4, which is not a date"):
        from_files(tmp_path / "log.csv", time_column="when", split_by="month")


# --- feature scaling -------------------------------------------------------------------------------------


def test_normalize_standard_fits_on_the_first_training_split(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        n = 50
        pd.DataFrame(
            {
                "a": rng.normal(100 + 10 * i, 5, n),
                "b": rng.normal(-3, 0.1, n),
                "k": 7.0,
                "label": np.arange(n) % 2,
            }
        ).to_csv(tmp_path / f"e{i}.csv", index=False)
    raw = from_files(tmp_path)
    s = from_files(tmp_path, normalize="standard")
    x0 = s[0].train.x
    assert torch.allclose(x0[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x0[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.equal(x0[:, 2], torch.zeros(len(x0)))  # a constant feature: std 0 taken as 1
    stats = s.info["normalizer"]
    assert isinstance(stats["mean"][0], float) and stats["std"][2] == 1.0
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    for e_raw, e in zip(raw, s, strict=True):  # every split scaled with the first training split's stats
        for a, b in ((e_raw.train, e.train), (e_raw.test, e.test)):
            assert torch.allclose(b.x, (a.x - mean) / std, atol=1e-4)
    assert float(s[1].train.x[:, 0].mean()) > 1.0  # the later, shifted experience stays shifted
    assert "normalizer" not in raw.info


def test_given_normalizer_is_applied_instead_of_fitting(tmp_path):
    pd.DataFrame({"a": [1.0, 2, 3, 4, 5, 6], "b": 3.0, "label": [0, 1] * 3}).to_csv(
        tmp_path / "t.csv", index=False
    )
    given = {"mean": [1.0, 1.0], "std": [2.0, 4.0]}
    s = from_files(tmp_path / "t.csv", normalizer=given)
    e = s[0]
    assert torch.allclose(torch.cat([e.train.x, e.test.x])[:, 1], torch.full((6,), 0.5))
    assert sorted(torch.cat([e.train.x, e.test.x])[:, 0].tolist()) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert s.info["normalizer"] == given
    with pytest.raises(DataError, match=r"normalizer\['mean'\] has 3 values but the data has 2 features"):
        from_files(tmp_path / "t.csv", normalizer={"mean": [0, 0, 0], "std": [1, 1]})
    with pytest.raises(DataError, match="normalize 'minmax' is unknown; use one of none, standard"):
        from_files(tmp_path / "t.csv", normalize="minmax")


# --- image layout ----------------------------------------------------------------------------------------


def images(folder, shape, n: int = 12) -> np.ndarray:
    """Two NPZ files of n random images of `shape`; returns the first file's array."""
    rng = np.random.default_rng(0)
    arrays = [rng.random((n, *shape)).astype(np.float32) for _ in range(2)]
    for i, x in enumerate(arrays):
        np.savez(folder / f"e{i}.npz", x=x, y=np.arange(n) % 2)
    return arrays[0]


def test_channels_last_npz_is_detected_and_transposed(tmp_path):
    x = images(tmp_path, (8, 8, 3))
    s, said = caught(from_files, tmp_path, test_fraction=0.25)
    assert s.input_shape == (3, 8, 8) and s.info["layout"] == "channels_last"
    (layout,) = about(said, "channels-last")
    assert "(12, 8, 8, 3)" in layout and "layout='channels_last'" in layout
    e = s[0]
    pixels = {tuple(np.round(x[r, 2, 5], 6)) for r in range(len(x))}
    assert {tuple(np.round(v, 6)) for v in e.train.x[:, :, 2, 5].numpy()} <= pixels  # [C] at (h=2, w=5)

    s, said = caught(from_files, tmp_path, layout="channels_last", test_fraction=0.25)
    assert s.input_shape == (3, 8, 8) and not about(said, "channels-last")
    s, said = caught(from_files, tmp_path, layout="channels_first", test_fraction=0.25)
    assert s.input_shape == (8, 8, 3) and not about(said, "channels-last")


def test_grey_images_get_a_channel_axis(tmp_path):
    images(tmp_path, (8, 8))
    s, said = caught(from_files, tmp_path, test_fraction=0.25)
    assert s.input_shape == (1, 8, 8) and not about(said, "channels-last")
    with pytest.raises(DataError, match="layout 'pixels' is unknown"):
        from_files(tmp_path, layout="pixels")


# --- fixed class names (extending a run) -----------------------------------------------------------------


def test_label_names_fix_the_class_order(tmp_path):
    pd.DataFrame({"a": range(8), "label": ["cat", "dog"] * 4}).to_csv(tmp_path / "t.csv", index=False)
    s = from_files(tmp_path / "t.csv", label_names=["dog", "emu", "cat"], test_fraction=0.5)
    assert s.num_classes == 3 and s.info["label_names"] == ["dog", "emu", "cat"]
    e = s[0]
    x, y = torch.cat([e.train.x, e.test.x])[:, 0], torch.cat([e.train.y, e.test.y])
    assert torch.equal(y, torch.where(x.long() % 2 == 0, 2, 0))  # cat -> 2, dog -> 0
    with pytest.raises(DataError) as err:
        from_files(tmp_path / "t.csv", label_names=["dog", "emu"])
    assert "labels ['cat']" in str(err.value)
    assert "the run's model has outputs for ['dog', 'emu']; new classes need a new run" in str(err.value)


def test_label_names_compare_int_labels_as_text_when_names_are_text(tmp_path):
    pd.DataFrame({"a": range(6), "label": [3, 7] * 3}).to_csv(tmp_path / "t.csv", index=False)
    s = from_files(tmp_path / "t.csv", label_names=["7", "3"], test_fraction=0.5)
    e = s[0]
    assert torch.equal(torch.cat([e.train.y, e.test.y]).sort().values, torch.tensor([0, 0, 0, 1, 1, 1]))
    s = from_files(tmp_path / "t.csv", label_names=[0, 3, 7], test_fraction=0.5)
    assert s.num_classes == 3 and sorted(s[0].classes) == [1, 2]


# --- labels ----------------------------------------------------------------------------------------------


def test_negative_labels_in_files_are_refused(tmp_path):
    pd.DataFrame({"a": range(6), "label": [0, 1, -1, 0, 1, 0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError) as err:
        from_files(tmp_path / "t.csv")
    msg = str(err.value)
    assert "t.csv: label column 'label' has 1 negative labels (e.g. -1 at row 2)" in msg
    assert "-1 often marks unlabeled rows: drop them" in msg


def test_negative_labels_in_a_python_stream_are_refused_before_training(tmp_path):
    split = Split(torch.rand(6, 3), torch.tensor([0, 1, -1, 0, 1, -1]))
    s, _ = caught(Stream, "neg", [Experience(0, split, split)], "classification", 2, (3,))
    with pytest.raises(DataError) as err:
        Learner(MLP((3,), 2, hidden=[4]), progress=False).run(s)
    assert "has label -1" in str(err.value) and "4 rows have negative labels; -1 often marks" in str(
        err.value
    )


def test_numpy_and_narrow_integer_splits_are_converted():
    split = Split(np.random.default_rng(0).random((6, 3)), np.array([0, 1, 2, 0, 1, 2], dtype=np.int32))
    assert isinstance(split.x, torch.Tensor) and split.x.dtype == torch.float32
    assert split.y.dtype == torch.int64
    narrow = Split(
        torch.rand(6, 3), torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.uint8), np.zeros(6, np.int16)
    )
    assert narrow.y.dtype == torch.int64 and narrow.t is not None and narrow.t.dtype == torch.int64
    s, _ = caught(Stream, "np", [Experience(0, split, narrow)], "classification", 3, (3,))
    assert s[0].train.y.tolist() == [0, 1, 2, 0, 1, 2]
    tokens = Split(torch.randint(0, 9, (4, 5)), torch.randint(0, 9, (4, 5)))  # language modelling: unchanged
    assert tokens.x.dtype == torch.int64 and tokens.y.dtype == torch.int64


def test_object_and_text_arrays_are_refused():
    with pytest.raises(DataError, match="Split x is a numpy array of dtype object; features must be numbers"):
        Split(np.array([[1, "a"], [2, "b"]], dtype=object), np.array([0, 1]))
    with pytest.raises(DataError, match="Split y is a numpy array of dtype <U3; labels must be numbers"):
        Split(np.zeros((2, 3)), np.array(["cat", "dog"]))
    with pytest.raises(DataError, match="Split x is a list; give a torch.Tensor or a numpy array"):
        Split([[1.0, 2.0]], torch.tensor([0]))  # type: ignore[arg-type]


def test_float_labels_are_refused_for_classification():
    split = Split(torch.rand(4, 3), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(DataError) as err:
        Stream("f", [Experience(0, split, split)], "classification", 2, (3,))
    msg = str(err.value)
    assert "experience 1 (train split) of stream 'f' has labels of dtype torch.float32" in msg
    assert "integer class labels 0..K-1" in msg


def test_test_only_and_rare_classes_are_warned():
    g = torch.Generator().manual_seed(0)
    train = Split(torch.rand(23, 2, generator=g), torch.tensor([0] * 10 + [1] * 10 + [2] * 3))
    test = Split(torch.rand(6, 2, generator=g), torch.tensor([0, 1, 2, 3, 3, 4]))
    _, said = caught(
        Stream, "s", [Experience(0, train, test, domain="jan")], "classification", 5, (2,), info={}
    )
    (only,) = about(said, "appear only in test data")
    assert "3 in experience 1 (jan); 4 in experience 1 (jan)" in only
    (rare,) = about(said, "fewer than 5 training samples")
    assert "(2: 3)" in rare
    # named by the files' labels
    names = {"label_names": ["ant", "bee", "cat", "dog", "emu"]}
    _, said = caught(Stream, "s", [Experience(0, train, test)], "classification", 5, (2,), info=names)
    assert "3 ('dog') in experience 1" in about(said, "only in test")[0]
    assert "(2 ('cat'): 3)" in about(said, "fewer than 5")[0]
    # enough of every class: silent
    balanced = Split(torch.rand(10, 2, generator=g), torch.arange(10) % 2)
    _, said = caught(Stream, "ok", [Experience(0, balanced, balanced)], "classification", 2, (2,))
    assert not said


def test_test_only_class_in_files(tmp_path):
    (tmp_path / "week1").mkdir()
    pd.DataFrame({"a": range(10), "label": [0, 1] * 5}).to_csv(tmp_path / "week1" / "train.csv", index=False)
    pd.DataFrame({"a": range(4), "label": [0, 1, 2, 2]}).to_csv(tmp_path / "week1" / "test.csv", index=False)
    _, said = caught(from_files, tmp_path)
    assert "2 in experience 1 (week1)" in about(said, "appear only in test data")[0]


# --- the YAML scenario section -----------------------------------------------------------------------------


def test_yaml_keys_reach_from_files(tmp_path):
    df = dated()
    df["sample"] = [f"r{i}" for i in range(len(df))]
    df["note"] = "x"
    df.to_csv(tmp_path / "log.csv", index=False)
    raw = yaml.safe_load(
        f"""
        scenario:
          type: files
          path: {tmp_path / "log.csv"}
          exclude_columns: [note]
          id_column: sample
          time_column: when
          split_by: month
          normalize: standard
          layout: channels_last
        model: {{name: mlp, hidden: [4]}}
        """
    )
    cfg = parse_config(raw)
    assert cfg.scenario.split_by == "month" and cfg.scenario.exclude_columns == ["note"]
    s, said = caught(build_stream, cfg)
    assert [e.domain for e in s] == ["2024-01", "2024-02", "2024-03"]
    assert s.info["columns"]["ignored"] == {"sample": "id column", "note": "excluded"}
    assert "ids" in s[0].info and "normalizer" in s.info
    assert not about(said, "columns not used as features")
    cfg = parse_config({**raw, "scenario": {**raw["scenario"], "split_by": 3, "feature_columns": ["a"]}})
    s, _ = caught(build_stream, cfg)
    assert len(s) == 3 and s.info["columns"]["features"] == ["a"]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"type": "class_incremental", "id_column": "x"}, "`id_column` is only for scenario type 'files'"),
        ({"type": "permuted", "normalize": "standard"}, "`normalize` is only for scenario type 'files'"),
        ({"type": "files", "path": "p", "split_by": "month"}, "`split_by` needs `time_column`"),
        (
            {"type": "files", "path": "p", "split_by": "hour", "time_column": "t"},
            "`scenario.split_by`: 'hour' is not allowed; use one of year, quarter, month, week, day or a",
        ),
        ({"type": "files", "path": "p", "split_by": 0, "time_column": "t"}, "`scenario.split_by`: 0 is not"),
        ({"type": "files", "path": "p", "layout": "nhwc"}, "`scenario.layout`: 'nhwc' is not allowed"),
    ],
)
def test_yaml_keys_are_checked(scenario, message):
    raw = {"scenario": scenario, "model": {"name": "mlp"}}
    if scenario["type"] != "files":
        raw["data"] = {"name": "digits"}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_cnn_runs_on_npz_images_from_a_yaml_config(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        np.savez(
            data / f"e{i}.npz", x=rng.random((20, 8, 8, 1)).astype(np.float32), y=np.arange(20) % 2 + 2 * i
        )
    raw = {
        "scenario": {"type": "files", "path": str(data), "layout": "channels_last", "test_fraction": 0.25},
        "model": {"name": "cnn", "channels": [4], "hidden": 8},
        "train": {"epochs": 1, "batch_size": 8},
    }
    results = run_config(parse_config(raw), out=tmp_path / "run", progress=False)
    assert len(results.matrix) == 2 and all(len(row) == 2 for row in results.matrix)
    # tables are not images: the model's own check refuses cnn once the shape is known
    pd.DataFrame({"a": range(10), "b": range(10), "label": [0, 1] * 5}).to_csv(
        tmp_path / "t.csv", index=False
    )
    raw["scenario"] = {"type": "files", "path": str(tmp_path / "t.csv")}
    with pytest.raises(ConfigError, match=r"model 'cnn' needs image input shaped \[C, H, W\]"):
        run_config(parse_config(raw), out=tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()
