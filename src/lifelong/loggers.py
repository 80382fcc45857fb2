"""Experiment trackers that watch a run: TensorBoard and MLflow, both optional.

    learner = Learner(model, methods, run_dir="runs/er",
                      loggers=[TensorBoardLogger("runs/er/tensorboard"), MLflowLogger(experiment="er")])

The learner hands every event it writes to `events.jsonl` (a dict with "event", "step" and "time") to each
logger's `log`, and calls `close` once when `run` ends, also when it raises. Both loggers turn events into
the same scalars (see `EventScalars`):

    train/loss, train/lr                  every `train.log_every` steps
    eval/<metric>/exp<j>                  every `train.eval_every` steps, on test set j (1-based)
    matrix/<metric>/exp<j>                at the end of every experience: the k-th point is R[k][j]
    matrix/<metric>/mean_seen             the mean over the experiences trained on so far
    summary/<figure>                      at the end: acc, bwt, fwt, forgetting, plasticity (None skipped)

tensorboard and mlflow are imported only when a logger is made, so a user who needs neither never installs
them; a missing one fails with a `ConfigError` naming the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from lifelong.errors import ConfigError

# Older MLflow servers (and some hosted ones) refuse longer param values; cutting here keeps a config
# loggable by any of them.
MLFLOW_PARAM_LIMIT = 500
# MLflow accepts at most 100 params in one batch.
_PARAMS_PER_BATCH = 100


@runtime_checkable
class Logger(Protocol):
    """What the learner calls: `log(event)` for every event, `close()` once at the end of `run`."""

    def log(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Scalar(NamedTuple):
    name: str
    value: float
    step: int
    time: float | None  # unix seconds of the event; None: now


class EventScalars:
    """Turns events into scalars, with the same names for every logger.

    A name holds the metric ("accuracy", "perplexity"), which an event carries under "metric". Evaluations
    that come before the first event naming it wait, and are returned (at their own steps) with the first
    event that does; `flush` hands out any still waiting under the stand-in name "metric".
    """

    def __init__(self) -> None:
        self.metric: str | None = None
        self._waiting: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> list[Scalar]:
        if isinstance(event.get("metric"), str):
            self.metric = event["metric"]
        if self.metric is None:
            if event.get("event") == "eval":
                self._waiting.append(event)
                return []
            return _scalars(event, "metric")  # no other event has the metric in its names
        return self.flush() + _scalars(event, self.metric)

    def flush(self) -> list[Scalar]:
        waiting, self._waiting = self._waiting, []
        return [s for event in waiting for s in _scalars(event, self.metric or "metric")]


def _scalars(event: dict[str, Any], metric: str) -> list[Scalar]:
    kind = event.get("event")
    out: list[tuple[str, Any]] = []
    if kind == "train":
        out += [(f"train/{key}", event[key]) for key in ("loss", "lr") if _is_number(event.get(key))]
    elif kind == "eval":
        out += _per_experience(f"eval/{metric}", event.get("values") or [])
    elif kind == "experience_end":
        row = event.get("row") or []
        out += _per_experience(f"matrix/{metric}", row)
        trained = int(event.get("experience", len(row) - 1)) + 1  # experiences 0..i so far
        seen = [v for v in row[:trained] if _is_number(v)]
        if seen:
            out.append((f"matrix/{metric}/mean_seen", sum(seen) / len(seen)))
    elif kind == "end":
        summary = event.get("summary") or {}
        out += [(f"summary/{key}", value) for key, value in summary.items() if _is_number(value)]
    step, when = int(event["step"]), event.get("time")
    return [Scalar(name, float(value), step, when) for name, value in out]


def _per_experience(prefix: str, values: Sequence[Any]) -> list[tuple[str, float]]:
    return [(f"{prefix}/exp{j + 1}", v) for j, v in enumerate(values) if _is_number(v)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- TensorBoard -------------------------------------------------------------------------------------------


class TensorBoardLogger:
    """Writes the run's scalars as TensorBoard event files in `log_dir` (`tensorboard --logdir DIR`).

    Give every run a directory of its own: TensorBoard draws all event files of a directory as one run.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = _summary_writer_class()  # fail now, not at the first event
        self._writer: Any = None
        self._scalars = EventScalars()

    def log(self, event: dict[str, Any]) -> None:
        step = int(event["step"])
        if self._writer is None:
            # Opened at the first event, not when built: the learner refuses a run directory that holds
            # anything before it has written its config there. On resume, TensorBoard drops what the
            # previous writer left after the checkpoint's step: the learner replays those events (the ones
            # at that step came before the checkpoint and are not replayed).
            purge = step + 1 if event.get("event") == "resume" else None
            self._writer = self._writer_class(str(self.log_dir), purge_step=purge, flush_secs=10)
        self._write(self._scalars(event))

    def _write(self, scalars: list[Scalar]) -> None:
        for s in scalars:
            self._writer.add_scalar(s.name, s.value, global_step=s.step, walltime=s.time)

    def close(self) -> None:
        if self._writer is not None:
            self._write(self._scalars.flush())
            self._writer.close()
            self._writer = None


def _summary_writer_class() -> Any:
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "the tensorboard logger needs the tensorboard package, which is not installed; "
            "install it with: pip install 'lifelong[tensorboard]'"
        )
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


# --- MLflow ------------------------------------------------------------------------------------------------


class MLflowLogger:
    """Logs the run's scalars as MLflow metrics, and its config as params, to one MLflow run.

    `tracking_uri` None means MLflow's own default (`MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in
    the working directory); the experiment is created if it does not exist. A resumed learner run logs to a
    new MLflow run, tagged `lifelong.resumed_at_step`, from the step it resumed at.
    """

    def __init__(
        self, tracking_uri: str | None = None, experiment: str = "lifelong", run_name: str | None = None
    ) -> None:
        if not experiment:
            raise ConfigError("the mlflow logger needs a non-empty experiment name, e.g. 'lifelong'")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        _check_mlflow(tracking_uri)  # fail now, not at the first event
        self.run_id: str | None = None
        self._client: Any = None
        self._scalars = EventScalars()
        self._ended = False

    def log(self, event: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self._client is None:
            self._start(event)
        assert self.run_id is not None
        if event.get("event") == "start" and isinstance(event.get("config"), dict):
            params = [Param(key, value) for key, value in flatten_params(event["config"])]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=params[i : i + _PARAMS_PER_BATCH])
        if event.get("event") == "end":
            self._ended = True
        self._write(self._scalars(event))

    def _write(self, scalars: list[Scalar]) -> None:
        from mlflow.entities import Metric

        now = time.time()
        # MLflow counts milliseconds
        metrics = [
            Metric(s.name, s.value, int(1000 * (now if s.time is None else s.time)), s.step) for s in scalars
        ]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        if self._client is not None and self.run_id is not None:
            self._write(self._scalars.flush())
            # a run that never reached its "end" event stopped on an error (the learner closes us then too)
            self._client.set_terminated(self.run_id, "FINISHED" if self._ended else "FAILED")
        self._client, self._ended = None, False  # run_id stays: where to find the run afterwards

    def _start(self, event: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id if found is not None else client.create_experiment(self.experiment)
        )
        tags = {}
        if event.get("event") == "resume":
            tags["lifelong.resumed_at_step"] = str(event["step"])
        run = client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self._client, self.run_id = client, run.info.run_id


def _check_mlflow(tracking_uri: str | None) -> None:
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "the mlflow logger needs the mlflow package, which is not installed; "
            "install it with: pip install 'lifelong[mlflow]'"
        )
    if (tracking_uri or "").startswith("sqlite:") and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError(
            f"the mlflow tracking store {tracking_uri!r} is a database, which needs sqlalchemy and alembic; "
            "install them with: pip install 'lifelong[mlflow]'"
        )


def flatten_params(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """A nested config as MLflow params: keys joined with dots (list items of sections by index, e.g.
    `method.1.name`), other values as JSON text, cut to `MLFLOW_PARAM_LIMIT` characters."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten_params(value, name + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield from flatten_params({str(i): v for i, v in enumerate(value)}, name + ".")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > MLFLOW_PARAM_LIMIT:
                text = text[: MLFLOW_PARAM_LIMIT - 3] + "..."
            yield name, text


# --- from the config ---------------------------------------------------------------------------------------


def build_loggers(entries: Sequence[Any], run_dir: str | Path | None) -> list[Logger]:
    """The loggers of a config's `loggers` list. Without a directory or URI of their own they write into the
    run directory: `run_dir/tensorboard`, and the MLflow database `run_dir/mlflow.db`; an MLflow run
    without `run_name` is named after the run directory."""
    out: list[Logger] = []
    for entry in entries:
        options = entry if isinstance(entry, dict) else entry.model_dump()
        name = options.get("name")
        if name == "tensorboard":
            log_dir = options.get("dir") or _in_run_dir(run_dir, "tensorboard", "dir")
            out.append(TensorBoardLogger(log_dir))
        elif name == "mlflow":
            uri = options.get("tracking_uri")
            if uri is None:
                # MLflow's own recommendation: its file store is in maintenance mode, a database is not
                uri = "sqlite:///" + str(_in_run_dir(run_dir, "mlflow.db", "tracking_uri").resolve())
            run_name = options.get("run_name") or (Path(run_dir).name if run_dir is not None else None)
            experiment = options.get("experiment", "lifelong")
            out.append(MLflowLogger(uri, experiment=experiment, run_name=run_name))
        else:
            raise ConfigError(f"unknown logger {name!r}; choose one of tensorboard, mlflow")
    return out


def _in_run_dir(run_dir: str | Path | None, name: str, key: str) -> Path:
    if run_dir is None:
        raise ConfigError(
            f"a logger without `{key}` writes into the run directory, but this run has none; "
            f"set the logger's `{key}`, or give the run an output directory (--out DIR)"
        )
    return Path(run_dir) / name


__all__ = [
    "EventScalars",
    "Logger",
    "MLflowLogger",
    "Scalar",
    "TensorBoardLogger",
    "build_loggers",
    "flatten_params",
]
