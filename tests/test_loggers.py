"""TensorBoard and MLflow loggers, with the real packages: what a run's events become, read back the way a
user's tools read them (TensorBoard's EventAccumulator, MLflow's client)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lifelong
from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.experiment import run_config
from lifelong.loggers import (
    MLFLOW_PARAM_LIMIT,
    EventScalars,
    Logger,
    MLflowLogger,
    Scalar,
    TensorBoardLogger,
    build_loggers,
    flatten_params,
)
from lifelong.models import MLP
from lifelong.streams import class_incremental

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # tests never reach the internet

if not os.environ.get("CI"):  # CI installs both extras (Makefile): there a missing one fails, never skips
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'lifelong[tensorboard]'")
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'lifelong[mlflow]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

T0 = 1_700_000_000.0
LONG = "x" * 700

# the documented shape of a run's events: 2 experiences, log_every 2, eval_every 3
EVENTS = [
    {
        "event": "start",
        "step": 0,
        "seed": 0,
        "config": {"train": {"lr": 0.01}, "method": [{"name": "replay"}], "seed": 0},
    },
    {"event": "train", "step": 2, "experience": 0, "epoch": 0, "loss": 2.0, "lr": 0.01},
    {"event": "eval", "step": 3, "experience": 0, "epoch": 0, "values": [0.4, 0.0]},
    {"event": "train", "step": 4, "experience": 0, "epoch": 0, "loss": 1.0, "lr": 0.01},
    {"event": "experience_end", "step": 4, "experience": 0, "metric": "accuracy", "row": [0.9, 0.0]},
    {"event": "checkpoint", "step": 4, "name": "exp-0001"},
    {"event": "train", "step": 6, "experience": 1, "epoch": 0, "loss": 0.5, "lr": 0.005},
    {"event": "eval", "step": 6, "experience": 1, "epoch": 0, "values": [0.5, 0.6]},
    {"event": "experience_end", "step": 8, "experience": 1, "metric": "accuracy", "row": [0.7, 0.8]},
    {"event": "end", "step": 8, "summary": {"acc": 0.75, "bwt": -0.2, "fwt": None}},
]
for n, e in enumerate(EVENTS):
    e["time"] = T0 + n
EVENTS[0]["config"]["long"] = LONG

EXPECTED = {  # name -> [(step, value)]
    "train/loss": [(2, 2.0), (4, 1.0), (6, 0.5)],
    "train/lr": [(2, 0.01), (4, 0.01), (6, 0.005)],
    "eval/accuracy/exp1": [(3, 0.4), (6, 0.5)],
    "eval/accuracy/exp2": [(3, 0.0), (6, 0.6)],
    "matrix/accuracy/exp1": [(4, 0.9), (8, 0.7)],
    "matrix/accuracy/exp2": [(4, 0.0), (8, 0.8)],
    "matrix/accuracy/mean_seen": [(4, 0.9), (8, 0.75)],
    "summary/acc": [(8, 0.75)],
    "summary/bwt": [(8, -0.2)],
}


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {
        tag: [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }


def mlflow_metrics(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    names = client.get_run(run_id).data.metrics
    return {
        name: [(m.step, pytest.approx(m.value)) for m in client.get_metric_history(run_id, name)]
        for name in names
    }


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # one database for the module: creating MLflow's tables takes seconds
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


def test_event_scalars_name_every_figure():
    scalars = EventScalars()
    got: dict[str, list[tuple[int, float]]] = {}
    for event in EVENTS:
        for s in scalars(event):
            got.setdefault(s.name, []).append((s.step, pytest.approx(s.value)))
    assert got == EXPECTED  # checkpoint and start carry no scalar; a None figure is skipped
    assert scalars.flush() == []


def test_evaluations_wait_for_the_metric_name():
    scalars = EventScalars()
    assert scalars({"event": "eval", "step": 3, "values": [8.5], "time": T0}) == []  # metric not named yet
    assert scalars({"event": "train", "step": 4, "loss": 2.0, "time": T0 + 1}) == [
        Scalar("train/loss", 2.0, 4, T0 + 1)
    ]
    end = {"event": "experience_end", "step": 5, "experience": 0, "metric": "perplexity", "row": [8.0]}
    assert [(s.name, s.step) for s in scalars(end)] == [
        ("eval/perplexity/exp1", 3),  # the waiting evaluation, at its own step
        ("matrix/perplexity/exp1", 5),
        ("matrix/perplexity/mean_seen", 5),
    ]
    assert scalars({"event": "eval", "step": 6, "values": [7.0]}) == [
        Scalar("eval/perplexity/exp1", 7.0, 6, None)
    ]
    stopped = EventScalars()  # a run that stopped before its first experience ended
    stopped({"event": "eval", "step": 3, "values": [0.5], "time": T0})
    assert stopped.flush() == [Scalar("eval/metric/exp1", 0.5, 3, T0)]


def test_tensorboard_writes_the_scalars_at_their_steps(tmp_path):
    log_dir = tmp_path / "tb"
    logger = TensorBoardLogger(log_dir)
    assert isinstance(logger, Logger)
    assert not log_dir.exists()  # nothing written until the first event (the run directory must be empty)
    for event in EVENTS:
        logger.log(event)
    logger.close()
    assert tensorboard_scalars(log_dir) == EXPECTED
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert acc.Scalars("train/loss")[0].wall_time == pytest.approx(T0 + 1)  # the event's own time


def test_tensorboard_resume_replaces_the_replayed_steps(tmp_path):
    """A resumed learner replays the events after its checkpoint: TensorBoard must show them once."""
    first = TensorBoardLogger(tmp_path)
    for step in range(1, 9):
        first.log({"event": "train", "step": step, "loss": float(step), "lr": 0.1, "time": T0 + step})
    first.close()  # killed after step 8; the checkpoint was at step 5
    second = TensorBoardLogger(tmp_path)
    second.log({"event": "resume", "step": 5, "experience": 0, "time": T0 + 20})
    for step in range(6, 11):
        second.log({"event": "train", "step": step, "loss": 100.0 + step, "lr": 0.1, "time": T0 + 20 + step})
    second.close()
    losses = tensorboard_scalars(tmp_path)["train/loss"]
    assert losses == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 11)]


def test_mlflow_logs_metrics_params_and_status(tracking_uri):
    logger = MLflowLogger(tracking_uri, experiment="hand-written", run_name="er")
    for event in EVENTS:
        logger.log(event)
    run_id = logger.run_id
    logger.close()
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "er" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "hand-written"
    assert mlflow_metrics(client, run_id) == EXPECTED
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.timestamp for m in history] == [int(1000 * (T0 + n)) for n in (1, 3, 6)]
    params = run.data.params
    assert params["train.lr"] == "0.01" and params["method.0.name"] == "replay" and params["seed"] == "0"
    assert len(params["long"]) == MLFLOW_PARAM_LIMIT and params["long"].endswith("...")


def test_mlflow_run_that_never_ends_is_marked_failed(tracking_uri):
    logger = MLflowLogger(tracking_uri, experiment="failed")
    logger.log({"event": "resume", "step": 40, "experience": 1, "time": T0})
    logger.log({"event": "train", "step": 50, "loss": 0.3, "lr": 0.1, "time": T0 + 1})
    run_id = logger.run_id
    logger.close()  # the learner closes its loggers also when the run raises
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["lifelong.resumed_at_step"] == "40"
    assert run.data.metrics == {"train/loss": pytest.approx(0.3), "train/lr": pytest.approx(0.1)}


def test_flatten_params():
    config = {
        "a": {"b": 1, "c": [400, 400], "d": None},
        "m": [{"name": "x", "k": True}],
        "s": "text",
        "e": {},
    }
    assert dict(flatten_params(config)) == {
        "a.b": "1",
        "a.c": "[400, 400]",
        "a.d": "null",
        "m.0.name": "x",
        "m.0.k": "true",
        "s": "text",
        "e": "{}",
    }


# --- from the config -----------------------------------------------------------------------------------


def test_build_loggers_defaults_write_into_the_run_directory(tmp_path):
    cfg = parse_config(
        {
            "data": {"name": "digits"},
            "scenario": {"type": "class_incremental", "experiences": 2},
            "model": {"name": "mlp"},
            "loggers": [{"name": "tensorboard"}, {"name": "mlflow"}],
        }
    )
    run_dir = tmp_path / "my-run"
    tb, ml = build_loggers(cfg.loggers, run_dir)
    assert isinstance(tb, TensorBoardLogger) and tb.log_dir == run_dir / "tensorboard"
    assert isinstance(ml, MLflowLogger)
    assert ml.tracking_uri == "sqlite:///" + str((run_dir / "mlflow.db").resolve())
    assert (ml.experiment, ml.run_name) == ("lifelong", "my-run")
    own = parse_config(
        {
            **cfg.model_dump(mode="json"),
            "loggers": [
                {"name": "tensorboard", "dir": str(tmp_path / "tb")},
                {"name": "mlflow", "tracking_uri": "sqlite:///x.db", "experiment": "e", "run_name": "r"},
            ],
        }
    )
    tb, ml = build_loggers(own.loggers, None)  # given their own places, they need no run directory
    assert tb.log_dir == tmp_path / "tb"
    assert (ml.tracking_uri, ml.experiment, ml.run_name) == ("sqlite:///x.db", "e", "r")
    with pytest.raises(ConfigError, match="set the logger's `dir`, or give the run an output directory"):
        build_loggers([{"name": "tensorboard", "dir": None}], None)
    with pytest.raises(ConfigError, match="set the logger's `tracking_uri`"):
        build_loggers(cfg.loggers[1:], None)
    with pytest.raises(ConfigError, match="unknown logger 'wandb'; choose one of tensorboard, mlflow"):
        build_loggers([{"name": "wandb"}], run_dir)


def test_config_errors_name_the_allowed_loggers():
    base = {"data": {"name": "digits"}, "scenario": {"type": "class_incremental"}, "model": {"name": "mlp"}}
    with pytest.raises(
        ConfigError, match="'wandb' is not a known loggers; choose one of tensorboard, mlflow"
    ):
        parse_config({**base, "loggers": [{"name": "wandb"}]})
    with pytest.raises(ConfigError, match=r"unknown key `loggers\[0\].logdir`; allowed here: name, dir"):
        parse_config({**base, "loggers": [{"name": "tensorboard", "logdir": "x"}]})
    assert parse_config(base).loggers == []


def test_missing_packages_fail_with_the_extra_to_install(monkeypatch):
    # a None entry in sys.modules is how Python itself marks a module as not importable
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'lifelong\[tensorboard\]'"):
        TensorBoardLogger("unused")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"pip install 'lifelong\[mlflow\]'"):
        MLflowLogger()
    monkeypatch.delitem(sys.modules, "mlflow")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(
        ConfigError, match=r"needs sqlalchemy and alembic; .*pip install 'lifelong\[mlflow\]'"
    ):
        MLflowLogger("sqlite:///unused.db")


def test_import_lifelong_does_not_import_the_trackers():
    code = (
        "import sys, lifelong, lifelong.loggers, lifelong.experiment, lifelong.cli\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'mlflow', 'sqlalchemy')]\n"
        "loaded += [m for m in sys.modules if m.startswith('torch.utils.tensorboard')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a real run --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_learner_feeds_both_loggers(tmp_path, tracking_uri):
    stream = class_incremental(lifelong.datasets.load("digits"), 2)
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.num_classes, hidden=[32])
    tb = TensorBoardLogger(tmp_path / "tb")
    ml = MLflowLogger(tracking_uri, experiment="digits", run_name="naive")
    learner = lifelong.Learner(
        model, [], epochs=1, batch_size=32, log_every=5, eval_every=10, progress=False, loggers=[tb, ml]
    )
    results = learner.run(stream)  # without a run directory the loggers still get every event
    run_id = ml.run_id  # kept after close: where to find the run
    client = MlflowClient(tracking_uri=tracking_uri)
    for got in (tensorboard_scalars(tmp_path / "tb"), mlflow_metrics(client, run_id)):
        for j in range(2):
            assert [v for _, v in got[f"matrix/accuracy/exp{j + 1}"]] == [row[j] for row in results.matrix]
        assert got["summary/acc"][0][1] == results.summary["acc"]
        loss_steps = [s for s, _ in got["train/loss"]]
        assert loss_steps and all(s % 5 == 0 for s in loss_steps)
        assert [s for s, _ in got["eval/accuracy/exp1"]] == list(range(10, loss_steps[-1] + 1, 10))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["train.batch_size"] == "32"


@pytest.mark.slow
def test_config_run_writes_both_trackers_into_its_directory(tmp_path):
    cfg = parse_config(
        {
            "data": {"name": "digits"},
            "scenario": {"type": "class_incremental", "experiences": 2},
            "model": {"name": "mlp", "hidden": [16]},
            "train": {"epochs": 1, "log_every": 10},
            "loggers": [{"name": "tensorboard"}, {"name": "mlflow", "experiment": "from-config"}],
        }
    )
    out = tmp_path / "run"
    results = run_config(cfg, out, progress=False)
    scalars = tensorboard_scalars(out / "tensorboard")
    assert [v for _, v in scalars["matrix/accuracy/exp2"]] == [row[1] for row in results.matrix]
    client = MlflowClient(tracking_uri="sqlite:///" + str((out / "mlflow.db").resolve()))
    (run,) = client.search_runs([client.get_experiment_by_name("from-config").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.metrics["summary/acc"] == pytest.approx(results.summary["acc"])
    assert run.data.params["loggers.1.experiment"] == "from-config"
    assert run.data.params["model.hidden"] == "[16]"
