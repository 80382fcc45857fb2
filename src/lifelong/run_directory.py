"""The run directory: what it holds, and the rules for starting, resuming, continuing or replacing a run
in it. Checked before anything is written.

    config.json   the run's config (paths resolved); its presence marks the folder as a run directory
    run.json      where the run came from (`config` or `python`), the SHA-256 of its initial weights, the
                  stream's fingerprint and what inference needs without the data (input shape, class
                  names, feature columns and scaling)
    checkpoints/  the state (`state.py`); events.jsonl, results.json, report.html: the learner's output

The rule for an existing directory: one with a checkpoint or results is resumed, continued, or replaced
only on request (`overwrite`); one with neither (a run that stopped before its first checkpoint) holds
nothing worth keeping and a new run replaces it; a folder that is not a run directory is never touched.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from lifelong import state as st
from lifelong.errors import StateError
from lifelong.streams.experience import Stream
from lifelong.streams.fingerprint import difference, fingerprint
from lifelong.version import __version__

RUN_INFO = "run.json"


def prepare(
    run_dir: Path | None,
    *,
    config: dict,
    stream: Stream,
    model: nn.Module,
    origin: str,
    mode: str = "new",
    overwrite: bool = False,
) -> dict | None:
    """Check `run_dir` for a run in `mode` ("new", "resume" or "extend") and return the checkpoint to go on
    from (or None). Writes (config.json, run.json) only once every check has passed. `origin` ("config"
    or "python") says which hints the messages give: the command line cannot rebuild a Python run."""
    if run_dir is None:
        if mode != "new":
            raise StateError(f"{mode}=True needs a run_dir to {mode} from")
        return None
    if run_dir.exists() and not run_dir.is_dir():
        raise StateError(f"{run_dir} is a file, not a run directory; choose another output directory")
    config_path = run_dir / "config.json"
    fp = fingerprint(stream)
    initial = st.weights_digest(model)
    if not config_path.exists():
        # a run killed while starting leaves run.json and config.json's temporary copy: still empty
        leftovers = (
            sorted([*run_dir.glob(".config.json.*.tmp"), *run_dir.glob(".run.json.*.tmp")])
            + [p for p in (run_dir / RUN_INFO,) if p.exists()]
            if run_dir.exists()
            else []
        )
        if run_dir.exists() and any(p not in leftovers for p in run_dir.iterdir()):
            raise StateError(
                f"{run_dir} exists and is not a lifelong run directory (no config.json); choose an "
                "empty or new output directory (nothing in it was changed)"
            )
        if mode != "new":
            raise StateError(f"nothing to {mode} in {run_dir}: it holds no run")
        for leftover in leftovers:
            leftover.unlink()
        _start(run_dir, config, stream, fp, initial, origin, model)
        return None

    saved = st.read_json(config_path, "run config")
    info = read_info(run_dir)
    python_run = info.get("origin") == "python"
    finished = (run_dir / "results.json").exists()
    has_checkpoint = st.has_checkpoint(run_dir)
    if mode == "new":
        if overwrite or not (finished or has_checkpoint):
            if not overwrite:
                warnings.warn(
                    f"run directory {run_dir} held a run that stopped before its first checkpoint; "
                    "starting again in it",
                    stacklevel=3,
                )
            shutil.rmtree(run_dir)
            _start(run_dir, config, stream, fp, initial, origin, model)
            return None
        diff = _first_difference(_comparable(saved, False), _comparable(_as_json(config), False))
        go_on = (
            f"train that run on new data with {_continue_hint(run_dir, python_run)}"
            if finished
            else f"resume that run with {_resume_hint(run_dir, python_run)}"
        )
        if diff is not None:
            raise StateError(
                f"run directory {run_dir} belongs to another config ({diff}); choose another output "
                f"directory, {go_on}, or replace it with --overwrite (Python: overwrite=True)"
            )
        if finished:
            raise StateError(
                f"run directory {run_dir} holds a finished run (results in {run_dir / 'results.json'}); "
                f"{go_on}, choose another output directory, or replace it with --overwrite "
                "(Python: overwrite=True)"
            )
        raise StateError(
            f"run directory {run_dir} holds an unfinished run of this config; continue it with "
            f"{_resume_hint(run_dir, python_run)}, choose another output directory, or start it again "
            "with --overwrite (Python: overwrite=True)"
        )

    extend = mode == "extend"
    diff = _first_difference(_comparable(saved, extend), _comparable(_as_json(config), extend))
    if diff is not None:
        raise StateError(
            f"run directory {run_dir} belongs to another config ({diff}); resume it with the config "
            "it was started with"
        )
    recorded = info.get("stream")
    if recorded is not None:  # run directories of lifelong 0.1 have no fingerprint
        change = difference(recorded, fp, prefix_only=extend)
        if change is not None:
            raise StateError(
                f"the data of the run in {run_dir} changed since it started: {change}. Restore the "
                "data it was trained on, or start a new run in another directory"
            )
    if mode == "resume":
        if finished:
            raise StateError(
                f"run directory {run_dir} holds a finished run; read {run_dir / 'results.json'}, or "
                f"train it on new data with {_continue_hint(run_dir, python_run)}"
            )
        if has_checkpoint:
            return st.read_checkpoint(run_dir)
        if info.get("initial_weights_sha256") not in (None, initial):
            raise StateError(
                f"the run in {run_dir} stopped before its first checkpoint and this model's initial "
                "weights differ from the ones it started with, so it would not be the same run; call "
                "lifelong.seed(SEED) before building the model (as the first attempt should have), "
                "or start a new run with overwrite=True"
            )
        return None

    # extend: a finished run (or one whose last checkpoint ends its stream) goes on with new experiences
    if not has_checkpoint:
        raise StateError(f"nothing to continue in {run_dir}: it holds no checkpoint")
    checkpoint = st.read_checkpoint(run_dir)
    done = len(checkpoint["progress"]["initial"])
    if checkpoint["progress"]["experience"] < done:
        raise StateError(
            f"the run in {run_dir} has not finished (it stopped in experience "
            f"{checkpoint['progress']['experience'] + 1} of {done}); finish it first with "
            f"{_resume_hint(run_dir, python_run)}, then continue it with new data"
        )
    if len(stream) <= done:
        raise StateError(
            f"the stream given to continue the run in {run_dir} has no new experience ({len(stream)} "
            f"experiences, the run trained on {done}); add the new data at the end of the stream"
        )
    # results.json first: a run killed from here on resumes (to the old or the new end), never looks done
    (run_dir / "results.json").unlink(missing_ok=True)
    st.atomic_write_json(config_path, config)
    write_info(run_dir, stream, fp, info.get("initial_weights_sha256", initial), origin, model)
    return checkpoint


def _start(
    run_dir: Path, config: dict, stream: Stream, fp: dict, initial: str, origin: str, model: nn.Module
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_info(run_dir, stream, fp, initial, origin, model)
    st.atomic_write_json(run_dir / "config.json", config)  # last: it marks the directory as a run


def write_info(run_dir: Path, stream: Stream, fp: dict, initial: str, origin: str, model: nn.Module) -> None:
    """`run.json`: where the run came from, its initial weights' hash, and what it was trained on."""
    st.atomic_write_json(
        run_dir / RUN_INFO,
        {
            "origin": origin,
            "lifelong_version": __version__,
            "initial_weights_sha256": initial,
            "stream": fp,
            "stream_info": stream_info(stream),
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        },
    )


def label_names(stream: Stream) -> list[Any]:
    names = stream.info.get("label_names") or stream.info.get("class_names")
    if names is not None and len(names) == stream.num_classes:
        return [n if isinstance(n, int | str) else str(n) for n in names]
    return list(range(stream.num_classes))


def stream_info(stream: Stream) -> dict[str, Any]:
    """What inference needs to know about the data without loading it (JSON only)."""
    tasks = stream.task_classes
    out: dict[str, Any] = {
        "kind": stream.kind,
        "num_classes": stream.num_classes,
        "input_shape": list(stream.input_shape),
        "task_classes": None if tasks is None else {str(k): v for k, v in tasks.items()},
    }
    if stream.kind == "classification":
        out["label_names"] = label_names(stream)
    for key in ("feature_names", "normalizer", "columns", "layout", "tokenizer", "tokenizer_hash", "eos_id"):
        if key in stream.info:
            out[key] = _as_json(stream.info[key])
    return out


def read_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_INFO
    return st.read_json(path, "run information") if path.exists() else {}


def _as_json(obj: Any) -> Any:
    """`obj` in the normal form of JSON read back from disk."""
    return json.loads(json.dumps(obj, default=str))


def _comparable(config: Any, extend: bool) -> Any:
    """A config without what resuming may change (the loggers) and, when continuing a run, what that adds:
    the data (`continued`) and, for runs made from Python objects, the stream's description (its
    fingerprint is checked instead)."""
    if not isinstance(config, dict):
        return config
    dropped = ("loggers", "continued", "stream") if extend else ("loggers",)  # loggers may change
    out = {k: v for k, v in config.items() if k not in dropped}
    if extend and isinstance(out.get("scenario"), dict):  # a store update trains on more of the scenario
        out["scenario"] = {k: v for k, v in out["scenario"].items() if k != "until"}
    return out


def _resume_hint(run_dir: Path, python_run: bool) -> str:
    if python_run:
        return "Learner(...).run(stream, resume=True) from Python (it was started from Python)"
    return f"`lifelong resume {run_dir}`"


def _continue_hint(run_dir: Path, python_run: bool) -> str:
    if python_run:
        return "Learner(...).run(longer_stream, extend=True) from Python (it was started from Python)"
    return f"`lifelong continue {run_dir} --data PATH`"


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON configs differ, as 'key x.y is A there and B here'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                return (
                    f"key {sub!r} is {'missing' if key not in a else a[key]!r} there and "
                    f"{'missing' if key not in b else b[key]!r} here"
                )
            diff = _first_difference(a[key], b[key], sub)
            if diff:
                return diff
        return None
    if a != b:
        return f"key {path!r} is {a!r} there and {b!r} here"
    return None
