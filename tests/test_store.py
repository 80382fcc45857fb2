"""The model store on SQLite: versions, updates through the gate, promotion, rollback, tags, diff, gc and
deletion, through the command line (the interface outside checks use) and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lifelong.errors import ConfigError, DataError, StateError
from lifelong.store import Store
from lifelong.store.gate import GatePolicy
from lifelong.store.records import RUN
from lifelong.store.update import import_run, update

LENIENT = GatePolicy(tolerance=1.0, max_negative_flip_rate=1.0)  # passes every candidate
STRICT = GatePolicy(tolerance=0.0, max_negative_flip_rate=0.0)


def write_tables(folder: Path, parts: list[tuple[str, int, int]], seed: int = 0) -> Path:
    """One CSV per experience: `id`, 6 features, `label` (classes 0..2, separable by the mean of the
    features); ids are `<name>-<row>`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows, shift in parts:
        labels = rng.integers(0, 3, rows)
        x = rng.normal(size=(rows, 6)) + labels[:, None] * 1.5 + shift
        lines = ["id,f0,f1,f2,f3,f4,f5,label"]
        lines += [f"{name}-{i}," + ",".join(f"{v:.5f}" for v in x[i]) + f",{labels[i]}" for i in range(rows)]
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder


def files_config(path: Path, replay: bool = True) -> dict:
    method = [{"name": "replay", "memory": 40}] if replay else [{"name": "naive"}]
    return {
        "scenario": {"type": "files", "path": str(path), "id_column": "id", "test_fraction": 0.25},
        "model": {"name": "mlp", "hidden": [16]},
        "method": method,
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "seed": 3,
    }


def fmnist_config(until: int) -> dict:
    return {
        "data": {"name": "fashion_mnist", "train_per_class": 20, "test_per_class": 10},
        "scenario": {"type": "class_incremental", "experiences": 3, "until": until},
        "model": {"name": "mlp", "hidden": [16]},
        "method": [{"name": "replay", "memory": 30}],
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    }


def cli(*args: str | Path, expect: int | None = 0) -> subprocess.CompletedProcess:
    """`lifelong ARGS` in a subprocess; its exit code must be `expect` (None: any)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lifelong.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert expect is None or proc.returncode == expect, (
        f"exit {proc.returncode}, expected {expect}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def weights(store: Store, ref: int | str) -> dict[str, torch.Tensor]:
    directory = store.directory(store.version(ref)) / RUN / "checkpoints"
    latest = json.loads((directory / "LATEST.json").read_text())["checkpoint"]
    return load_file(str(directory / latest / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_command_line_lifecycle(tmp_path: Path) -> None:
    """init -> update (v1) -> update (gated: refused, exit 3) -> promote --force -> rollback -> tag -> diff
    -> gc, each with --json as the issue spells it."""
    store = tmp_path / "store"
    (tmp_path / "c1.yaml").write_text(json.dumps(fmnist_config(1)))
    (tmp_path / "c2.yaml").write_text(json.dumps(fmnist_config(2)))
    made = json.loads(cli("store", "init", store, "--json", "--tolerance", "0", "--max-nfr", "0").stdout)
    assert made["db"].startswith("sqlite:///")

    first = json.loads(cli("update", store, "--config", tmp_path / "c1.yaml", "--json").stdout)
    assert {"version", "parent", "promoted", "negative_flip_rate", "metrics"} <= set(first)
    assert (first["version"], first["parent"], first["promoted"]) == (1, None, True)

    # class-incremental naive-ish update: old classes drop, the strict gate refuses it with exit code 3
    second = json.loads(cli("update", store, "--config", tmp_path / "c2.yaml", "--json", expect=3).stdout)
    assert (second["version"], second["parent"], second["promoted"]) == (2, 1, False)
    assert second["negative_flip_rate"] > 0 and second["gate"]["passed"] is False
    assert second["gate"]["flips"]["per_class"] and second["gate"]["reason"]

    listed = json.loads(cli("store", "list", store, "--json").stdout)
    assert [{k: v[k] for k in ("version", "parent", "promoted")} for v in listed] == [
        {"version": 1, "parent": None, "promoted": True},
        {"version": 2, "parent": 1, "promoted": False},
    ]
    assert all("created" in v for v in listed)

    refused = cli("store", "promote", store, "2", expect=2)
    assert "failed the gate" in refused.stderr and "--force" in refused.stderr
    cli("store", "promote", store, "2", "--force", "--reason", "accepted by hand")
    assert json.loads(cli("store", "show", store, "2", "--json").stdout)["promoted"] is True
    # the order (`store show V STORE`) works too
    assert json.loads(cli("store", "show", "1", store, "--json").stdout)["version"] == 1

    back = json.loads(cli("store", "rollback", store, "--json").stdout)
    assert back == {"from": 2, "to": 1, "promoted": 1}
    past = cli("store", "rollback", store, expect=2)
    assert "first version promoted" in past.stderr

    cli("store", "tag", store, "1", "stable")
    assert json.loads(cli("store", "show", store, "stable", "--json").stdout)["tags"] == ["stable"]

    changes = json.loads(cli("store", "diff", store, "1", "2", "--json").stdout)
    assert {"key": "scenario.until", "a": 1, "b": 2} in changes["config"]
    assert (
        changes["data"]["only_in_b"]
        and changes["flips"]["negative_flip_rate"] == second["negative_flip_rate"]
    )

    assert json.loads(cli("store", "gc", store, "--json").stdout)["removed"] == []
    log = json.loads(cli("store", "log", store, "--json").stdout)
    forced = [e for e in log if e["action"] == "promote"]
    assert forced and forced[0]["forced"] is True


def test_update_continues_the_promoted_state(tmp_path: Path) -> None:
    """A candidate continues the promoted version's run (model, optimizer, replay memory, RNG): it ends
    bit-identical to one unbroken run over the longer stream."""
    from lifelong.config import parse_config
    from lifelong.experiment import run_config

    data = write_tables(tmp_path / "data", [("a", 60, 0), ("b", 60, 1)])
    more = write_tables(tmp_path / "more", [("c", 60, 2)], seed=1)
    store = Store.init(tmp_path / "store", gate=LENIENT)
    update(store, files_config(data), progress=False)
    result = update(store, files_config(more), progress=False)
    assert result.version.number == 2 and result.version.promoted
    assert result.gate is not None and result.gate["passed"] and result.gate["data"].startswith("new files")
    assert [e["name"] for e in result.version.data][-1] == "c"

    unbroken = files_config(data)
    unbroken["continued"] = [str(more)]
    run_config(parse_config(unbroken), tmp_path / "unbroken", progress=False)
    latest = json.loads((tmp_path / "unbroken/checkpoints/LATEST.json").read_text())["checkpoint"]
    assert same(
        weights(store, 2), load_file(str(tmp_path / "unbroken/checkpoints" / latest / "model.safetensors"))
    )


def test_import_and_bad_input(tmp_path: Path) -> None:
    from lifelong.config import parse_config
    from lifelong.experiment import run_config

    data = write_tables(tmp_path / "data", [("a", 40, 0)])
    run_config(parse_config(files_config(data)), tmp_path / "run", progress=False)
    store = Store.init(tmp_path / "store")
    v1 = import_run(store, tmp_path / "run")
    assert v1.promoted and v1.origin == "import" and v1.data[0]["id_source"] == "id_column"
    ids = json.loads((store.directory(v1) / "data.json").read_text())["experiences"][0]["train_ids"]
    assert len(ids) == v1.data[0]["train"] and ids[0].startswith("a-")

    with pytest.raises(StateError, match="not a lifelong store"):
        Store(tmp_path / "run")
    with pytest.raises(StateError, match="does not exist"):
        Store(tmp_path / "nowhere")
    with pytest.raises(StateError, match="not an empty folder"):
        Store.init(tmp_path / "run")
    with pytest.raises(StateError, match="already a store"):
        Store.init(tmp_path / "store")
    with pytest.raises(StateError, match="cannot reach the database"):
        Store.init(tmp_path / "pg", db="postgresql://nobody@127.0.0.1:1/none")
    assert not (tmp_path / "pg").exists()  # nothing written for a database that cannot be reached
    with pytest.raises(StateError, match="not a lifelong run directory"):
        import_run(store, tmp_path / "data")

    # another architecture than the promoted version: refused, nothing recorded or left behind
    wide = files_config(data)
    wide["model"]["hidden"] = [32]
    run_config(parse_config(wide), tmp_path / "wide", progress=False)
    with pytest.raises(StateError, match="another architecture"):
        import_run(store, tmp_path / "wide")
    assert [v.number for v in store.versions()] == [1]
    assert list((store.path / "staging").iterdir()) == []

    # an update whose config changes the model or names no new data
    with pytest.raises(ConfigError, match="model"):
        update(
            store, {**wide, "scenario": {"type": "files", "path": str(tmp_path / "data2")}}, progress=False
        )
    with pytest.raises(ConfigError, match="files the promoted version was trained on"):
        update(store, files_config(data), progress=False)
    with pytest.raises(ConfigError, match="neither new files"):
        update(store, fmnist_config(2), progress=False)
    with pytest.raises(StateError, match="has no version 7"):
        store.promote(7)
    with pytest.raises(ConfigError, match="tag name"):
        store.tag(1, "latest")
    assert [v.number for v in store.versions()] == [1]


def test_gate_refuses_and_records(tmp_path: Path) -> None:
    data = write_tables(tmp_path / "data", [("a", 60, 0)])
    shifted = write_tables(tmp_path / "shifted", [("b", 60, 6)], seed=2)
    store = Store.init(tmp_path / "store", gate=STRICT)
    update(store, files_config(data, replay=False), progress=False)
    result = update(store, files_config(shifted, replay=False), progress=False)
    gate = result.gate
    assert gate is not None and not gate["passed"] and result.version.status == "rejected"
    assert not result.version.promoted and store.promoted().number == 1
    assert json.loads((store.directory(result.version) / "gate.json").read_text())["passed"] is False
    assert gate["tracked"][0]["name"] == "a" and gate["new"][0]["name"] == "b"
    flips = gate["flips"]
    assert flips["negative_flips"] == sum(c["negative_flips"] for c in flips["per_class"])
    assert all(e["old"] == e["label"] != e["new"] for e in flips["examples"])
    # a lenient override passes the same kind of update
    again = update(store, files_config(shifted, replay=False), policy=LENIENT, progress=False)
    assert again.version.promoted and again.version.parent == 1


def test_forget_exact_equals_training_without_the_data(tmp_path: Path) -> None:
    """Exact deletion: the new version's weights equal a model trained on files with those rows removed."""
    from lifelong.config import parse_config
    from lifelong.store.forget import forget

    data = write_tables(tmp_path / "data", [("a", 50, 0), ("b", 50, 1)])
    store = Store.init(tmp_path / "store")
    update(store, files_config(data), progress=False)
    trained = json.loads((store.directory(store.version(1)) / "data.json").read_text())["experiences"]
    gone = [trained[0]["train_ids"][3], trained[1]["train_ids"][0]]

    with pytest.raises(DataError, match="never trained on"):
        forget(store, ["a-9999", gone[0]], progress=False)
    assert len(store.versions()) == 1  # refused before anything was written

    result = forget(store, gone, "exact", progress=False)
    assert result.version.promoted and result.version.parent == 1 and result.version.origin == "forget"
    assert result.audit["after"]["forget_size"] == 2
    assert store.deletions()[0]["ids"] == sorted(gone) and store.deletions()[0]["version"] == 2

    # the reference: the same stream with the two rows taken out by hand, trained by a learner from scratch
    from dataclasses import replace

    from lifelong.experiment import build_learner
    from lifelong.streams.sample_ids import sample_ids

    learner, stream = build_learner(parse_config(files_config(data)), tmp_path / "retrained", progress=False)
    kept = []
    for e in stream:
        keep = torch.tensor([sid not in gone for sid in sample_ids(e)])
        kept.append(replace(e, train=e.train.subset(torch.nonzero(keep).squeeze(1)), info={}))
    learner.run(replace(stream, experiences=kept))
    latest = json.loads((tmp_path / "retrained/checkpoints/LATEST.json").read_text())["checkpoint"]
    reference = load_file(str(tmp_path / "retrained/checkpoints" / latest / "model.safetensors"))
    assert same(weights(store, 2), reference)
    with pytest.raises(DataError, match="deleted before"):
        forget(store, gone[:1], progress=False)


def test_forget_approximate_purges_memories_and_updates_never_bring_data_back(tmp_path: Path) -> None:
    from lifelong.inference import load
    from lifelong.store.forget import forget
    from lifelong.streams.experience import Split
    from lifelong.streams.sample_ids import content_ids

    data = write_tables(tmp_path / "data", [("a", 40, 0)])
    store = Store.init(tmp_path / "store", gate=LENIENT)
    update(store, files_config(data), progress=False)  # memory 40 holds every training sample of `a`
    run1 = store.directory(store.version(1)) / RUN
    memory = load(run1).methods[0].memory
    stored = content_ids(Split(memory.contents().x, memory.contents().y))
    trained = json.loads((store.directory(store.version(1)) / "data.json").read_text())["experiences"][0]
    gone = trained["train_ids"][:4]
    # content ids of the deleted rows, to find them in memories (which hold features, not ids)
    from lifelong.config import parse_config
    from lifelong.experiment import stream_for
    from lifelong.streams.sample_ids import sample_ids

    stream = stream_for(parse_config(store.version(1).config))
    e = stream[0]
    rows = [i for i, sid in enumerate(sample_ids(e)) if sid in gone]
    gone_content = set(content_ids(e.train.subset(torch.tensor(rows))))
    assert gone_content <= set(stored)

    result = forget(store, gone, "approximate", steps=20, progress=False)
    assert result.audit["memory_samples_removed"] == 4
    assert {"forget_accuracy", "retain_accuracy", "test_accuracy", "mia_auc"} <= set(result.audit["after"])
    v2 = store.version(2)
    assert v2.promoted and v2.config["exclude_ids"] == sorted(gone)
    memory = load(store.directory(v2) / RUN).methods[0].memory
    assert not gone_content & set(content_ids(Split(memory.contents().x, memory.contents().y)))

    more = write_tables(tmp_path / "more", [("b", 40, 1)], seed=5)
    after = update(store, files_config(more), progress=False)
    assert after.version.parent == 2 and after.version.promoted
    run3 = store.directory(after.version) / RUN
    memory = load(run3).methods[0].memory
    assert not gone_content & set(content_ids(Split(memory.contents().x, memory.contents().y)))
    ids3 = json.loads((store.directory(after.version) / "data.json").read_text())["experiences"]
    assert not set(gone) & {i for e in ids3 for i in e["train_ids"]}


def test_sharded_versions_delete_exactly_by_retraining_one_shard(tmp_path: Path) -> None:
    """`shards: 3`: the store trains a ShardedRun; an update extends every shard; an exact deletion retrains
    only the shard that held the sample, and equals sharded training without it from the start."""
    from lifelong.config import parse_config
    from lifelong.experiment import stream_for
    from lifelong.store import sharding
    from lifelong.store.forget import forget
    from lifelong.unlearn.sharded import shard_of

    data = write_tables(tmp_path / "data", [("a", 60, 0)])
    more = write_tables(tmp_path / "more", [("b", 60, 1)], seed=4)
    config = {**files_config(data), "shards": 3}
    store = Store.init(tmp_path / "store", gate=LENIENT)
    v1 = update(store, config, progress=False).version
    assert (
        v1.sharded
        and v1.metrics["shards"] == 3
        and (store.directory(v1) / "sharded" / "sharded.json").exists()
    )
    v2 = update(store, {**files_config(more), "shards": 3}, progress=False)
    assert v2.version.sharded and v2.gate is not None and v2.gate["flips"]["samples"] > 0

    ids = json.loads((store.directory(v2.version) / "data.json").read_text())["experiences"][1]["train_ids"]
    gone = ids[5]
    result = forget(store, [gone], progress=False)
    assert list(result.audit["retrained_shards"]) == [str(shard_of(gone, 3))]
    with pytest.raises(ConfigError, match="sharded"):
        forget(store, [ids[6]], "approximate", progress=False)

    # the reference: sharded training of the whole stream without the sample, from the start
    cfg = parse_config({**store.version(3).config})
    stream = stream_for(cfg)
    reference = sharding.train(cfg, stream, tmp_path / "reference", progress=False)
    mine = sharding.open_run(cfg, stream, store.directory(store.version(3)) / "sharded")
    x = torch.cat([e.test.x for e in stream])
    assert torch.equal(mine.scores(x), reference.scores(x))
