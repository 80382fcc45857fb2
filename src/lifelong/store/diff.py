"""`store diff A B`: what changed between two versions: config keys, data (experiences and sample ids),
metrics on the tracked evaluation sets, and the predictions that flipped."""

from __future__ import annotations

from typing import Any

from lifelong.atomic import read_json
from lifelong.store.records import RUN
from lifelong.store.store import Store, Version


def config_changes(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """Every key whose value differs, as {key, a, b} (missing keys as None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += config_changes(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if a == b else [{"key": path, "a": a, "b": b}]


def data_changes(a: Version, b: Version) -> dict[str, Any]:
    names_a = [(e["name"], e["train_sha256"]) for e in a.data]
    names_b = [(e["name"], e["train_sha256"]) for e in b.data]
    return {
        "only_in_a": [n for n, h in names_a if (n, h) not in names_b],
        "only_in_b": [n for n, h in names_b if (n, h) not in names_a],
        "shared": [n for n, h in names_a if (n, h) in names_b],
        "samples_a": sum(e["train"] for e in a.data),
        "samples_b": sum(e["train"] for e in b.data),
    }


def metric_changes(a: Version, b: Version) -> list[dict[str, Any]]:
    by_name = {t["name"]: t["value"] for t in b.metrics.get("tracked", [])}
    out = []
    for t in a.metrics.get("tracked", []):
        if t["name"] in by_name:
            out.append({"name": t["name"], "a": t["value"], "b": by_name[t["name"]]})
    names_a = {t["name"] for t in a.metrics.get("tracked", [])}
    for t in b.metrics.get("tracked", []):
        if t["name"] not in names_a:
            out.append({"name": t["name"], "a": None, "b": t["value"]})
    return out


def flips(store: Store, a: Version, b: Version) -> dict[str, Any] | None:
    """Negative flips from A to B on A's tracked evaluation sets (rebuilt from the data), or None when
    the versions' data cannot be rebuilt here (a run made from Python objects)."""
    import torch

    from lifelong.config import parse_config
    from lifelong.evaluation.flips import flip_report
    from lifelong.experiment import _pretrained, stream_for
    from lifelong.inference import load
    from lifelong.store.gate import _predict, targets

    if a.sharded or b.sharded:  # an ensemble of shards: its flips are in the gate of the update that made it
        return None
    later = b if len(b.data) >= len(a.data) else a
    dir_a, dir_b = store.directory(a), store.directory(b)
    if read_json(dir_a / RUN / "run.json", "run information").get("origin") == "python":
        return None
    cfg = parse_config(later.config)
    pretrained = _pretrained(cfg, training=False)
    stream = stream_for(cfg, tokenizer=None if pretrained is None else pretrained.tokenizer)
    model_a, model_b = load(dir_a / RUN), load(dir_b / RUN)
    splits = [stream[i].test for i in range(min(len(a.data), len(stream)))]
    old = torch.cat([_predict(model_a, s) for s in splits])
    new = torch.cat([_predict(model_b, s) for s in splits])
    y = torch.cat([targets(stream.kind, s) for s in splits])
    names = read_json(dir_b / RUN / "run.json", "run information")["stream_info"].get("label_names")
    return flip_report(old, new, y, label_names=names if stream.kind == "classification" else None)


def diff(store: Store, ref_a: int | str, ref_b: int | str, with_flips: bool = True) -> dict[str, Any]:
    a, b = store.version(ref_a), store.version(ref_b)
    return {
        "a": a.number,
        "b": b.number,
        "config": config_changes(a.config, b.config),
        "data": data_changes(a, b),
        "metrics": metric_changes(a, b),
        "flips": flips(store, a, b) if with_flips else None,
    }
