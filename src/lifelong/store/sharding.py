"""Sharded versions (`shards: S` in the config): the version holds a `lifelong.unlearn.ShardedRun` (S shard
models, each trained slice by slice on the samples whose id hashes to it) instead of one run, so an exact
deletion retrains only the shards that held the data. What the store needs from one: training, extending
with new experiences, deleting, and a model-like view (prediction and per-sample losses) for the gate and
the audit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.atomic import read_json
from lifelong.errors import ConfigError
from lifelong.streams.experience import Stream

SHARDED = "sharded"  # the ShardedRun directory inside a version directory


def builder(cfg: Any, stream: Stream) -> Any:
    """A function making a fresh model and methods of `cfg` (ShardedRun seeds it per shard)."""
    from lifelong.experiment import build_methods, model_for

    if cfg.model.name in ("hf", "smollm2"):
        raise ConfigError(
            "sharded versions of pretrained language models are not supported (each shard would hold a copy "
            "of the whole model); use shards: 1 and deletion by retraining or approximate unlearning"
        )
    return lambda: (model_for(cfg, stream), build_methods(cfg))


def train(cfg: Any, stream: Stream, out: Path, progress: bool) -> Any:
    from lifelong.unlearn import ShardedRun

    return ShardedRun.train(out, stream, builder(cfg, stream), cfg.train, shards=cfg.shards, seed=cfg.seed,
                            progress=progress)  # fmt: skip


def open_run(cfg: Any, stream: Stream, out: Path) -> Any:
    from lifelong.unlearn import ShardedRun

    return ShardedRun.open(out, stream, builder(cfg, stream))


def metrics(run: Any) -> dict[str, Any]:
    """The ensemble's score on every test set, in the form `records.metrics` gives for one run."""
    from lifelong.store.records import tracked_metrics
    from lifelong.streams.fingerprint import experience_name

    ensemble = run.meta["ensemble"]
    names = [experience_name(e) for e in run.stream]
    out = tracked_metrics(ensemble["metric"], names, ensemble["matrix"][-1], ensemble.get("summary"))
    return {**out, "shards": run.shards}


def architecture(out: Path) -> str:
    """Shard 0's model structure (every shard has the same), as `records.architecture` signs one run."""
    from lifelong.store.records import architecture as run_architecture

    meta = read_json(out / "sharded.json", "sharded run")
    shard = next(p for p in sorted(out.glob("shard-*")) if p.is_dir())
    signature = {"shards": meta["shards"], "shard": run_architecture(shard)}
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]


class EnsembleModule(nn.Module):
    """The ensemble as a module: log of the mean of the shards' softmax (what losses and audits read as
    logits: their softmax is the ensemble's probabilities)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the device

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.run.scores(x, t).clamp_min(1e-30).log()


class ShardedModel:
    """What the gate reads from a loaded version (`kind`, `predict`, `model`), for a sharded one."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.kind = run.stream.kind
        self.model = EnsembleModule(run)

    def predict(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return self.run.predict(x, task)
