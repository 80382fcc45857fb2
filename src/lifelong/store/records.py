"""What a version records about itself, read from its run directory: the architecture signature, the
metrics on every tracked evaluation set, and the data it was trained on (sample ids per experience)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lifelong.atomic import atomic_write_json, read_json
from lifelong.errors import StateError
from lifelong.streams.experience import Stream
from lifelong.streams.sample_ids import manifest

RUN = "run"  # the run directory inside a version directory


def architecture(run_dir: Path) -> str:
    """A signature of the model's structure: the kind of stream, and the names, shapes and dtypes of the
    tensors its checkpoint holds (not their values). Two versions with the same signature can continue
    one another."""
    from safetensors import safe_open

    from lifelong import state as st

    info = read_json(run_dir / "run.json", "run information")
    checkpoint = read_json(run_dir / st.CHECKPOINTS / st.LATEST, "checkpoint index")
    path = run_dir / st.CHECKPOINTS / checkpoint["checkpoint"] / "model.safetensors"
    shapes = []
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            piece = f.get_slice(name)
            shapes.append([name, list(piece.get_shape()), str(piece.get_dtype())])
    stream = info.get("stream_info", {})
    signature = {
        "kind": stream.get("kind"),
        "input_shape": stream.get("input_shape"),
        "num_classes": stream.get("num_classes"),
        "model": read_json(run_dir / "config.json", "run config").get("model", info.get("model_class")),
        "tensors": shapes,
    }
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]


def metrics(run_dir: Path) -> dict[str, Any]:
    """The final model's score on every test set of its stream (the tracked evaluation sets), by
    experience, with the metric's name and direction."""
    results = read_json(run_dir / "results.json", "results")
    final = results["matrix"][-1]
    names = results.get("experience_names") or [f"experience {i + 1}" for i in range(len(final))]
    return tracked_metrics(results.get("metric", "accuracy"), names, final, results.get("summary"))


def tracked_metrics(
    metric: str, names: list[str], final: list[float | None], summary: dict[str, Any] | None
) -> dict[str, Any]:
    """What a version records of its scores: per tracked set (name, value), their mean, the summary."""
    tracked: list[dict[str, Any]] = [
        {"experience": i, "name": name, "value": value}
        for i, (name, value) in enumerate(zip(names, final, strict=True))
    ]
    values = [float(v) for v in final if v is not None]
    return {
        "metric": metric,
        "higher_is_better": metric != "perplexity",
        "tracked": tracked,
        "mean": sum(values) / len(values) if values else None,
        "summary": {k: v for k, v in (summary or {}).items() if isinstance(v, int | float) or v is None},
    }


def data_records(stream: Stream) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what the index keeps per experience, the full manifest with every sample id for data.json)."""
    full = manifest(stream)
    short = []
    for e in full:
        ids = e["train_ids"]
        short.append(
            {
                "name": e["name"],
                "train": e["train"],
                "test": e["test"],
                "train_sha256": e["train_sha256"],
                "test_sha256": e["test_sha256"],
                "id_source": e["id_source"],
                "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            }
        )
    return short, full


def write_data(version_dir: Path, full: list[dict[str, Any]]) -> None:
    atomic_write_json(version_dir / "data.json", {"experiences": full})


def trained_ids(version_dir: Path) -> dict[str, int]:
    """Every training sample id of a version -> the experience (0-based) it first arrived in."""
    path = version_dir / "data.json"
    if not path.is_file():
        raise StateError(
            f"{version_dir} records no sample ids (a run made from Python objects); deletion needs the ids: "
            "import a run made from a config"
        )
    out: dict[str, int] = {}
    for i, e in enumerate(read_json(path, "data manifest")["experiences"]):
        for sid in e["train_ids"]:
            out.setdefault(sid, i)
    return out
