"""Deleting training data from the served model: `lifelong forget STORE --ids ...`.

- exact (default): the promoted version's whole run is trained again from its config without the deleted
  samples (`exclude_ids`), from the same seed. A store version is one run continued update after update,
  and a continued run ends where one unbroken run over the longer stream ends, so the result is exactly the
  model that never saw the data. It costs a full training; `lifelong.unlearn.ShardedRun` (SISA) retrains
  only the shard that held the data, for users who train sharded from Python.
- approximate: the served model is moved away from the deleted samples (NegGrad+ or SCRUB,
  `lifelong.unlearn.approximate`) in a few hundred steps, and every replay memory is purged of them. Nothing
  is guaranteed: the audit says how far it got.

Either way: ids never trained on are refused before anything is written; the new version is promoted at
once (a deletion is not optional), records the audit (forget / retain / test accuracy, membership-inference
AUC, seconds), and carries `exclude_ids`, so no later update brings the data back (updates rebuild their
data without those ids, and the memories they carry were purged).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.atomic import atomic_write_json, read_json
from lifelong.errors import ConfigError, DataError, StateError
from lifelong.store import records
from lifelong.store.records import RUN
from lifelong.store.store import Store, Version, copy_run

MODES = ("exact", "approximate")
RETAIN_SAMPLES = 5000  # retain rows the approximate method and the audit use (a seeded subsample)


@dataclass
class ForgetResult:
    version: Version
    mode: str
    ids: list[str]
    audit: dict[str, Any]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version.number,
            "parent": self.version.parent,
            "promoted": self.version.promoted,
            "mode": self.mode,
            "deleted": len(self.ids),
            "audit": self.audit,
            "seconds": self.seconds,
            "metrics": self.version.metrics,
        }


def read_ids(spec: str | Path | list[str]) -> list[str]:
    """Ids from a list, a file (a JSON list, or one id per line; `#` comments), or comma-separated text."""
    if isinstance(spec, list):
        raw = [str(i) for i in spec]
    else:
        path = Path(str(spec)).expanduser()
        if path.is_file():
            text = path.read_text()
            if text.lstrip().startswith("["):
                try:
                    raw = [str(i) for i in json.loads(text)]
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} starts like a JSON list but is not one ({e}); fix it") from None
            else:
                raw = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        else:
            if "/" in str(spec) or str(spec).endswith((".txt", ".json")):
                raise DataError(f"{spec} does not exist; give a file of ids, or ids separated by commas")
            raw = str(spec).split(",")
    ids = list(dict.fromkeys(i.strip() for i in raw if i.strip()))
    if not ids:
        raise DataError("no ids given; pass --ids ID1,ID2 or --ids FILE (one id per line, or a JSON list)")
    return ids


def _check_ids(store: Store, parent: Version, version_dir: Path, ids: list[str]) -> None:
    trained = records.trained_ids(version_dir)
    deleted = store.deleted_ids()
    again = [i for i in ids if i in deleted]
    if again:
        raise DataError(
            f"{len(again)} of the ids were deleted before ({', '.join(again[:5])}"
            f"{', ...' if len(again) > 5 else ''}); `lifelong store show {store.path} promoted` lists the "
            "deletions. Leave them out"
        )
    unknown = [i for i in ids if i not in trained]
    if unknown:
        source = {e.get("id_source") for e in parent.data}
        how = (
            "the data's id_column values"
            if source == {"id_column"}
            else "content ids (no id_column in the data; `lifelong.streams.sample_ids.sample_ids` gives them)"
        )
        raise DataError(
            f"{len(unknown)} of the {len(ids)} ids were never trained on by version {parent.number}: "
            f"{', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''}. Ids are {how}; nothing was "
            "deleted"
        )


def _splits(stream: Any, ids: set[str], retain_samples: int, seed: int) -> tuple[Any, Any, Any]:
    """(forget, retain subsample, test) splits of `stream` for the deleted `ids`."""
    import torch

    from lifelong.streams.experience import Split
    from lifelong.streams.sample_ids import sample_ids

    forget, retain = [], []
    for e in stream:
        flags = torch.tensor([sid in ids for sid in sample_ids(e, "train")], dtype=torch.bool)
        if bool(flags.any()):
            forget.append(e.train.subset(torch.nonzero(flags).squeeze(1)))
        retain.append(e.train.subset(torch.nonzero(~flags).squeeze(1)))
    retain_all = Split.concat(retain)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(retain_all), generator=g)[:retain_samples].sort().values
    test = Split.concat([e.test for e in stream])
    return Split.concat(forget), retain_all.subset(pick), test


def purge_memories(methods: list[Any], forget: Any) -> int:
    """Remove the forget samples from every replay memory the methods hold (matched by content); returns
    how many stored samples were removed."""
    import torch

    from lifelong.memory import ReplayMemory
    from lifelong.streams.experience import Split
    from lifelong.streams.sample_ids import content_ids

    gone = set(content_ids(forget))
    removed = 0
    for method in methods:
        for value in vars(method).values():
            if not isinstance(value, ReplayMemory) or value.x is None or len(value) == 0:
                continue
            stored = value.contents()
            view = Split(stored.x, stored.y, None if forget.t is None else stored.t)
            drop = torch.tensor([sid in gone for sid in content_ids(view)], dtype=torch.bool)
            removed += value.remove(drop)
    return removed


def _evaluate(trained: Any, stream: Any) -> list[float]:
    """The served model's metric on every test set of the stream (accuracy, or perplexity)."""
    import math

    from lifelong.unlearn.audit import per_sample

    values = []
    for e in stream:
        if trained.kind == "classification":
            pred = trained.predict(e.test.x, task=e.test.t)
            values.append(float((pred == e.test.y).float().mean()))
        else:
            losses, _ = per_sample(trained.model, e.test, "language_modeling")
            values.append(math.exp(float(losses.mean())))
    return values


def _rewrite_results(run_dir: Path, final: list[float], deletion: dict[str, Any]) -> None:
    from lifelong.evaluation import metrics

    results = read_json(run_dir / "results.json", "results")
    matrix = results["matrix"]
    matrix[-1] = final
    higher = results.get("metric", "accuracy") != "perplexity"
    meaningful = (results.get("summary") or {}).get("fwt_note") is None
    results["summary"] = metrics.summary(
        matrix, results.get("initial"), higher, meaningful, results.get("metric")
    )
    results["deletion"] = deletion
    atomic_write_json(run_dir / "results.json", results)


def forget(
    store: Store,
    ids: list[str],
    mode: str = "exact",
    *,
    method: str = "neggrad+",
    steps: int = 100,
    lr: float = 0.01,
    retain_samples: int = RETAIN_SAMPLES,
    progress: bool = True,
) -> ForgetResult:
    """Delete the training samples `ids` from the promoted version (see the module docstring)."""
    from lifelong.config import parse_config
    from lifelong.experiment import _pretrained, run_config, stream_for
    from lifelong.inference import load
    from lifelong.run_directory import read_info, write_info
    from lifelong.state import rewrite_checkpoint
    from lifelong.streams.fingerprint import fingerprint
    from lifelong.unlearn.approximate import unlearn
    from lifelong.unlearn.audit import audit

    if mode not in MODES:
        raise ConfigError(f"unknown deletion mode {mode!r}; choose exact or approximate")
    began = time.perf_counter()
    parent = store.promoted()
    if parent is None:
        raise StateError(f"store {store.path} has no promoted version to delete data from")
    parent_dir = store.directory(parent)
    _check_ids(store, parent, parent_dir, ids)
    if read_info(parent_dir / RUN).get("origin") == "python":
        raise StateError("the promoted version was made from Python objects; its data cannot be rebuilt here")
    old_cfg = parse_config(parent.config)
    excluded = sorted({*old_cfg.exclude_ids, *ids})
    new_cfg = parse_config({**parent.config, "exclude_ids": excluded})
    pretrained = _pretrained(old_cfg, training=False)
    tokenizer = None if pretrained is None else pretrained.tokenizer
    old_stream = stream_for(old_cfg, tokenizer)  # earlier deletions already left out
    new_stream = stream_for(new_cfg, tokenizer)
    forget_split, retain, test = _splits(old_stream, set(ids), retain_samples, old_cfg.seed)
    kind = old_stream.kind
    if parent.sharded:
        return _forget_sharded(store, parent, ids, mode, old_cfg, new_cfg, old_stream, new_stream, began)
    staged = store.new_staging()
    try:
        run_dir = staged / RUN
        deletion: dict[str, Any] = {"mode": mode, "ids": len(ids)}
        if mode == "exact":
            before = audit(load(parent_dir / RUN).model, forget_split, retain, test, kind)
            run_config(new_cfg, run_dir, progress=progress)
            trained = load(run_dir)
            deletion["retrained_experiences"] = len(new_stream)
        else:
            copy_run(parent_dir / RUN, run_dir)
            trained = load(run_dir)
            before = audit(trained.model, forget_split, retain, test, kind)
            done = unlearn(
                trained.model,
                forget_split,
                retain,
                method=method,
                steps=steps,
                lr=lr,
                seed=old_cfg.seed,
                kind=kind,
            )
            deletion.update(method=method, steps=steps, lr=lr, seconds_unlearning=done.get("seconds"))
            deletion["memory_samples_removed"] = purge_memories(trained.methods, forget_split)
            rewrite_checkpoint(run_dir, model=trained.model, methods=trained.methods)
            info = read_info(run_dir)
            atomic_write_json(run_dir / "config.json", new_cfg.model_dump(mode="json"))
            write_info(
                run_dir,
                new_stream,
                fingerprint(new_stream),
                info["initial_weights_sha256"],
                "config",
                trained.model,
            )
            _rewrite_results(run_dir, _evaluate(trained, new_stream), deletion)
        after = audit(trained.model, forget_split, retain, test, kind)
        seconds = time.perf_counter() - began
        report = {"mode": mode, "before": before, "after": after, "seconds": seconds, **deletion}
        atomic_write_json(staged / "deletion.json", report)
        version = records_version(store, staged, parent, new_stream, report, ids, mode)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return ForgetResult(version, mode, ids, report, time.perf_counter() - began)


def _forget_sharded(
    store: Store,
    parent: Version,
    ids: list[str],
    mode: str,
    old_cfg: Any,
    new_cfg: Any,
    old_stream: Any,
    new_stream: Any,
    began: float,
) -> ForgetResult:
    """Exact deletion from a sharded version: only the shards that held the ids are retrained, each from
    its state before the first slice holding one (SISA)."""
    from lifelong.store import sharding
    from lifelong.unlearn.audit import audit

    if mode != "exact":
        raise ConfigError(
            f"version {parent.number} is sharded: its deletions are exact and retrain only the shards that "
            "held the data; drop --approximate"
        )
    forget_split, retain, test = _splits(old_stream, set(ids), RETAIN_SAMPLES, old_cfg.seed)
    kind = old_stream.kind
    staged = store.new_staging()
    try:
        target = staged / sharding.SHARDED
        copy_run(store.directory(parent) / sharding.SHARDED, target)
        run = sharding.open_run(old_cfg, old_stream, target)
        before = audit(sharding.EnsembleModule(run), forget_split, retain, test, kind)
        done = run.forget(ids)
        run = sharding.open_run(new_cfg, new_stream, target)  # the shards as they are now
        after = audit(sharding.EnsembleModule(run), forget_split, retain, test, kind)
        retrained = {k: v["slices"] for k, v in done.get("shards", {}).items()}
        report = {
            "mode": mode, "before": before, "after": after, "seconds": time.perf_counter() - began,
            "ids": len(ids), "shards": run.shards, "retrained_shards": retrained,
            "seconds_retraining": done.get("seconds"),
        }  # fmt: skip
        atomic_write_json(staged / "deletion.json", report)
        version = records_version(
            store, staged, parent, new_stream, report, ids, mode, sharded=run,
            config=new_cfg.model_dump(mode="json"),
        )  # fmt: skip
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return ForgetResult(version, mode, ids, report, time.perf_counter() - began)


def records_version(
    store: Store,
    staged: Path,
    parent: Version,
    stream: Any,
    report: dict[str, Any],
    ids: list[str],
    mode: str,
    sharded: Any = None,
    config: dict[str, Any] | None = None,
) -> Version:
    """Record the version made by a deletion and the deletion itself, in one transaction; promoted."""
    from lifelong.store import sharding

    if sharded is not None:
        assert config is not None
        atomic_write_json(staged / "config.json", config)
        architecture = sharding.architecture(staged / sharding.SHARDED)
        metrics = sharding.metrics(sharded)
    else:
        run_dir = staged / RUN
        architecture = records.architecture(run_dir)
        config = read_json(run_dir / "config.json", "run config")
        metrics = records.metrics(run_dir)
    if architecture != parent.architecture:
        raise StateError("the version made by the deletion has another architecture than its parent")
    short, full = records.data_records(stream)
    records.write_data(staged, full)
    return store.add_version(
        staged,
        parent=parent.number,
        origin="forget",
        architecture=architecture,
        kind=stream.kind,
        config=config,
        methods=parent.methods,
        data=short,
        metrics=metrics,
        gate=None,
        promote=True,
        sharded=sharded is not None,
        reason=f"{mode} deletion of {len(ids)} sample(s)",
        expected_promoted=parent.number,
        deletion={"mode": mode, "ids": ids, "audit": report},
    )
