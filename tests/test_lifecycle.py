"""A run's life as a user meets it: fingerprints on resume, continuing a finished run with new data, loading
it for predictions, and directories a failed command leaves behind that the corrected command can use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import lifelong
from lifelong import datasets
from lifelong.config import load_config, parse_config
from lifelong.errors import ConfigError, DataError, StateError, TrainingDivergedError
from lifelong.experiment import continue_run, resume, run_config
from lifelong.inference import load, predict_file
from lifelong.learner import Learner
from lifelong.methods import NCM, Replay
from lifelong.models import MLP
from lifelong.streams import class_incremental
from lifelong.streams.experience import Stream

ROOT = Path(__file__).resolve().parents[1]
LIFELONG = str(Path(sys.executable).with_name("lifelong"))
CENTRES = {"cat": 0.0, "dog": 2.5, "emu": 5.0, "yak": 1.0}


def table(n: int, classes: list[str], seed: int, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = [classes[i % len(classes)] for i in range(n)]
    x = rng.normal(size=(n, 4)) + np.array([CENTRES[c] for c in y])[:, None]
    df = pd.DataFrame(x * scale, columns=list("abcd"))
    df["label"] = y
    return df


@pytest.fixture
def months(tmp_path: Path) -> Path:
    """A folder of three monthly CSV files, and a fourth month in `new/` (all with known classes)."""
    data = tmp_path / "data"
    data.mkdir()
    table(120, ["cat", "dog"], 1).to_csv(data / "m1.csv", index=False)
    table(120, ["dog", "emu"], 2).to_csv(data / "m2.csv", index=False)
    table(120, ["cat", "emu"], 3).to_csv(data / "m3.csv", index=False)
    (tmp_path / "new").mkdir()
    table(120, ["cat", "dog", "emu"], 4).to_csv(tmp_path / "new" / "m4.csv", index=False)
    return tmp_path


def files_config(path: Path, **train) -> dict:
    return {
        "scenario": {"type": "files", "path": str(path)},
        "model": {"name": "mlp", "hidden": [16]},
        "method": {"name": "replay", "memory": 40},
        "train": {"epochs": 2, "lr": 0.05, "batch_size": 16, **train},
        "seed": 0,
    }


def stop_after_first_checkpoint(cfg, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `cfg` into `out` and stop it as a Ctrl-C would, right after its first checkpoint."""
    original = Learner._checkpoint

    def checkpoint_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Learner, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_config(cfg, out, progress=False)
    monkeypatch.undo()


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = json.loads((run_dir / "checkpoints" / "LATEST.json").read_text())
    return load_file(run_dir / "checkpoints" / latest["checkpoint"] / "model.safetensors")


# --- data fingerprints ---------------------------------------------------------------------------------


def test_resume_refuses_a_stream_whose_file_was_deleted(months, monkeypatch):
    cfg = parse_config(files_config(months / "data"))
    stop_after_first_checkpoint(cfg, months / "run", monkeypatch)
    (months / "data" / "m3.csv").unlink()
    with pytest.raises(StateError, match=r"had 3 experiences and now has 2: 'm3' is missing"):
        resume(months / "run", progress=False)
    assert not (months / "run" / "results.json").exists()
    # the data restored: the same directory resumes and finishes
    table(120, ["cat", "emu"], 3).to_csv(months / "data" / "m3.csv", index=False)
    results = resume(months / "run", progress=False)
    assert len(results.matrix) == 3


def test_resume_refuses_changed_content_naming_the_experience(months, monkeypatch):
    cfg = parse_config(files_config(months / "data"))
    stop_after_first_checkpoint(cfg, months / "run", monkeypatch)
    edited = table(120, ["dog", "emu"], 2)
    edited.loc[5, "a"] += 1.0
    edited.to_csv(months / "data" / "m2.csv", index=False)
    with pytest.raises(StateError, match=r"(train|test) data of experience 2 \('m2'\) changed"):
        resume(months / "run", progress=False)
    run_info = json.loads((months / "run" / "run.json").read_text())
    assert [e["name"] for e in run_info["stream"]["experiences"]] == ["m1", "m2", "m3"]


# --- continue a finished run ----------------------------------------------------------------------------


def test_continue_trains_the_new_month_from_the_final_state_and_equals_one_unbroken_run(months):
    first = run_config(parse_config(files_config(months / "data")), months / "run", progress=False)
    rows = [list(r) for r in first.matrix]
    results = continue_run(months / "run", [months / "new" / "m4.csv"], progress=False)
    assert len(results.matrix) == 4 and all(len(r) == 4 for r in results.matrix)
    for old, new in zip(rows, results.matrix[:3], strict=True):
        assert new[:3] == old  # every earlier row kept
    assert [r[3] for r in results.matrix[:2]] == [None, None]  # those models are gone
    assert results.matrix[2][3] is not None  # the model before the new month, measured on it
    assert results.initial[3] is None
    cfg = json.loads((months / "run" / "config.json").read_text())
    assert cfg["continued"] == [str((months / "new" / "m4.csv").resolve())]
    assert (months / "run" / "report.html").exists()

    # the same four months in one run: bit-identical weights (same data order, memory, RNG)
    together = months / "together"
    together.mkdir()
    for f in ["data/m1.csv", "data/m2.csv", "data/m3.csv", "new/m4.csv"]:
        (together / Path(f).name).write_bytes((months / f).read_bytes())
    unbroken = run_config(parse_config(files_config(together)), months / "unbroken", progress=False)
    assert unbroken.matrix[-1] == results.matrix[-1]
    a, b = final_weights(months / "run"), final_weights(months / "unbroken")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # resume of a continued run finds it finished; a further month continues again
    assert resume(months / "run", progress=False).matrix == results.matrix


def test_continue_refuses_new_classes_and_unfinished_or_python_runs(months, tmp_path, monkeypatch):
    run_config(parse_config(files_config(months / "data")), months / "run", progress=False)
    table(60, ["cat", "yak"], 9).to_csv(tmp_path / "yak.csv", index=False)
    with pytest.raises(DataError, match="yak"):
        continue_run(months / "run", [tmp_path / "yak.csv"], progress=False)
    with pytest.raises(DataError, match="does not exist"):
        continue_run(months / "run", [tmp_path / "nothing.csv"], progress=False)
    assert (months / "run" / "results.json").exists()  # nothing lost by the refused commands

    stop_after_first_checkpoint(parse_config(files_config(months / "data")), months / "half", monkeypatch)
    with pytest.raises(StateError, match="has not finished"):
        continue_run(months / "half", [months / "new" / "m4.csv"], progress=False)


def digits_stream(experiences: int = 4) -> Stream:
    return class_incremental(datasets.load("digits"), experiences=experiences, seed=0)


def test_python_extend_equals_one_unbroken_run(tmp_path):
    stream = digits_stream()
    first_half = Stream(
        stream.name, stream.experiences[:2], stream.kind, stream.num_classes, stream.input_shape
    )

    def learner(run_dir: Path) -> Learner:
        lifelong.seed(0)
        model = MLP(stream.input_shape, stream.num_classes, hidden=[32])
        return Learner(model, [Replay(memory=60)], epochs=1, lr=0.05, run_dir=run_dir, progress=False)

    learner(tmp_path / "grown").run(first_half)
    grown = learner(tmp_path / "grown").run(stream, extend=True)
    unbroken = learner(tmp_path / "unbroken").run(stream)
    assert grown.matrix[-1] == unbroken.matrix[-1]
    assert grown.matrix[0][2:] == [None, None] and grown.matrix[1][2:] == unbroken.matrix[1][2:]
    a, b = final_weights(tmp_path / "grown"), final_weights(tmp_path / "unbroken")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(StateError, match="no new experience"):
        learner(tmp_path / "grown").run(stream, extend=True)
    # a stream whose recorded part changed cannot extend the run
    shuffled = Stream(
        stream.name,
        [stream[1], stream[0], *stream.experiences[2:]],
        stream.kind,
        stream.num_classes,
        stream.input_shape,
    )
    with pytest.raises(StateError, match="experience 1"):
        learner(tmp_path / "grown").run(shuffled, extend=True)


# --- load and predict ---------------------------------------------------------------------------------


def test_load_and_predict_a_files_run(months):
    results = run_config(parse_config(files_config(months / "data")), months / "run", progress=False)
    saved = json.loads((months / "run" / "results.json").read_text())
    assert saved["label_names"] == ["cat", "dog", "emu"]
    assert len(saved["per_class_accuracy"]) == 3 and len(saved["confusion"][-1]) == 3
    trained = lifelong.load(months / "run")
    assert trained.label_names == ["cat", "dog", "emu"]
    query = table(30, ["cat", "dog", "emu"], 7)
    query.drop(columns="label").to_csv(months / "query.csv", index=False)
    out = predict_file(months / "run", months / "query.csv", months / "out" / "pred.csv")
    pred = pd.read_csv(out)
    assert list(pred.columns[:3]) == ["id", "prediction", "confidence"]
    assert set(pred.columns[3:]) == {"p_cat", "p_dog", "p_emu"}
    assert len(pred) == 30
    x = query[list("abcd")].to_numpy(dtype=np.float32)
    assert pred["prediction"].tolist() == trained.predict_labels(x)
    np.testing.assert_allclose(pred[["p_cat", "p_dog", "p_emu"]].sum(axis=1), 1.0, rtol=1e-5)
    # far better than chance on well-separated classes
    assert (pred["prediction"] == query["label"]).mean() > 0.6
    assert results.matrix[-1]
    # JSONL and Parquet outputs; an NPZ input
    np.savez(months / "query.npz", x=x)
    jsonl = predict_file(months / "run", months / "query.npz", months / "pred.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["prediction"] for r in rows] == pred["prediction"].tolist()
    parquet = predict_file(months / "run", months / "query.csv", months / "pred.parquet")
    assert pd.read_parquet(parquet)["prediction"].tolist() == pred["prediction"].tolist()
    with pytest.raises(DataError, match=r"lacks the feature columns \['d'\]"):
        query.drop(columns=["label", "d"]).to_csv(months / "bad.csv", index=False)
        predict_file(months / "run", months / "bad.csv", months / "pred.csv")


def test_load_applies_a_methods_prediction_rule(tmp_path):
    """NCM decides the predictions by nearest class mean: the loaded model reproduces the run's accuracy."""
    cfg = parse_config(
        {
            "data": {"name": "digits"},
            "scenario": {"type": "class_incremental", "experiences": 3},
            "model": {"name": "mlp", "hidden": [32]},
            "method": {"name": "ncm"},
            "train": {"epochs": 1, "lr": 0.05},
        }
    )
    results = run_config(cfg, tmp_path / "ncm", progress=False)
    trained = load(tmp_path / "ncm")
    assert isinstance(trained.methods[0], NCM)
    stream = digits_stream(3)
    for j, e in enumerate(stream):
        accuracy = float((trained.predict(e.test.x) == e.test.y).double().mean())
        assert accuracy == pytest.approx(results.matrix[-1][j], abs=1e-9)
    plain = trained.model(stream[0].test.x).argmax(dim=1)
    assert not torch.equal(plain, trained.predict(stream[0].test.x))  # the rule, not the head, decides


def test_a_python_run_is_loaded_with_its_model_and_never_sent_to_the_cli(tmp_path):
    stream = digits_stream(2)
    lifelong.seed(0)
    model = MLP(stream.input_shape, stream.num_classes, hidden=[16])
    Learner(model, epochs=1, run_dir=tmp_path / "py", progress=False).run(stream)
    with pytest.raises(StateError, match=r"started from Python.*lifelong.load\(run_dir, model="):
        load(tmp_path / "py")
    trained = load(tmp_path / "py", model=MLP(stream.input_shape, stream.num_classes, hidden=[16]))
    assert torch.equal(trained.predict(stream[0].test.x), model(stream[0].test.x).argmax(dim=1))
    with pytest.raises(StateError, match=r"started from Python.*run\(stream, resume=True\)"):
        resume(tmp_path / "py", progress=False)
    with pytest.raises(StateError, match=r"started from Python"):
        continue_run(tmp_path / "py", [tmp_path], progress=False)


# --- directories the corrected command can use ---------------------------------------------------------


def test_a_diverged_run_is_rerun_with_a_lower_lr_in_the_same_directory(months):
    out = months / "run"
    with pytest.raises(TrainingDivergedError) as err:
        run_config(parse_config(files_config(months / "data", lr=1e6, log_every=1)), out, progress=False)
    message = str(err.value)
    assert "No checkpoint was written" in message and "is kept" not in message
    with pytest.warns(UserWarning, match="stopped before its first checkpoint"):
        results = run_config(parse_config(files_config(months / "data")), out, progress=False)
    assert len(results.matrix) == 3 and (out / "results.json").exists()


def test_divergence_on_unscaled_features_says_so(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table(120, ["cat", "dog"], 1, scale=1e6).to_csv(data / "m1.csv", index=False)
    with pytest.raises(TrainingDivergedError, match=r"inputs reach \|x\| = .*normalize: standard"):
        run_config(parse_config(files_config(data, lr=0.5, log_every=1)), tmp_path / "run", progress=False)


def test_a_device_that_is_not_there_fails_when_the_config_is_read(months):
    for device, problem in (("cuda", "not available"), ("gpu", "not a torch device")):
        with pytest.raises(ConfigError, match=problem):
            parse_config({**files_config(months / "data"), "train": {"device": device}})
    with pytest.raises(ConfigError, match="invalid training option"):
        Learner(MLP((4,), 2), device="cuda")


def test_finished_and_unfinished_directories_name_the_way_out(months, monkeypatch):
    cfg = parse_config(files_config(months / "data"))
    run_config(cfg, months / "run", progress=False)
    with pytest.raises(StateError, match=r"finished run.*lifelong continue .*--overwrite"):
        run_config(cfg, months / "run", progress=False)
    other = parse_config(files_config(months / "data", lr=0.01))
    with pytest.raises(StateError, match=r"another config \(key 'train.lr'.*--overwrite"):
        run_config(other, months / "run", progress=False)
    results = run_config(other, months / "run", progress=False, overwrite=True)
    assert json.loads((months / "run" / "config.json").read_text())["train"]["lr"] == 0.01
    assert len(results.matrix) == 3
    (months / "file").write_text("not a folder")
    with pytest.raises(StateError, match="is a file"):
        run_config(cfg, months / "file", progress=False)
    (months / "mine").mkdir()
    (months / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StateError, match="not a lifelong run directory"):
        run_config(cfg, months / "mine", progress=False, overwrite=True)
    assert (months / "mine" / "notes.txt").read_text() == "keep me"


def test_resume_from_scratch_refuses_other_initial_weights(tmp_path, monkeypatch):
    stream = digits_stream(2)

    def model() -> MLP:
        return MLP(stream.input_shape, stream.num_classes, hidden=[16])

    def stop_at_start(self, *args, **kwargs):
        raise KeyboardInterrupt  # killed before the first checkpoint

    monkeypatch.setattr(Learner, "_checkpoint", stop_at_start)
    lifelong.seed(1)
    with pytest.raises(KeyboardInterrupt):
        Learner(model(), epochs=1, run_dir=tmp_path / "r", progress=False).run(stream)
    monkeypatch.undo()
    torch.manual_seed(99)
    with pytest.raises(StateError, match=r"initial weights differ.*lifelong.seed"):
        Learner(model(), epochs=1, run_dir=tmp_path / "r", progress=False).run(stream, resume=True)
    lifelong.seed(1)
    results = Learner(model(), epochs=1, run_dir=tmp_path / "r", progress=False).run(stream, resume=True)
    lifelong.seed(1)
    fresh = Learner(model(), epochs=1, run_dir=tmp_path / "fresh", progress=False).run(stream)
    assert results.matrix == fresh.matrix


def test_paths_in_a_config_are_relative_to_it_and_stored_resolved(months, monkeypatch):
    (months / "configs").mkdir()
    config = months / "configs" / "run.yaml"
    config.write_text(
        "scenario: {type: files, path: ../data}\nmodel: {name: mlp, hidden: [8]}\ntrain: {epochs: 1}\n"
    )
    monkeypatch.chdir(ROOT)  # anywhere but the config's folder
    cfg = load_config(config)
    assert cfg.scenario.path == str((months / "data").resolve())
    monkeypatch.chdir(months / "new")
    assert load_config(config, ["scenario.path=."]).scenario.path == str((months / "new").resolve())
    run_config(cfg, months / "run", progress=False)
    saved = json.loads((months / "run" / "config.json").read_text())
    assert saved["scenario"]["path"] == str((months / "data").resolve())


# --- logs ---------------------------------------------------------------------------------------------


def test_training_loss_and_lr_are_logged_with_timestamps(tmp_path):
    stream = digits_stream(2)
    lifelong.seed(0)
    model = MLP(stream.input_shape, stream.num_classes, hidden=[16])
    before = time.time()
    Learner(model, epochs=1, batch_size=16, run_dir=tmp_path / "r", progress=False, log_every=10).run(stream)
    events = [json.loads(line) for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    steps = sum(-(-len(e.train) // 16) for e in stream)
    assert [e["step"] for e in train] == list(range(10, steps + 1, 10))
    assert all(e["loss"] > 0 and e["lr"] == 0.01 for e in train)
    assert all(before - 1 <= e["time"] <= time.time() + 1 for e in events)
    assert events[-1]["event"] == "end" and "acc" in events[-1]["summary"]


def test_wall_seconds_do_not_include_the_first_optimizer_steps_warm_up():
    """torch pays a one-time lazy import (torch._dynamo, ~1.4 s) at the first optimizer of a process; the
    first run of a process must not be charged for it: the import is done before the clock starts."""
    script = """
import sys
import lifelong
from lifelong import datasets
from lifelong.learner import Learner
from lifelong.models import MLP
from lifelong.streams import class_incremental
stream = class_incremental(datasets.load("digits"), experiences=2)
original = Learner._loop
def loop(self, *args):
    print("imported before the clock started:", "torch._dynamo" in sys.modules)
    return original(self, *args)
Learner._loop = loop
assert "torch._dynamo" not in sys.modules
lifelong.seed(0)
model = MLP(stream.input_shape, stream.num_classes, hidden=[16])
Learner(model, epochs=1, progress=False, report=False).run(stream)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "imported before the clock started: True" in out


def test_ctrl_c_prints_where_to_resume_and_exits_130(months):
    config = months / "run.yaml"
    config.write_text(
        "scenario: {type: files, path: data}\nmodel: {name: mlp, hidden: [16]}\n"
        "train: {epochs: 100000, lr: 0.01, checkpoint_every: 20}\n"  # far longer than the test waits
    )
    out = months / "run"
    proc = subprocess.Popen(
        [LIFELONG, "run", str(config), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # a pytest-xdist worker ignores SIGINT, and a child inherits that (Python then installs no
        # KeyboardInterrupt handler): give the command the disposition a terminal gives it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (out / "checkpoints" / "LATEST.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"lifelong resume {out}" in err and "Traceback" not in err
