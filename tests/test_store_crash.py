"""A store write killed with SIGKILL at any point leaves the store as it was before the write, or with the
whole new version: never a row without its directory, never a half version; `gc` removes what the dead
writer left, and the next `update` ends exactly where an update that was never killed ends. On SQLite and on
PostgreSQL. Also: a version whose files were changed after it was written is refused, naming the file.

As in test_resume.py, the killed subprocess is the real CLI started through a few lines of test code
(`RUNNER`) that wrap one internal function and SIGKILL their own process there:

- training: the candidate's first checkpoint (the learner is running in staging/);
- manifest: MANIFEST.json half written (its temporary file) inside `write_manifest`;
- publish: the checksummed directory renamed into versions/, no row yet (`_publish` returned);
- commit: inside the index transaction, every row inserted, before the commit (`_before_commit`);
- committed: `add_version` returned, the row committed, nothing after it ran.

Version 1 is trained once per backend and copied for each test (a SQLite store's folder holds its index;
a PostgreSQL store's index is cloned with `CREATE DATABASE ... TEMPLATE`). Subprocesses and in-process
updates run with one intra-op thread, so their weights can be compared byte for byte.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from typer.testing import CliRunner

from lifelong import cli_store
from lifelong.cli import app
from lifelong.store import Store
from lifelong.store.forget import forget
from lifelong.store.gate import GatePolicy
from lifelong.store.store import MANIFEST
from lifelong.store.update import update

ENV = {
    **{k: v for k, v in os.environ.items() if k != "LIFELONG_STORE_DB"},
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
KILLED = -signal.SIGKILL
BACKENDS = ["sqlite", "postgres"]
LENIENT = GatePolicy(tolerance=1.0, max_negative_flip_rate=1.0)  # every candidate passes: v2 is promoted

V1: dict[str, Any] = {
    "data": {"name": "fashion_mnist", "train_per_class": 30, "test_per_class": 10},
    "scenario": {"type": "class_incremental", "experiences": 3, "seed": 0, "until": 1},
    "model": {"name": "mlp", "hidden": [16]},
    "method": {"name": "replay", "memory": 30},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
    "seed": 0,
}
V2 = {**V1, "scenario": {**V1["scenario"], "until": 2}}
V3 = {**V1, "scenario": {**V1["scenario"], "until": 3}}

# --- killing the CLI at an exact point ---------------------------------------------------------------------

RUNNER = r"""
import json, os, signal, sys, tempfile
from pathlib import Path

where = sys.argv.pop(1)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def torn(path, data):
    # what atomic_write_bytes leaves when killed mid-write: half of the data in its temporary file
    fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.write(fd, data[: len(data) // 2])
    die()

from lifelong import state
from lifelong.store import store as st

if where == "training":
    def save_checkpoint(run_dir, **kw):
        die()
    state.save_checkpoint = save_checkpoint
elif where == "manifest":
    real_json = st.atomic_write_json
    def atomic_write_json(path, obj):
        if Path(path).name == st.MANIFEST:
            torn(Path(path), json.dumps(obj).encode())
        return real_json(path, obj)
    st.atomic_write_json = atomic_write_json
elif where == "publish":
    real_publish = st._publish
    def _publish(staged, published):
        real_publish(staged, published)
        die()
    st._publish = _publish
elif where == "commit":
    st._before_commit = lambda number: die()
elif where == "committed":
    real_add = st.Store.add_version
    def add_version(self, *args, **kwargs):
        real_add(self, *args, **kwargs)
        die()
    st.Store.add_version = add_version
else:
    raise SystemExit(f"unknown kill point {where}")

from lifelong.cli import app
sys.argv = ["lifelong", *sys.argv[1:]]
app()
"""


def killed(where: str, *args: str | Path) -> None:
    """`lifelong ARGS` in a subprocess that SIGKILLs itself at `where`."""
    cmd = [sys.executable, "-c", RUNNER, where, *map(str, args)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == KILLED, f"not killed at {where}:\n{proc.stdout}{proc.stderr}"


# --- stores: made once, copied per test --------------------------------------------------------------------


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """As the subprocesses (OMP_NUM_THREADS=1): a matrix product's result can depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Store]:
    """A store object whose database connections are closed afterwards (a PostgreSQL database with open
    connections cannot serve as a template, and the server allows only so many)."""
    store = Store(path)
    try:
        yield store
    finally:
        store.index.engine.dispose()


def admin(postgres: Any, sql: str, *params: Any) -> None:
    import psycopg

    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(sql, params)


def clone_database(postgres: Any, url: str) -> str:
    """A copy of the database at `url` (its connections closed first: a template must be idle)."""
    source, name = url.rsplit("/", 1)[1], f"store_{uuid.uuid4().hex[:12]}"
    gc.collect()  # engines no longer referenced close their pooled connections
    admin(
        postgres,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        source,
    )
    admin(postgres, f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    return postgres.url(name)


class Prepared:
    """A store holding version 1 (promoted), to be copied."""

    def __init__(self, folder: Path, postgres: Any = None) -> None:
        self.folder, self.postgres = folder, postgres

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.folder, dest)
        if self.postgres is not None:
            marker = dest / "store.json"
            info = json.loads(marker.read_text())
            info["db"] = clone_database(self.postgres, info["db"])
            marker.write_text(json.dumps(info))
        return dest


def model_bytes(store: Store, ref: int | str) -> bytes:
    run = store.directory(store.version(ref)) / "run" / "checkpoints"
    latest = json.loads((run / "LATEST.json").read_text())["checkpoint"]
    return (run / latest / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """backend -> a `Prepared` store with version 1 trained from V1 (made once per backend)."""
    made: dict[str, Prepared] = {}

    def get(backend: str) -> Prepared:
        if backend not in made:
            postgres = request.getfixturevalue("postgres") if backend == "postgres" else None
            folder = tmp_path_factory.mktemp(f"prepared-{backend}") / "store"
            db = None if postgres is None else postgres.new_database()
            store = Store.init(folder, db=db, gate=LENIENT)
            with one_thread():
                update(store, V1, progress=False)
            store.index.engine.dispose()
            made[backend] = Prepared(folder, postgres)
        return made[backend]

    return get


@pytest.fixture(scope="module")
def reference(prepared: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The model weights of v1, and of v2 and v3 made by updates that were never killed (SQLite)."""
    folder = prepared("sqlite").copy(tmp_path_factory.mktemp("reference") / "store")
    with opened(folder) as store, one_thread():
        v1 = model_bytes(store, 1)
        assert update(store, V2, progress=False).version.number == 2
        assert update(store, V3, progress=False).version.number == 3
        return {"v1": v1, "v2": model_bytes(store, 2), "v3": model_bytes(store, 3)}


# --- the command line, in-process ---------------------------------------------------------------------------


def cli(*args: str | Path) -> Any:
    """`lifelong ARGS` through CliRunner, with the error console wide enough that no message is wrapped."""
    stores: list[Store] = []

    def open_store(path: Path) -> Store:
        stores.append(Store(path))
        return stores[-1]

    with (
        mock.patch.object(cli_store.errors, "_width", 10_000),
        mock.patch.object(cli_store, "_open", open_store),
    ):
        result = CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1"})
    for store in stores:  # close the command's database connections
        store.index.engine.dispose()
    return result


def cli_json(*args: str | Path) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def assert_consistent(path: Path, numbers: list[int], promoted: int) -> list[str]:
    """`store list` shows exactly `numbers` (`promoted` served), each verifies; returns the unlisted entries
    of versions/ and staging/ (what a dead writer left) as gc names them."""
    listed = cli_json("store", "list", path)
    assert [v["version"] for v in listed] == numbers
    assert [v["version"] for v in listed if v["promoted"]] == [promoted]
    with opened(path) as store:
        versions = store.versions()
        for v in versions:
            store.directory(v)  # its files match the manifest the index names
        dirs = {v.directory for v in versions}
    on_disk = entries(path / "versions")
    assert dirs <= on_disk, "a row names a directory that does not exist"
    return sorted(
        [f"staging/{n}" for n in entries(path / "staging")] + [f"versions/{n}" for n in on_disk - dirs]
    )


def assert_collected(path: Path, leftovers: list[str]) -> None:
    """`store gc` removes exactly the leftovers; afterwards every directory is a listed version."""
    assert sorted(cli_json("store", "gc", path)["removed"]) == leftovers
    with opened(path) as store:
        assert entries(path / "versions") == {v.directory for v in store.versions()}
    assert entries(path / "staging") == set()


# --- tests -------------------------------------------------------------------------------------------------

# where -> (versions listed after the kill, promoted, what the dead writer leaves: staging/ or versions/)
POINTS: dict[str, tuple[list[int], int, str | None]] = {
    "training": ([1], 1, "staging"),
    "manifest": ([1], 1, "staging"),
    "publish": ([1], 1, "versions"),
    "commit": ([1], 1, "versions"),
    "committed": ([1, 2], 2, None),
}


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_update_killed_then_recovered(backend: str, point: str, prepared: Any, reference: dict, tmp_path):
    path = prepared(backend).copy(tmp_path / "store")
    config = tmp_path / "v2.json"  # YAML is a superset of JSON
    config.write_text(json.dumps(V2))
    killed(point, "update", path, "--config", config, "--no-progress", "--json")

    numbers, promoted, left_in = POINTS[point]
    leftovers = assert_consistent(path, numbers, promoted)
    assert [n.split("/")[0] for n in leftovers] == ([] if left_in is None else [left_in])
    if point == "training":  # killed while the learner ran: its staging folder names the dead process
        (left,) = (path / "staging").iterdir()
        assert (left / ".writer.pid").is_file() and (left / "run" / "config.json").is_file()
    if point == "manifest":
        (left,) = (path / "staging").iterdir()
        assert not (left / MANIFEST).exists()
        assert [p.name for p in left.glob(f".{MANIFEST}.*.tmp")]
    assert_collected(path, leftovers)

    with opened(path) as store, one_thread():
        assert model_bytes(store, 1) == reference["v1"]
        if point == "committed":  # the killed update's version is whole: the one an unkilled update makes
            assert model_bytes(store, 2) == reference["v2"]
            result = update(store, V3, progress=False)
            assert (result.version.number, result.promoted) == (3, True)
            assert model_bytes(store, 3) == reference["v3"]
        else:
            result = update(store, V2, progress=False)
            assert (result.version.number, result.promoted) == (2, True)
            assert model_bytes(store, 2) == reference["v2"]
    assert_consistent(path, [1, 2, 3] if point == "committed" else [1, 2], 3 if point == "committed" else 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forget_killed_leaves_the_promoted_version(backend: str, prepared: Any, reference: dict, tmp_path):
    """An approximate deletion killed inside its commit (the unlearned weights written, the version, its
    promotion and the deletion record inserted, not committed): v1 stays promoted and untouched (the
    deletion edited a copy), no deletion is recorded (a later update would exclude nothing); then the
    deletion succeeds."""
    path = prepared(backend).copy(tmp_path / "store")
    with opened(path) as store:
        data = json.loads((store.directory(store.version(1)) / "data.json").read_text())
    ids = data["experiences"][0]["train_ids"][:3]
    options = ("--approximate", "--steps", "5", "--no-progress", "--json")
    killed("commit", "forget", path, "--ids", ",".join(ids), *options)
    leftovers = assert_consistent(path, [1], 1)
    assert [n.split("/")[0] for n in leftovers] == ["versions"]
    with opened(path) as store:
        assert store.deletions() == [] and store.deleted_ids() == set()
        assert model_bytes(store, "promoted") == reference["v1"]
    assert_collected(path, leftovers)
    with opened(path) as store, one_thread():
        result = forget(store, ids, "approximate", steps=5, progress=False)
        assert (result.version.number, result.version.promoted, result.version.origin) == (2, True, "forget")
        assert store.deleted_ids() == set(ids)
        assert model_bytes(store, 1) == reference["v1"]


MODEL = "run/checkpoints/exp-0001/model.safetensors"
DAMAGES = ["truncated", "edited", "deleted", "added", "manifest"]


def damage(kind: str, directory: Path) -> str:
    """Damage a version directory as `kind` says; returns the file the refusal must name."""
    named = {"truncated": MODEL, "edited": "run/results.json", "deleted": "run/config.json"}
    named |= {"added": "run/notes.txt", "manifest": MANIFEST}
    path = directory / named[kind]
    if kind in ("truncated", "edited", "manifest"):
        data = path.read_bytes()
        path.chmod(0o644)  # version files are read-only: tampering takes a deliberate chmod
        if kind == "truncated":
            path.write_bytes(data[:100])
        elif kind == "edited":
            path.write_bytes(data + b" ")
        else:  # still valid JSON, listing the same files: only its digest in the index tells
            path.write_bytes(data.replace(b'"bytes"', b'"bytes" '))
    elif kind == "deleted":
        path.unlink()
    else:
        path.write_text("hello")
    return named[kind]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tampered_version_is_refused_naming_the_file(backend: str, prepared: Any, tmp_path):
    path = prepared(backend).copy(tmp_path / "store")
    with opened(path) as store:
        directory = store.directory(store.version(1))
    pristine = tmp_path / "pristine"
    shutil.copytree(directory, pristine)
    for kind in DAMAGES:
        named = damage(kind, directory)
        result = cli("store", "show", path, "1")
        assert result.exit_code == 2, f"{kind}: {result.output}"
        message = " ".join(result.stderr.split())
        assert f"version 1 of store {path}" in message, f"{kind}: {message}"
        assert named in message, f"{kind}: {message}"
        shutil.rmtree(directory)
        shutil.copytree(pristine, directory)
        assert cli("store", "show", path, "1").exit_code == 0, kind
