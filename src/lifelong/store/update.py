"""Versions made from training: `import_run` (a finished run becomes a version) and `update` (a candidate
trained from the promoted version on new data, then gated).

An update continues the promoted version's run (the core's `continue`: model, optimizer, replay memories,
Fisher matrices, teachers, RNG all carried over) on the new experiences its config names:
- `scenario: {type: files, path: NEW}`: the files or folders at NEW, read with the version's own table or
  text options, appended as new experiences;
- the version's own data set and scenario with a larger `scenario.until`: the next experiences of it.
Everything else in the config (model, methods, training options, seed) must be the version's own: a
version continues its parent's state, so the two must agree; the error says which key differs.
On an empty store, `update` trains version 1 from the config, as `lifelong run` would.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.atomic import atomic_write_json, read_json
from lifelong.errors import ConfigError, StateError
from lifelong.store import records
from lifelong.store.gate import GatePolicy, decide
from lifelong.store.records import RUN
from lifelong.store.store import Store, Version, copy_run


@dataclass
class UpdateResult:
    version: Version
    gate: dict[str, Any] | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.version.promoted

    def as_json(self) -> dict[str, Any]:
        v = self.version
        return {
            "version": v.number,
            "parent": v.parent,
            "promoted": v.promoted,
            "status": v.status,
            "negative_flip_rate": None if self.gate is None else self.gate["negative_flip_rate"],
            "metrics": v.metrics,
            "gate": self.gate,
            "notes": self.notes,
        }


def _record(
    store: Store,
    staged: Path,
    *,
    parent: Version | None,
    origin: str,
    gate: dict[str, Any] | None,
    promote: bool,
    reason: str,
    stream: Any,
    sharded: Any = None,
    sharded_config: dict[str, Any] | None = None,
) -> Version:
    """Record the finished directory `staged` (a run in RUN/, or with `sharded` a ShardedRun in SHARDED/)."""
    from lifelong.store import sharding

    run_dir = staged / RUN
    if sharded is not None:
        assert sharded_config is not None
        config = sharded_config
        atomic_write_json(staged / "config.json", config)
        architecture = sharding.architecture(staged / sharding.SHARDED)
        kind, metrics = sharded.stream.kind, sharding.metrics(sharded)
    else:
        config = read_json(run_dir / "config.json", "run config")
        architecture = records.architecture(run_dir)
        kind = read_json(run_dir / "run.json", "run information")["stream_info"]["kind"]
        metrics = records.metrics(run_dir)
    if parent is not None and parent.architecture != architecture:
        raise StateError(
            f"the candidate's model ({architecture}) has another architecture than its parent version "
            f"{parent.number} ({parent.architecture}); a version must keep its parent's model. Start a new "
            "store for a new model"
        )
    if stream is not None:
        short, full = records.data_records(stream)
    else:
        short, full = _fingerprint_data(run_dir), None
    if full is not None:
        records.write_data(staged, full)
    if gate is not None:
        atomic_write_json(staged / "gate.json", gate)
    method_section = config.get("method", [])
    methods = [m["name"] for m in (method_section if isinstance(method_section, list) else [method_section])]
    return store.add_version(
        staged,
        parent=None if parent is None else parent.number,
        origin=origin,
        architecture=architecture,
        kind=kind,
        config=config,
        methods=methods,
        data=short,
        metrics=metrics,
        gate=gate,
        promote=promote,
        reason=reason,
        sharded=sharded is not None,
        expected_promoted=None if parent is None else parent.number,
    )


def _fingerprint_data(run_dir: Path) -> list[dict[str, Any]]:
    """For a run made from Python objects (no config to rebuild its data): the fingerprint, no ids."""
    fp = read_json(run_dir / "run.json", "run information").get("stream") or {"experiences": []}
    return [{**e, "id_source": None, "ids_sha256": None} for e in fp["experiences"]]


def import_run(store: Store, run_dir: str | Path, progress: bool = False) -> Version:
    """A finished run directory becomes a version: the first one is promoted; a later import is recorded
    as a candidate child of the promoted version (it must have its architecture; promote it explicitly)."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "config.json").is_file():
        raise StateError(f"{run_dir} is not a lifelong run directory (no config.json); nothing to import")
    if not (run_dir / "results.json").is_file():
        raise StateError(
            f"the run in {run_dir} has not finished (no results.json); finish it with `lifelong resume "
            f"{run_dir}`, then import it"
        )
    info = read_json(run_dir / "run.json", "run information")
    stream = None
    if info.get("origin") != "python":
        from lifelong.config import parse_config
        from lifelong.experiment import _pretrained, stream_for
        from lifelong.streams.fingerprint import difference, fingerprint

        cfg = parse_config(read_json(run_dir / "config.json", "run config"))
        pretrained = _pretrained(cfg, training=False)
        stream = stream_for(cfg, tokenizer=None if pretrained is None else pretrained.tokenizer)
        change = difference(info["stream"], fingerprint(stream))
        if change is not None:
            raise StateError(
                f"the data of the run in {run_dir} changed since it was trained ({change}); the store would "
                "record data the model never saw. Restore the data, or train again"
            )
    parent = store.promoted()
    staged = store.new_staging()
    try:
        copy_run(run_dir, staged / RUN)
        return _record(
            store,
            staged,
            parent=parent,
            origin="import",
            gate=None,
            promote=parent is None,
            reason="first version" if parent is None else "",
            stream=stream,
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def candidate_config(parent_raw: dict[str, Any], new_raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The candidate's run config: the promoted version's own, extended by the new data `new_raw` names;
    and a description of that data. Any other difference is refused."""
    from lifelong.run_directory import _first_difference

    candidate = dict(parent_raw)
    new_sc, old_sc = dict(new_raw.get("scenario") or {}), dict(parent_raw.get("scenario") or {})
    if new_sc.get("type") == "files" and (
        old_sc.get("type") != "files" or new_sc.get("path") != old_sc.get("path")
    ):
        path = new_sc["path"]
        candidate["continued"] = [*parent_raw.get("continued", []), path]
        described = f"new files {path}"
    elif new_sc.get("type") == "files":
        raise ConfigError(
            "the update's config names the files the promoted version was trained on "
            f"({new_sc.get('path')}); point scenario.path at the new data (a file, or a folder of one file "
            "per experience)"
        )
    else:
        strip = {"until"}
        same_data = _first_difference(
            {k: v for k, v in old_sc.items() if k not in strip},
            {k: v for k, v in new_sc.items() if k not in strip},
        )
        if same_data is not None or parent_raw.get("data") != new_raw.get("data"):
            raise ConfigError(
                "the update's config names neither new files (scenario type 'files' with a new path) nor "
                "more experiences of the promoted version's own scenario (the same data and scenario with a "
                f"larger `scenario.until`): {same_data or 'its data section differs'}"
            )
        if parent_raw.get("continued"):
            raise ConfigError(
                "the promoted version was already continued with files; add more files (scenario type "
                "'files') rather than more experiences of its first scenario"
            )
        old_until = old_sc.get("until")
        new_until = new_sc.get("until")
        total = new_sc.get("experiences") or 5
        old_n = old_until or total
        new_n = new_until or total
        if new_n <= old_n:
            raise ConfigError(
                f"the promoted version already trained on the first {old_n} experiences of this scenario; "
                f"set `scenario.until` above {old_n} to train on the next ones"
            )
        candidate["scenario"] = {**old_sc, "until": new_until}
        described = f"experiences {old_n + 1}..{new_n} of the scenario"
    for key in sorted(set(parent_raw) | set(new_raw)):
        if key in ("continued", "loggers", "data", "exclude_ids") or (key == "scenario"):
            continue
        diff = _first_difference(parent_raw.get(key), new_raw.get(key), key)
        if diff is not None:
            raise ConfigError(
                f"the update's config differs from the promoted version's in {diff}; an update continues the "
                f"version's state, so keep its `{key}` (a different model or method needs a new store)"
            )
    return candidate, described


def update(
    store: Store,
    config: str | Path | dict[str, Any],
    policy: GatePolicy | None = None,
    progress: bool = True,
) -> UpdateResult:
    """Train a candidate from the promoted version on the new data the config names, record it, and promote
    it if the gate passes (the first version of an empty store is trained from the config and promoted)."""
    import time

    from lifelong.config import load_config, parse_config
    from lifelong.experiment import build_learner, stream_for
    from lifelong.inference import load
    from lifelong.store import sharding

    began = time.perf_counter()
    cfg = load_config(config) if not isinstance(config, dict) else parse_config(config)
    new_raw = cfg.model_dump(mode="json")
    policy = policy or store.gate_policy()
    parent = store.promoted()
    if parent is None and store.versions():
        raise StateError(
            f"store {store.path} has versions but none is promoted; promote one (`lifelong store promote "
            f"{store.path} V`) to update from it"
        )
    staged = store.new_staging()
    try:
        run_dir = staged / RUN
        if parent is None and cfg.shards > 1:
            stream = stream_for(cfg)
            run = sharding.train(cfg, stream, staged / sharding.SHARDED, progress)
            version = _record(
                store, staged, parent=None, origin="update", gate=None, promote=True, reason="first version",
                stream=stream, sharded=run, sharded_config=new_raw,
            )  # fmt: skip
            return UpdateResult(
                version, None, time.perf_counter() - began, ["first version: nothing to gate"]
            )
        if parent is None:
            learner, stream = build_learner(cfg, run_dir, progress)
            learner.run(stream)
            version = _record(
                store, staged, parent=None, origin="update", gate=None, promote=True, reason="first version",
                stream=stream,
            )  # fmt: skip
            return UpdateResult(
                version, None, time.perf_counter() - began, ["first version: nothing to gate"]
            )
        parent_dir = store.directory(parent)
        deleted = store.deleted_ids()
        candidate_raw, described = candidate_config(parent.config, new_raw)
        if deleted:
            candidate_raw["exclude_ids"] = sorted(deleted)
        candidate_cfg = parse_config(candidate_raw)
        if parent.sharded:
            return _update_sharded(
                store, staged, parent, parse_config(parent.config), candidate_cfg, described, policy, began
            )
        copy_run(parent_dir / RUN, run_dir)
        learner, stream = build_learner(candidate_cfg, run_dir, progress)
        learner.run(stream, extend=True)
        parent_model = load(parent_dir / RUN)
        candidate_model = load(run_dir)
        label_names = read_json(run_dir / "run.json", "run information")["stream_info"].get("label_names")
        gate = decide(
            parent.metrics,
            records.metrics(run_dir),
            parent_model,
            candidate_model,
            stream,
            policy,
            label_names,
        )
        gate["data"] = described
        version = _record(
            store, staged, parent=parent, origin="update", gate=gate, promote=gate["passed"],
            reason="passed the gate", stream=stream,
        )  # fmt: skip
        notes = []
        if gate["passed"] and not version.promoted:
            notes.append("passed the gate, but another writer promoted a version meanwhile: not promoted")
        return UpdateResult(version, gate, time.perf_counter() - began, notes)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _update_sharded(
    store: Store,
    staged: Path,
    parent: Version,
    parent_cfg: Any,
    candidate_cfg: Any,
    described: str,
    policy: GatePolicy,
    began: float,
) -> UpdateResult:
    """An update of a sharded version: every shard trains on its part of the new experiences."""
    import time

    from lifelong.experiment import stream_for
    from lifelong.store import sharding

    parent_dir = store.directory(parent)
    old_stream = stream_for(parent_cfg)
    stream = stream_for(candidate_cfg)
    copy_run(parent_dir / sharding.SHARDED, staged / sharding.SHARDED)
    run = sharding.open_run(candidate_cfg, old_stream, staged / sharding.SHARDED)
    run.extend(stream)
    previous = sharding.open_run(parent_cfg, old_stream, parent_dir / sharding.SHARDED)
    gate = decide(
        parent.metrics,
        sharding.metrics(run),
        sharding.ShardedModel(previous),
        sharding.ShardedModel(run),
        stream,
        policy,
        stream.info.get("label_names"),
    )
    gate["data"] = described
    config = candidate_cfg.model_dump(mode="json")
    version = _record(
        store, staged, parent=parent, origin="update", gate=gate, promote=gate["passed"],
        reason="passed the gate", stream=stream, sharded=run, sharded_config=config,
    )  # fmt: skip
    return UpdateResult(version, gate, time.perf_counter() - began)
