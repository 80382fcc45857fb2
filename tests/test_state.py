"""Unit tests of `lifelong.state`: atomic files, checkpoint round trips, damage detection, no pickle."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lifelong import state as st
from lifelong.errors import StateError
from lifelong.methods import Method, Replay
from lifelong.models import MLP, TinyGPT
from lifelong.streams.experience import Split

# --- atomic files --------------------------------------------------------------------------------------


def test_atomic_write_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    digest = st.atomic_write_bytes(path, b"first")
    assert digest == hashlib.sha256(b"first").hexdigest()
    st.atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    st.atomic_write_json(tmp_path / "sub" / "b.json", {"x": [1, 2.5, None], "nan": float("nan")})
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.bin", "b.json"]
    back = st.read_json(tmp_path / "sub" / "b.json")
    assert back["x"] == [1, 2.5, None] and back["nan"] != back["nan"]


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    st.atomic_write_json(path, {"v": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        st.atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert st.read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_read_json_errors(tmp_path):
    with pytest.raises(StateError, match="does not exist"):
        st.read_json(tmp_path / "missing.json", "run config")
    (tmp_path / "bad.json").write_text('{"a": 1')
    with pytest.raises(StateError, match=r"run config .*bad\.json is damaged \(not valid JSON"):
        st.read_json(tmp_path / "bad.json", "run config")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StateError, match="damaged"):
        st.read_json(tmp_path / "bin.json")


def test_split_state():
    tensors, meta = st.split_state(
        {"w": torch.ones(2), "n": 3, "name": "x", "g": torch.Generator().get_state()}
    )
    assert sorted(tensors) == ["g", "w"] and meta == {"n": 3, "name": "x"}


# --- checkpoint round trip -----------------------------------------------------------------------------


class Stateful(Method):
    """A method whose state mixes tensors of several dtypes, JSON values and a generator's state."""

    name = "stateful"

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.table = torch.zeros(3, 4)
        self.mask = torch.zeros(5, dtype=torch.bool)
        self.counts = torch.zeros(2, dtype=torch.int64)
        self.half = torch.zeros(3, dtype=torch.bfloat16)
        self.info: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "table": self.table,
            "mask": self.mask,
            "counts": self.counts,
            "half": self.half,
            "info": self.info,
            "steps": 17,
            "tag": "t",
            "scale": 0.1,
            "history": [1.5, 2.25],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.table, self.mask, self.counts, self.half = (
            state[k] for k in ("table", "mask", "counts", "half")
        )
        self.info = state["info"]
        assert (state["steps"], state["tag"], state["scale"], state["history"]) == (17, "t", 0.1, [1.5, 2.25])


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 50, (4, 8), generator=g)
        loss = model(x).logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _gpt(seed: int) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(50, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda params: torch.optim.Adam(params, lr=0.01),
        lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_checkpoint_round_trip_continues_bit_identically(tmp_path, make_optimizer):
    """Tied GPT weights, optimizer state, method state (tensors, JSON, a generator) and the torch RNG come
    back exactly: continuing from the restored objects gives the same bits as continuing the originals."""
    model = _gpt(0)
    optimizer = make_optimizer(model.parameters())
    _train(model, optimizer, 3, seed=1)
    method = Stateful(seed=5)
    torch.rand(3, generator=method.generator)
    method.table.normal_(generator=method.generator)
    method.mask[1] = True
    method.counts += torch.tensor([7, 2**40])
    method.half += 1.5
    method.info = {"seen": [1, 2], "nested": {"a": None}}
    replay = Replay(memory=6, seed=2)
    for i in range(3):
        x = torch.randint(0, 50, (4, 8))
        replay.memory.add(Split(x, x + i))
    progress = {"experience": 1, "epoch": 0, "batch": 3, "step": 11, "matrix": [[0.5, 0.25]], "evals": []}
    torch.manual_seed(123)
    torch.rand(2)
    path = st.save_checkpoint(
        tmp_path,
        model=model,
        optimizer=optimizer,
        methods=[method, replay],
        progress=progress,
        rng={"torch": torch.get_rng_state()},
        name="step-000000011",
    )
    assert path == tmp_path / "checkpoints" / "step-000000011"
    # the tied head is stored once (safetensors refuses shared storage)
    stored = load_file(path / "model.safetensors")
    assert "tok.weight" in stored and "head.weight" not in stored

    ckpt = st.read_checkpoint(tmp_path)
    assert ckpt["progress"] == progress and ckpt["path"] == path
    model2 = _gpt(99)
    optimizer2 = make_optimizer(model2.parameters())
    method2, replay2 = Stateful(seed=0), Replay(memory=6, seed=0)
    st.restore(ckpt, model=model2, optimizer=optimizer2, methods=[method2, replay2])
    assert model2.head.weight is model2.tok.weight  # still tied
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for k in ("table", "mask", "counts", "half"):
        assert getattr(method2, k).dtype == getattr(method, k).dtype and torch.equal(
            getattr(method2, k), getattr(method, k)
        )
    assert method2.info == method.info
    assert torch.equal(torch.rand(4, generator=method2.generator), torch.rand(4, generator=method.generator))
    a, b = replay.memory.sample(4), replay2.memory.sample(4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and replay2.memory.seen == 12
    torch.set_rng_state(ckpt["rng"]["torch"])
    after_restore = torch.rand(3)
    torch.manual_seed(123)
    torch.rand(2)
    assert torch.equal(after_restore, torch.rand(3))

    # the optimizer state is exact: a few more steps give the same weights, bit for bit
    _train(model, optimizer, 2, seed=7)
    _train(model2, optimizer2, 2, seed=7)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_without_optimizer_or_methods(tmp_path):
    model = MLP((4,), 3, hidden=[5])
    st.save_checkpoint(
        tmp_path,
        model=model,
        optimizer=None,
        methods=[],
        progress={},
        rng={"torch": torch.get_rng_state()},
        name="a",
    )
    ckpt = st.read_checkpoint(tmp_path)
    assert ckpt["optimizer"] is None and ckpt["methods"] == []
    fresh = MLP((4,), 3, hidden=[5])
    st.restore(ckpt, model=fresh, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1), methods=[])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))


def test_restore_refuses_another_model_or_other_methods(tmp_path):
    save(tmp_path, "a", methods=[Replay(memory=4)])
    ckpt = st.read_checkpoint(tmp_path)
    with pytest.raises(StateError, match="does not fit this model"):
        st.restore(ckpt, model=MLP((4,), 3, hidden=[7]), optimizer=None, methods=[Replay(memory=4)])
    with pytest.raises(StateError, match=r"checkpoint has methods \['replay'\] but this run has \[\]"):
        st.restore(ckpt, model=MLP((4,), 3, hidden=[5]), optimizer=None, methods=[])


# --- checkpoints on disk -------------------------------------------------------------------------------


def save(run_dir: Path, name: str, methods: list[Method] | None = None, step: int = 0) -> Path:
    torch.manual_seed(step)
    model = MLP((4,), 3, hidden=[5])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return st.save_checkpoint(
        run_dir,
        model=model,
        optimizer=optimizer,
        methods=methods or [],
        progress={"step": step},
        rng={"torch": torch.get_rng_state()},
        name=name,
    )


def test_a_new_checkpoint_replaces_the_previous_one(tmp_path):
    assert not st.has_checkpoint(tmp_path)
    save(tmp_path, "step-000000005", step=5)
    assert st.has_checkpoint(tmp_path)
    save(tmp_path, "step-000000010", step=10)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["LATEST.json", "step-000000010"]
    assert st.read_checkpoint(tmp_path)["progress"] == {"step": 10}
    index = json.loads((root / "LATEST.json").read_text())
    assert index["checkpoint"] == "step-000000010"
    for name, digest in index["files"].items():
        assert hashlib.sha256((root / "step-000000010" / name).read_bytes()).hexdigest() == digest
    assert not [p for p in (root / "step-000000010").iterdir() if p.name.startswith(".")]


def test_leftovers_of_a_killed_save_are_ignored_then_cleaned(tmp_path):
    """A save killed half-way leaves `.<name>.tmp/` (and maybe a complete but unnamed checkpoint folder and a
    `.LATEST.json.*.tmp`): reading uses LATEST.json only, and the next save removes all of it."""
    save(tmp_path, "step-000000005", step=5)
    root = tmp_path / "checkpoints"
    (root / ".step-000000010.tmp").mkdir()
    (root / ".step-000000010.tmp" / "model.safetensors").write_bytes(b"half a file")
    (root / ".step-000000010.tmp" / ".optimizer.safetensors.k2j4h5g6.tmp").write_bytes(b"ha")
    (root / ".LATEST.json.a1b2c3d4.tmp").write_text('{"checkpoint": "step-0000')
    save(tmp_path / "other", "step-000000010", step=10)
    os.replace(tmp_path / "other" / "checkpoints" / "step-000000010", root / "step-000000010")
    assert st.read_checkpoint(tmp_path)["progress"] == {"step": 5}
    save(tmp_path, "step-000000010", step=10)  # the save that was killed, done again
    assert sorted(p.name for p in root.iterdir()) == ["LATEST.json", "step-000000010"]
    (root / ".step-000000015.tmp").mkdir()
    (root / "step-000000005").mkdir()  # an old checkpoint a killed save had no time to remove
    save(tmp_path, "exp-0001", step=16)
    assert sorted(p.name for p in root.iterdir()) == ["LATEST.json", "exp-0001"]
    assert st.read_checkpoint(tmp_path)["progress"] == {"step": 16}


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    ["flip-first", "flip-middle", "flip-last", "truncate", "empty", "append"],
)
def test_a_damaged_checkpoint_file_is_refused(tmp_path, damage):
    path = save(tmp_path, "exp-0001", methods=[Replay(memory=4)])
    for name in sorted(p.name for p in path.iterdir()):
        file = path / name
        original = file.read_bytes()
        if damage.startswith("flip"):
            _flip_byte(file, {"flip-first": 0, "flip-middle": len(original) // 2, "flip-last": -1}[damage])
        elif damage == "truncate":
            file.write_bytes(original[: len(original) // 2])
        elif damage == "empty":
            file.write_bytes(b"")
        else:
            file.write_bytes(original + b"\n")
        with pytest.raises(StateError) as err:
            st.read_checkpoint(tmp_path)
        message = str(err.value)
        assert f"{file} is damaged" in message and "SHA-256" in message and "backup" in message, message
        file.write_bytes(original)
    st.read_checkpoint(tmp_path)  # undamaged again


def test_a_missing_checkpoint_file_is_refused(tmp_path):
    path = save(tmp_path, "exp-0001")
    (path / "optimizer.json").unlink()
    with pytest.raises(StateError, match=r"optimizer\.json is missing"):
        st.read_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"checkpoint": "exp-0001", "fi',  # truncated
        b"\x00\x17garbage\xff",
        b"[]",
        b'"exp-0001"',
        b'{"checkpoint": 5, "files": {}}',
        b'{"checkpoint": "exp-0001", "files": []}',
        b'{"checkpoint": "exp-0001", "files": {}}',  # names none of the required files
        b'{"checkpoint": "../..", "files": {"model.safetensors": "0", "rng.safetensors": "0", '
        b'"progress.json": "0"}}',
        b'{"checkpoint": "exp-0001", "files": {"../../config.json": "0", "model.safetensors": "0", '
        b'"rng.safetensors": "0", "progress.json": "0"}}',
    ],
    ids=[
        "empty",
        "truncated",
        "garbage",
        "list",
        "string",
        "bad-name",
        "files-list",
        "no-files",
        "traversal",
        "file-traversal",
    ],
)
def test_a_damaged_latest_json_is_refused(tmp_path, content):
    save(tmp_path, "exp-0001")
    latest = tmp_path / "checkpoints" / "LATEST.json"
    latest.write_bytes(content)
    with pytest.raises(StateError, match=r"checkpoint index .*LATEST\.json is damaged .*backup"):
        st.read_checkpoint(tmp_path)


def test_latest_naming_a_missing_checkpoint(tmp_path):
    path = save(tmp_path, "exp-0001")
    path.rename(path.with_name("exp-0002"))
    with pytest.raises(StateError, match=r"exp-0001/model\.safetensors is missing"):
        st.read_checkpoint(tmp_path)


# --- nothing is ever unpickled -------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a checkpoint was unpickled")

    class Refused(pickle.Unpickler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            refuse()

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (torch, "load"),
        (torch.serialization, "load"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refused)


def test_reading_and_restoring_never_unpickles(tmp_path, no_unpickling):
    model = _gpt(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _train(model, optimizer, 1, seed=0)
    replay = Replay(memory=4)
    replay.memory.add(Split(torch.zeros(3, 8, dtype=torch.long), torch.zeros(3, 8, dtype=torch.long)))
    st.save_checkpoint(
        tmp_path,
        model=model,
        optimizer=optimizer,
        methods=[replay],
        progress={"step": 1},
        rng={"torch": torch.get_rng_state()},
        name="a",
    )
    assert {p.suffix for p in (tmp_path / "checkpoints" / "a").iterdir()} == {".safetensors", ".json"}
    fresh = _gpt(1)
    st.restore(
        st.read_checkpoint(tmp_path),
        model=fresh,
        optimizer=torch.optim.Adam(fresh.parameters(), lr=0.01),
        methods=[Replay(memory=4)],
    )


def test_a_whole_run_and_its_resume_never_unpickle(tmp_path, monkeypatch, no_unpickling):
    """`run_config`, interrupted after its first checkpoint, then `resume` to the end, with every unpickler
    disabled; the resumed run ends as an uninterrupted one."""
    from lifelong.experiment import parse_config, resume, run_config

    cfg = parse_config(
        {
            "data": {"name": "digits", "train_per_class": 8, "test_per_class": 4},
            "scenario": {"type": "class_incremental", "experiences": 2},
            "model": {"name": "mlp", "hidden": [8]},
            "method": {"name": "replay", "memory": 10},
            "train": {"batch_size": 8, "momentum": 0.5, "checkpoint_every": 3},
        }
    )
    reference = run_config(cfg, tmp_path / "reference", progress=False)
    save_checkpoint = st.save_checkpoint

    def stop_after_first(run_dir: Path, **kwargs: Any) -> Path:
        save_checkpoint(run_dir, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_config(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(st, "save_checkpoint", save_checkpoint)
    assert st.read_checkpoint(tmp_path / "run")["progress"]["step"] == 3
    results = resume(tmp_path / "run", progress=False)
    assert results.matrix == reference.matrix and results.initial == reference.initial
    for name in ("model.safetensors", "optimizer.safetensors", "method-0-replay.safetensors"):
        a, b = (
            load_file(d / "checkpoints" / "exp-0002" / name)
            for d in (tmp_path / "reference", tmp_path / "run")
        )
        assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_resume_removes_a_checkpoint_left_behind_after_latest_moved_on(tmp_path):
    # a kill between LATEST.json naming the last checkpoint and the removal of the previous one: the
    # resumed run takes no further step (so saves no checkpoint), yet must leave no stale checkpoint
    from lifelong import datasets
    from lifelong.learner import Learner
    from lifelong.models import MLP
    from lifelong.streams import class_incremental

    stream = class_incremental(datasets.load("digits"), experiences=2)

    def learner() -> Learner:
        torch.manual_seed(0)
        return Learner(MLP(stream.input_shape, 10, [16]), run_dir=tmp_path / "run", progress=False)

    first = learner().run(stream)
    checkpoints = tmp_path / "run" / "checkpoints"
    (tmp_path / "run" / "results.json").unlink()
    (checkpoints / "step-000000009").mkdir()
    (checkpoints / ".LATEST.json.abc.tmp").write_text("{")
    again = learner().run(stream, resume=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST.json", "exp-0002"]
    assert again.matrix == first.matrix
