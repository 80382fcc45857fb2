"""The demo: Split Fashion-MNIST, class-incremental, 5 experiences of 2 classes, an MLP 2x400;
Naive (forgets), Replay with 500 stored samples, and Joint (the upper bound), side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifelong.config import parse_config
from lifelong.evaluation.report import write_comparison_report, write_report
from lifelong.experiment import run_config

DEMO_CONFIG: dict[str, Any] = {
    "data": {"name": "fashion_mnist"},
    "scenario": {"type": "class_incremental", "experiences": 5, "seed": 0},
    "model": {"name": "mlp", "hidden": [400, 400]},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "sgd", "eval_every": 25},
    "seed": 0,
}
DEMO_METHODS = {
    "naive": {"name": "naive"},
    "replay": {"name": "replay", "memory": 500},
    "joint": {"name": "joint"},
}


def run_demo(
    out: str | Path, progress: bool = True, train_per_class: int | None = None
) -> tuple[dict[str, dict], Path]:
    """Run the three methods into `out/<method>/` and write `out/report.html` comparing them."""
    out = Path(out)
    named: dict[str, dict] = {}
    for name, method in DEMO_METHODS.items():
        raw = {**DEMO_CONFIG, "method": method}
        if train_per_class:
            raw["data"] = {**raw["data"], "train_per_class": train_per_class}
        results = run_config(parse_config(raw), out / name, progress=progress)
        write_report(out / name)
        named[name] = results.to_dict()
    report = write_comparison_report({n: out / n for n in named}, out)
    return named, report
