"""A run killed with SIGKILL at any point and resumed ends bit-identical to a run that was never stopped.

Every test trains a small config to the end once, uninterrupted (in-process, the reference), and once as
`lifelong run` / `lifelong resume` subprocesses that are SIGKILLed on the way, then compares the two run
directories: results.json (==, no tolerance), every tensor of the final checkpoint (torch.equal, and the
safetensors files byte for byte), the optimizer and method state, and the start / eval / experience_end
events of events.jsonl.

Two kinds of kill:

- from outside (`_kill_when`): the test polls the run directory and sends SIGKILL to the subprocess after
  its k-th checkpoint event, or at fixed delays after a new checkpoint appears. Where exactly the kill lands
  depends on timing; the outcome must not.
- from inside, at an exact point (`RUNNER`): the subprocess is the real CLI, started through a few lines of
  test code that wrap `lifelong.state` / `lifelong.learner` functions and SIGKILL their own process at one
  chosen moment: before a checkpoint is written, with a checkpoint file or LATEST.json half written, after
  the checkpoint directory is complete but before LATEST.json names it, after LATEST.json but before the
  old checkpoint is removed, after an eval event or in the middle of writing one, after the n-th optimizer
  step, with config.json half written, after results.json but before the report. Nothing in `src` knows
  about it.

All subprocesses run with one intra-op thread (as does the in-process reference): on CPU the result of a
matrix product can depend on the thread count, so "bit-identical" compares runs on the same settings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from lifelong.cli import app
from lifelong.experiment import load_config, run_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LIFELONG = Path(sys.executable).with_name("lifelong")  # the console script of this environment
KILLED = -signal.SIGKILL

# --- configs -------------------------------------------------------------------------------------------

# 5 experiences x 16 steps: checkpoints at steps 6, 12, ... (step 24 ends an epoch, step 48 ends experience
# 3), evaluations every 4 steps; the replay memory (100 < 600 samples) and SGD momentum are state to restore.
REPLAY: dict[str, Any] = {
    "data": {"name": "fashion_mnist", "train_per_class": 60, "test_per_class": 20},
    "scenario": {"type": "class_incremental", "experiences": 5, "seed": 0},
    "model": {"name": "mlp", "hidden": [32]},
    "method": {"name": "replay", "memory": 100},
    "train": {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "momentum": 0.9,
        "checkpoint_every": 6,
        "eval_every": 4,
    },
    "seed": 3,
}

# Joint resets the weights at every experience from state it keeps; Adam's state is carried over
# experience boundaries (reset_optimizer off), so it must survive a resume at a boundary too.
JOINT: dict[str, Any] = {
    "data": {"name": "fashion_mnist", "train_per_class": 40, "test_per_class": 20},
    "scenario": {"type": "class_incremental", "experiences": 3, "seed": 1},
    "model": {"name": "mlp", "hidden": [24]},
    "method": {"name": "joint"},
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.003,
        "optimizer": "adam",
        "reset_optimizer": False,
        "checkpoint_every": 4,
        "eval_every": 3,
    },
    "seed": 0,
}

# Text: a tied-weight GPT with dropout (the global torch RNG is state), AdamW, warm-up + cosine schedule,
# gradient clipping, perplexity.
GPT: dict[str, Any] = {
    "data": {"name": "fortunes"},
    "scenario": {
        "type": "domains",
        "domains": ["goedel", "pets", "news"],
        "block_size": 32,
        "max_blocks_per_domain": 32,
        "test_fraction": 0.1,
    },
    "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1},
    "method": {"name": "naive"},
    "train": {
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.003,
        "optimizer": "adamw",
        "scheduler": "cosine",
        "warmup_steps": 2,
        "grad_clip": 1.0,
        "checkpoint_every": 3,
        "eval_every": 2,
    },
    "seed": 0,
}

CONFIGS = {"replay": REPLAY, "joint": JOINT, "gpt": GPT}


def write_config(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(CONFIGS[name]))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """name -> the run directory of an uninterrupted in-process run of that config (made once)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            folder = tmp_path_factory.mktemp(f"reference-{name}")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
            try:
                run_config(load_config(write_config(folder, name)), folder / "run", progress=False)
            finally:
                torch.set_num_threads(threads)
            made[name] = folder / "run"
        return made[name]

    return get


# --- killing a subprocess at an exact point ------------------------------------------------------------

RUNNER = r"""
import json, os, signal, sys, tempfile
from pathlib import Path

plan = json.loads(sys.argv.pop(1))  # {"kill": where, "name": checkpoint name (optional), "n": n-th time}
seen = {}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def hit(where, name=None):
    if plan.get("kill") != where or plan.get("name", name) != name:
        return False
    seen[where] = seen.get(where, 0) + 1
    return seen[where] == plan.get("n", 1)

def torn(path, data):
    # what atomic_write_bytes leaves when killed mid-write: half of the data in its temporary file
    path = Path(path)
    fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.write(fd, data[: len(data) // 2])
    die()

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from lifelong import learner, state
from lifelong.evaluation import report

real_bytes, real_json, real_save = state.atomic_write_bytes, state.atomic_write_json, state.save_checkpoint
real_event, real_report = learner.Learner._event, report.write_report
saving = [None]

def save_checkpoint(run_dir, **kw):
    if hit("save_start", kw["name"]):
        die()
    saving[0] = kw["name"]
    out = real_save(run_dir, **kw)
    saving[0] = None
    if hit("after_save", kw["name"]):
        die()
    return out

def atomic_write_bytes(path, data):
    if saving[0] is not None and Path(path).parent.name.startswith(".") and hit("torn_file", saving[0]):
        torn(path, data)
    return real_bytes(path, data)

def atomic_write_json(path, obj):
    path = Path(path)
    if path.name == "LATEST.json":
        if hit("before_latest", saving[0]):
            die()
        if hit("torn_latest", saving[0]):
            torn(path, json.dumps(obj).encode())
        out = real_json(path, obj)
        if hit("after_latest", saving[0]):
            die()
        return out
    if path.name in ("config.json", "results.json") and hit("torn_" + path.stem):
        torn(path, json.dumps(obj).encode())
    return real_json(path, obj)

def event(self, ev):
    if hit("torn_event_" + ev["event"]):  # half of the line, as a kill inside write() leaves it
        with open(self._events_path(), "a") as f:
            line = json.dumps(ev, sort_keys=True) + "\n"
            f.write(line[: len(line) // 2])
        die()
    real_event(self, ev)
    if hit("event_" + ev["event"]):
        die()

def write_report(*args, **kwargs):
    if hit("report"):
        die()
    return real_report(*args, **kwargs)

state.save_checkpoint, state.atomic_write_bytes, state.atomic_write_json = (
    save_checkpoint, atomic_write_bytes, atomic_write_json
)
learner.Learner._event, report.write_report = event, write_report
register_optimizer_step_post_hook(lambda *_: hit("step") and die())

from lifelong.cli import app
sys.argv = ["lifelong", *sys.argv[1:]]
app()
"""


def lifelong(*args: str | Path, kill: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
    """`lifelong ARGS --no-progress` in a subprocess; with `kill`, the process SIGKILLs itself there."""
    cmd = [sys.executable, "-c", RUNNER, json.dumps(kill or {}), *map(str, args), "--no-progress"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    if kill is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode == KILLED, f"not killed at {kill}:\n{proc.stdout}{proc.stderr}"
    return proc


def kill_chain(config: Path, out: Path, kills: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """`lifelong run`, killed at kills[0]; `lifelong resume`, killed at kills[1]; ...; a last clean resume.

    Each kill comes with what the run directory must look like after it (see `assert_killed_state`), which
    proves that the kill landed where it was meant to.
    """
    for i, (kill, expected) in enumerate(kills):
        lifelong(*(("run", config, "--out", out) if i == 0 else ("resume", out)), kill=kill)
        assert_killed_state(out, **expected)
    lifelong("resume", out)


def _names(folder: Path) -> set[str]:
    """Entries of `folder`, with the random part of temporary names as '*' (`.LATEST.json.*.tmp`)."""
    return {re.sub(r"^(\..+)\.[a-z0-9_]{8}\.tmp$", r"\1.*.tmp", p.name) for p in folder.iterdir()}


def assert_killed_state(
    out: Path,
    latest: str | None,
    also: frozenset[str] | set[str] = frozenset(),
    partial: set[str] | None = None,
    progress: dict[str, int] | None = None,
    last_event: dict[str, Any] | None = None,
    torn_event: bool = False,
    results: bool = False,
) -> None:
    """The current checkpoint is `latest`, next to `also` in checkpoints/; the unfinished `.<name>.tmp`
    folder (if any) holds `partial`; progress.json says `progress`; events.jsonl ends with `last_event`
    (then with half a line if `torn_event`)."""
    root = out / "checkpoints"
    if latest is None:
        assert not (root / "LATEST.json").exists()
    else:
        assert json.loads(_latest(out))["checkpoint"] == latest
        assert _names(root) == {"LATEST.json", latest, *also}
    if partial is not None:
        (tmp,) = [p for p in root.iterdir() if p.name.endswith(".tmp") and p.is_dir()]
        assert _names(tmp) == partial
    if progress is not None:
        saved = json.loads((root / latest / "progress.json").read_text())
        assert {k: saved[k] for k in progress} == progress
    assert (out / "events.jsonl").read_bytes().endswith(b"\n") != torn_event
    if last_event is not None:
        event = _events(out)[-1]
        assert {k: event[k] for k in last_event} == last_event
    assert (out / "results.json").exists() == results
    assert not (out / "report.html").exists()


# --- killing a subprocess from outside -----------------------------------------------------------------


def _start(*args: str | Path) -> subprocess.Popen:
    cmd = [str(LIFELONG), *map(str, args), "--no-progress"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay: float = 0.0) -> bool:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds; False if it ended on its own first."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)  # a no-op if it has just ended
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == KILLED:
        return True
    assert proc.returncode == 0, err
    return False


def _events(run: Path) -> list[dict[str, Any]]:
    path = run / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def _latest(run: Path) -> bytes:
    try:
        return (run / "checkpoints" / "LATEST.json").read_bytes()
    except FileNotFoundError:
        return b""


# --- comparing two run directories ---------------------------------------------------------------------

RESULT_KEYS = (
    "metric",
    "matrix",
    "initial",
    "summary",
    "stability_gap",
    "config",
    "seed",
    "method",
    "experience_names",
    "experience_start_steps",
)


def assert_same_run(reference: Path, run: Path) -> None:
    ref, got = (json.loads((d / "results.json").read_text()) for d in (reference, run))
    for key in RESULT_KEYS:
        assert got[key] == ref[key], f"results.json differs in {key!r}"
    assert got["stability_gap"]  # every config evaluates between checkpoints

    # the final checkpoint: every tensor bit for bit (model, optimizer, method state, RNG)
    ref_latest, got_latest = (json.loads(_latest(d)) for d in (reference, run))
    assert got_latest["checkpoint"] == ref_latest["checkpoint"]
    assert sorted(got_latest["files"]) == sorted(ref_latest["files"])
    ref_ckpt = reference / "checkpoints" / ref_latest["checkpoint"]
    got_ckpt = run / "checkpoints" / got_latest["checkpoint"]
    for name in ref_latest["files"]:
        if name.endswith(".safetensors"):
            a, b = load_file(ref_ckpt / name), load_file(got_ckpt / name)
            assert sorted(a) == sorted(b), name
            for key in a:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{name}: {key}"
            assert (got_ckpt / name).read_bytes() == (ref_ckpt / name).read_bytes(), name
        elif name == "progress.json":
            a, b = (json.loads((d / name).read_text()) for d in (ref_ckpt, got_ckpt))
            # wall time (also per experience, for tokens/s); events.jsonl holds resume events
            for timing in ("wall_seconds", "events_bytes", "train_seconds"):
                a.pop(timing, None), b.pop(timing, None)
            assert a == b
        else:
            assert (got_ckpt / name).read_bytes() == (ref_ckpt / name).read_bytes(), name
    # what was written during training, as it would have been without the kills
    for kind in ("start", "eval", "experience_end"):
        # every event carries the wall-clock time it was written at: the rest must be identical
        ref_events = [{**e, "time": None} for e in _events(reference) if e["event"] == kind]
        got_events = [{**e, "time": None} for e in _events(run) if e["event"] == kind]
        assert got_events == ref_events, f"{kind} events differ"
    # a killed save leaves nothing behind once the run has gone on: one checkpoint and its index
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        ["LATEST.json", got_latest["checkpoint"]]
    )
    assert (run / "report.html").exists()
    assert not list(run.glob(".*.tmp"))


# --- tests ---------------------------------------------------------------------------------------------


def test_reference_runs_are_reproducible_and_exercise_the_state(reference, tmp_path):
    """The uninterrupted CLI run equals the in-process reference, and the config really has the state the
    other tests rely on: evaluations between checkpoints, a full replay memory, momentum buffers."""
    ref = reference("replay")
    config = write_config(tmp_path, "replay")
    lifelong("run", config, "--out", tmp_path / "run")
    assert_same_run(ref, tmp_path / "run")
    events = _events(ref)
    # a checkpoint every 6 steps and at the end of every experience (16 steps each)
    expected = []
    for step in range(1, 81):
        expected += [(step, f"step-{step:09d}")] if step % 6 == 0 else []
        expected += [(step, f"exp-{step // 16:04d}")] if step % 16 == 0 else []
    assert [(e["step"], e["name"]) for e in events if e["event"] == "checkpoint"] == expected
    evals = [e["step"] for e in events if e["event"] == "eval"]
    assert evals == list(range(4, 81, 4))
    latest = json.loads(_latest(ref))["checkpoint"]
    memory = json.loads((ref / "checkpoints" / latest / "method-0-replay.json").read_text())
    assert memory["memory.size"] == 100 and memory["memory.seen"] == 600
    assert any(
        k.endswith(".momentum_buffer")
        for k in load_file(ref / "checkpoints" / latest / "optimizer.safetensors")
    )


def test_killed_inside_checkpoint_writes_then_resumed(reference, tmp_path):
    """Kills before the first checkpoint, in the middle of a checkpoint file, in the middle of LATEST.json
    (the new checkpoint directory is complete but not current), and between two checkpoints."""
    config, out = write_config(tmp_path, "replay"), tmp_path / "run"
    kill_chain(
        config,
        out,
        [
            (  # before anything was checkpointed: the resume starts over
                {"kill": "save_start", "name": "step-000000006"},
                {"latest": None, "last_event": {"event": "eval", "step": 4}},
            ),
            (  # optimizer.safetensors of the third checkpoint half written
                {"kill": "torn_file", "name": "step-000000018", "n": 2},
                {
                    "latest": "exp-0001",
                    "also": {".step-000000018.tmp"},
                    "partial": {"model.safetensors", ".optimizer.safetensors.*.tmp"},
                },
            ),
            (  # exp-0002/ complete, LATEST.json half written: step-000000030 is still current
                {"kill": "torn_latest", "name": "exp-0002"},
                {"latest": "step-000000030", "also": {"exp-0002", ".LATEST.json.*.tmp"}},
            ),
            (  # step 39: between the checkpoints of steps 36 and 42, after the eval of step 36
                {"kill": "step", "n": 9},
                {"latest": "step-000000036", "last_event": {"event": "checkpoint", "step": 36}},
            ),
        ],
    )
    assert_same_run(reference("replay"), out)


def test_killed_around_checkpoints_and_events_then_resumed(reference, tmp_path):
    """Kills right after LATEST.json (old checkpoint not yet removed) at an experience boundary, right
    after the checkpoint taken at the last step of an experience (before its evaluation), right after an
    eval event that no checkpoint covers, after the last checkpoint directory but before LATEST.json names
    it, and after results.json while the report is written."""
    config, out = write_config(tmp_path, "replay"), tmp_path / "run"
    kill_chain(
        config,
        out,
        [
            (  # LATEST.json names exp-0001; step-000000012 is not removed yet
                {"kill": "after_latest", "name": "exp-0001"},
                {"latest": "exp-0001", "also": {"step-000000012"}},
            ),
            (  # the checkpoint at the last step of experience 2, before its evaluation
                {"kill": "after_save", "name": "step-000000048"},
                {
                    "latest": "step-000000048",
                    "progress": {"experience": 2, "epoch": 2, "batch": 0, "step": 48},
                    "last_event": {"event": "eval", "step": 48},
                },
            ),
            (  # the eval of step 60 is written, the checkpoint of step 60 is not
                {"kill": "event_eval", "n": 3},
                {"latest": "step-000000054", "last_event": {"event": "eval", "step": 60}},
            ),
            (  # the last checkpoint is complete, but LATEST.json does not name it yet
                {"kill": "before_latest", "name": "exp-0005"},
                {"latest": "step-000000078", "also": {"exp-0005"}},
            ),
            (  # results.json is written, the report is not
                {"kill": "report"},
                {"latest": "exp-0005", "results": True},
            ),
        ],
    )
    assert_same_run(reference("replay"), out)


def test_killed_while_config_json_is_written(reference, tmp_path):
    """Killed before the run directory holds a config: nothing to resume, and `lifelong run` starts over
    in the same directory (the half-written temporary file does not make it 'not a run directory')."""
    config, out = write_config(tmp_path, "replay"), tmp_path / "run"
    lifelong("run", config, "--out", out, kill={"kill": "torn_config"})
    assert not (out / "config.json").exists()
    result = CliRunner().invoke(app, ["resume", str(out), "--no-progress"])
    assert result.exit_code == 2 and "nothing to resume" in result.output
    lifelong("run", config, "--out", out)
    assert_same_run(reference("replay"), out)


def test_killed_from_outside_several_times(reference, tmp_path):
    """SIGKILL sent by the test: after the second checkpoint event of `lifelong run`, then to each
    `lifelong resume` right after (and at fixed delays after) the first new checkpoint it writes."""
    config, out = write_config(tmp_path, "replay"), tmp_path / "run"
    kills = 0
    proc = _start("run", config, "--out", out)
    done = not _kill_when(proc, lambda: sum(e["event"] == "checkpoint" for e in _events(out)) >= 2)
    kills += not done
    for delay in (0.0, 0.12, 0.05, 0.3):
        if done:
            break
        before = _latest(out)
        proc = _start("resume", out)
        done = not _kill_when(proc, lambda before=before: _latest(out) not in (b"", before), delay)
        kills += not done
    if not done:
        proc = _start("resume", out)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert kills >= 3
    assert_same_run(reference("replay"), out)


def test_joint_with_adam_resumed_at_a_boundary_and_mid_experience(reference, tmp_path):
    config, out = write_config(tmp_path, "joint"), tmp_path / "run"
    kill_chain(
        config,
        out,
        [
            (  # at a boundary: Adam's state is carried into experience 1
                {"kill": "after_latest", "name": "exp-0001"},
                {"latest": "exp-0001", "also": {"step-000000008"}},
            ),
            (  # step 20, before its checkpoint; the weights Joint resets to come from its saved state
                {"kill": "step", "n": 10},
                {"latest": "step-000000016", "last_event": {"event": "eval", "step": 18}},
            ),
            (  # half of the eval event of step 21 written
                {"kill": "torn_event_eval", "n": 2},
                {
                    "latest": "step-000000020",
                    "last_event": {"event": "checkpoint", "step": 20},
                    "torn_event": True,
                },
            ),
        ],
    )
    assert_same_run(reference("joint"), out)


def test_gpt_text_run_resumed(reference, tmp_path):
    config, out = write_config(tmp_path, "gpt"), tmp_path / "run"
    kill_chain(
        config,
        out,
        [
            (  # model.safetensors (tied weights stored once) half written
                {"kill": "torn_file", "name": "step-000000006", "n": 1},
                {
                    "latest": "step-000000003",
                    "also": {".step-000000006.tmp"},
                    "partial": {".model.safetensors.*.tmp"},
                },
            ),
            (  # step 10: dropout RNG, AdamW moments and the LR schedule mid-way
                {"kill": "step", "n": 7},
                {"latest": "step-000000009", "last_event": {"event": "checkpoint", "step": 9}},
            ),
        ],
    )
    assert_same_run(reference("gpt"), out)
