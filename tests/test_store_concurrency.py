"""Several processes on one store, on SQLite and on PostgreSQL: readers never see an error or a half version
while a writer commits; two writers at once get distinct, consecutive version numbers and leave an index
that passes its checks; a writer that waits longer than its lock timeout fails with a message naming the
store; and `gc` run while a version is being written leaves that version alone.

The processes run `WORKER` (a few lines over the store's Python API, no torch, so they start fast); they
add versions with `Store.add_version` on copies of a small run-like directory, since what the store does with
a version's files (checksums, rename, row) does not depend on what the files hold. Processes meet through
signal files: `wait_for(name)` / `signal(name)` in the worker, `touch` / `wait_for` here.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lifelong.store import Store
from lifelong.store.index import StoreBusyError

ENV = {**{k: v for k, v in os.environ.items() if k != "LIFELONG_STORE_DB"}, "PYTHONUNBUFFERED": "1"}
BACKENDS = ["sqlite", "postgres"]

WORKER = r"""
import json, shutil, sys, time
from pathlib import Path

plan = json.loads(sys.argv[1])
signals = Path(plan["signals"])

from lifelong.store import store as st
from lifelong.store.store import Store

def wait_for(name):
    deadline = time.monotonic() + 60
    while not (signals / name).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {plan['op']}: signal {name} never came")
        time.sleep(0.005)

def signal(name):
    (signals / name).touch()

def add(store, i):
    staged = store.new_staging()
    shutil.copytree(plan["run"], staged / "run")
    parent = store.promoted()
    number = None if parent is None else parent.number
    return store.add_version(
        staged, parent=number, origin="import", architecture="fake", kind="classification",
        config={"writer": plan.get("name"), "i": i}, methods=[], data=[],
        metrics={"metric": "accuracy", "mean": 0.5}, gate=None, promote=True, reason="test",
        expected_promoted=number,
    )

op = plan["op"]
if op == "add":  # n versions, each promoted and tagged NAME-i
    store = Store(plan["store"])
    wait_for("go")
    numbers = []
    for i in range(plan["n"]):
        numbers.append(add(store, i).number)
        store.tag(numbers[-1], f"{plan['name']}-{i}")
    print(json.dumps(numbers))
elif op == "read":  # until told to stop: list, resolve `promoted`, verify every version
    kept, seen = Store(plan["store"]), []
    while True:
        last = (signals / "stop").exists()
        for store in (Store(plan["store"]), kept):  # a fresh store object, and one kept open
            versions = store.versions()
            numbers = [v.number for v in versions]
            assert numbers == list(range(1, len(numbers) + 1)), numbers
            assert not seen or len(numbers) >= seen[-1], (seen[-1], numbers)
            for v in versions:
                store.directory(v)
            promoted = store.version("promoted")
            assert promoted.promoted
            store.directory(promoted)
            seen.append(len(numbers))
            if store is not kept:
                store.index.engine.dispose()
        signal(f"reading-{plan['name']}")
        if last:
            break
    print(json.dumps({"iterations": len(seen), "counts": sorted(set(seen))}))
elif op == "hold":  # the writer lock, held until released
    from lifelong.store import index as ix
    store = Store(plan["store"])
    with store.index.write() as connection:
        ix.add_log(connection, "holder", "hold", None, {}, st.now())
        signal("held")
        wait_for("release")
    print("released")
elif op == "pause":  # one version, paused at `plan["at"]` until released
    store = Store(plan["store"])
    if plan["at"] == "commit":  # inside the transaction: the directory published, the row not committed
        def pause(number):
            signal("paused")
            wait_for("release")
        st._before_commit = pause
    else:  # checksumming the staged directory
        real = st.write_manifest
        def write_manifest(directory):
            signal("paused")
            wait_for("release")
            return real(directory)
        st.write_manifest = write_manifest
    print(json.dumps(add(store, 0).number))
"""


# --- helpers -----------------------------------------------------------------------------------------------


@contextmanager
def opened(path: Path, lock_timeout: float | None = None) -> Iterator[Store]:
    store = Store(path) if lock_timeout is None else Store(path, lock_timeout=lock_timeout)
    try:
        yield store
    finally:
        store.index.engine.dispose()


class Workers:
    """Worker processes on one store, and the folder of their signal files."""

    def __init__(self, store: Path, run: Path, signals: Path) -> None:
        self.store, self.run, self.signals = store, run, signals
        self.signals.mkdir()
        self.procs: list[subprocess.Popen] = []

    def start(self, op: str, **plan: Any) -> subprocess.Popen:
        where = {"store": str(self.store), "run": str(self.run), "signals": str(self.signals)}
        plan = {"op": op, **where, **plan}
        cmd = [sys.executable, "-c", WORKER, json.dumps(plan)]
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def touch(self, name: str) -> None:
        (self.signals / name).touch()

    def wait_for(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not (self.signals / name).exists():
            alive = [p for p in self.procs if p.poll() is None]
            dead = [p for p in self.procs if p.poll() not in (None, 0)]
            assert not dead, "a worker failed:\n" + "\n".join(p.communicate()[1] for p in dead)
            assert alive and time.monotonic() < deadline, f"signal {name} never came"
            time.sleep(0.005)

    def finish(self, proc: subprocess.Popen) -> str:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A store holding v1 (promoted) on each backend."""
    db = None if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()
    made = Store.init(tmp_path / "store", db=db)
    made.index.engine.dispose()
    yield made.path


@pytest.fixture
def workers(store: Path, tmp_path: Path) -> Iterator[Workers]:
    run = tmp_path / "run"  # what a finished run holds, in miniature: JSON, a checkpoint, an index
    (run / "checkpoints" / "exp-0001").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 0}))
    (run / "results.json").write_text(json.dumps({"matrix": [[0.5]]}))
    (run / "checkpoints" / "exp-0001" / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    (run / "checkpoints" / "LATEST.json").write_text(json.dumps({"checkpoint": "exp-0001"}))
    with opened(store) as s:  # v1, as the workers add theirs
        staged = s.new_staging()
        shutil.copytree(run, staged / "run")
        s.add_version(
            staged, parent=None, origin="import", architecture="fake", kind="classification", config={},
            methods=[], data=[], metrics={}, gate=None, promote=True, reason="first version",
        )  # fmt: skip
    made = Workers(store, run, tmp_path / "signals")
    yield made
    made.close()


def assert_index_sound(path: Path, numbers: range) -> None:
    """The index passes its own checks (SQLite), lists exactly `numbers`, every version verifies, and every
    directory on disk is a listed version."""
    if (path / "index.db").exists():
        with sqlite3.connect(path / "index.db") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    with opened(path) as store:
        versions = store.versions()
        assert [v.number for v in versions] == list(numbers)
        for v in versions:
            store.directory(v)
        assert {p.name for p in (path / "versions").iterdir()} == {v.directory for v in versions}
        assert [p.name for p in (path / "staging").iterdir()] == []
        assert sum(v.promoted for v in versions) == 1


# --- tests -------------------------------------------------------------------------------------------------


def test_readers_see_whole_versions_while_a_writer_commits(store: Path, workers: Workers):
    readers = [workers.start("read", name=str(i)) for i in range(2)]
    for i in range(2):
        workers.wait_for(f"reading-{i}")
    workers.touch("go")
    numbers = json.loads(workers.finish(workers.start("add", name="writer", n=8)))
    assert numbers == list(range(2, 10))
    workers.touch("stop")
    counts: set[int] = set()
    for reader in readers:
        seen = json.loads(workers.finish(reader))
        assert seen["counts"][0] == 1 and seen["counts"][-1] == 9, seen
        assert seen["iterations"] >= 4, seen
        counts |= set(seen["counts"])
    assert len(counts) >= 3, counts  # the readers ran while the writer committed: they saw versions arrive
    assert_index_sound(store, range(1, 10))


def test_two_writers_get_distinct_consecutive_numbers(store: Path, workers: Workers):
    writers = [workers.start("add", name=name, n=5) for name in ("a", "b")]
    workers.touch("go")  # both start adding at once
    got = [json.loads(workers.finish(w)) for w in writers]
    assert sorted(got[0] + got[1]) == list(range(2, 12))
    assert all(numbers == sorted(numbers) for numbers in got)
    assert_index_sound(store, range(1, 12))
    with opened(store) as s:
        versions = {v.number: v for v in s.versions()}
        for name, numbers in zip("ab", got, strict=True):
            for i, number in enumerate(numbers):
                assert versions[number].tags == [f"{name}-{i}"]
                assert versions[number].config == {"writer": name, "i": i}
        log = s.log()
        assert sorted(e["version"] for e in log if e["action"] == "add") == list(range(1, 12))
        assert [e["action"] for e in log].count("tag") == 10


def test_a_writer_past_its_lock_timeout_fails_naming_the_store(store: Path, workers: Workers):
    holder = workers.start("hold")
    workers.wait_for("held")
    with opened(store, lock_timeout=0.2) as s:
        assert [v.number for v in s.versions()] == [1]  # readers do not wait for the writer
        began = time.monotonic()
        with pytest.raises(StoreBusyError) as caught:
            s.tag(1, "busy")
        assert time.monotonic() - began < 10
        message = str(caught.value)
        assert str(store) in message, message  # the user knows the store by its folder
        assert "0.2 s" in message, message
        assert s.version(1).tags == []
    workers.touch("release")
    assert workers.finish(holder).strip() == "released"
    with opened(store, lock_timeout=0.2) as s:
        assert s.tag(1, "free").tags == ["free"]
    assert_index_sound(store, range(1, 2))


@pytest.mark.parametrize("at", ["manifest", "commit"])
def test_gc_while_a_version_is_written_leaves_it_whole(store: Path, workers: Workers, at: str):
    """`gc` from another process while a writer checksums its staged directory (no longer marked with the
    writer's pid), or waits inside its transaction with the directory already in versions/: the
    directory is not a leftover, and the version commits whole."""
    writer = workers.start("pause", at=at)
    workers.wait_for("paused")
    folder = store / ("staging" if at == "manifest" else "versions")
    before = {p.name for p in folder.iterdir()}

    done: list[Any] = []

    def collect() -> None:
        try:
            with opened(store) as s:
                done.append(s.gc())
        except BaseException as e:  # reported below, in the test's thread
            done.append(e)

    thread = threading.Thread(target=collect)
    thread.start()
    # gc either waits for the writer's lock or finishes; give it the time to remove what it would remove
    thread.join(timeout=3)
    lost = before - {p.name for p in folder.iterdir()}
    workers.touch("release")
    out, err = writer.communicate(timeout=60)
    thread.join(timeout=60)
    assert not thread.is_alive() and not isinstance(done[0], BaseException), done
    assert writer.returncode == 0, f"the writer failed after gc removed {sorted(lost)}:\n{err}"
    assert json.loads(out) == 2
    assert not lost, f"gc removed {sorted(lost)} while the writer was using it"
    assert_index_sound(store, range(1, 3))
