"""Unlabeled data in experiences (label_fraction, labels_per_class, label_bias) and the method report channel
(`Method.report` -> results.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.experiment import run_config, stream_for
from lifelong.learner import Learner
from lifelong.methods.base import Context, Method
from lifelong.models import MLP
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.fingerprint import fingerprint
from lifelong.streams.labels import hold_back_labels


def toy(n: int = 200, classes: int = 4, seed: int = 0) -> Stream:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 5, generator=g) + y[:, None].float()
    e = Experience(0, Split(x, y), Split(x[:40], y[:40]), classes=list(range(classes)))
    return Stream("toy", [e], "classification", classes, (5,))


def test_label_fraction_and_labels_per_class_keep_what_they_say() -> None:
    stream = toy()
    held = hold_back_labels(stream, label_fraction=0.1, seed=1)[0]
    assert len(held.train) == 20 and torch.bincount(held.train.y).tolist() == [5, 5, 5, 5]
    assert held.unlabeled is not None and len(held.unlabeled) == 180 and bool((held.unlabeled.y == -1).all())
    assert held.unlabeled_truth is not None and torch.bincount(held.unlabeled_truth).tolist() == [45] * 4
    # every training row is in exactly one part, with its true label
    rows = torch.cat([held.train.x, held.unlabeled.x])
    labels = torch.cat([held.train.y, held.unlabeled_truth])
    order = torch.argsort(rows[:, 0])
    original = torch.argsort(stream[0].train.x[:, 0])
    assert torch.equal(rows[order], stream[0].train.x[original]) and torch.equal(
        labels[order], stream[0].train.y[original]
    )
    per_class = hold_back_labels(stream, labels_per_class=3, seed=1)[0]
    assert torch.bincount(per_class.train.y).tolist() == [3, 3, 3, 3]
    assert torch.equal(
        hold_back_labels(stream, label_fraction=0.1, seed=1)[0].train.x, held.train.x
    )  # seeded


def test_label_bias_labels_one_side_of_the_input_space() -> None:
    stream = toy(n=4000, classes=2)
    plain = hold_back_labels(stream, label_fraction=0.1, seed=0)[0]
    biased = hold_back_labels(stream, label_fraction=0.1, label_bias=0.8, seed=0)[0]
    from lifelong.streams.labels import _direction

    d = _direction((5,), 0).float()

    def upper_share(part: Split) -> float:
        """Share of the labelled samples above their class's median along the bias direction."""
        shares = []
        for c in (0, 1):
            median = (stream[0].train.x[stream[0].train.y == c] @ d).median()
            shares.append(((part.x[part.y == c] @ d) > median).float())
        return float(torch.cat(shares).mean())

    assert abs(upper_share(plain.train) - 0.5) < 0.1
    assert abs(upper_share(biased.train) - 0.9) < 0.05  # (1 + b) / 2


def test_bad_label_options() -> None:
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        hold_back_labels(toy(), label_fraction=1.5)
    with pytest.raises(ConfigError, match="not both"):
        hold_back_labels(toy(), label_fraction=0.5, labels_per_class=2)
    with pytest.raises(ConfigError, match="label_bias needs"):
        hold_back_labels(toy(), label_bias=0.5)
    with pytest.raises(Exception, match="label_fraction"):
        parse_config(
            {
                "data": {"name": "fashion_mnist"},
                "scenario": {"type": "class_incremental", "label_fraction": 0.0},
                "model": {"name": "mlp"},
            }
        )


def test_config_and_fingerprint_include_the_unlabeled_part(tmp_path: Path) -> None:
    raw = {
        "data": {"name": "fashion_mnist", "train_per_class": 20, "test_per_class": 5},
        "scenario": {"type": "class_incremental", "experiences": 2, "label_fraction": 0.25},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 1, "batch_size": 16},
    }
    stream = stream_for(parse_config(raw))
    assert [len(e.train) for e in stream] == [25, 25] and [len(e.unlabeled or []) for e in stream] == [75, 75]
    fp = fingerprint(stream)["experiences"][0]
    assert fp["unlabeled"] == 75 and len(fp["unlabeled_sha256"]) == 64
    results = run_config(parse_config(raw), tmp_path / "run", progress=False)
    assert results.matrix[-1][0] is not None  # a supervised method trains on the labelled part only


class Counting(Method):
    """Reports how many unlabeled samples each experience brought."""

    name = "counting"
    report_key = "unlabeled_counts"

    def report(self, ctx: Context) -> dict | None:
        unlabeled = ctx.experience.unlabeled
        return {"unlabeled": 0 if unlabeled is None else len(unlabeled)}


def test_method_reports_go_to_results_json(tmp_path: Path) -> None:
    stream = hold_back_labels(toy(), label_fraction=0.5)
    torch.manual_seed(0)
    learner = Learner(
        MLP((5,), 4, hidden=[8]), [Counting()], epochs=1, batch_size=16, run_dir=tmp_path, progress=False
    )
    results = learner.run(stream)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["unlabeled_counts"] == [{"experience": 0, "unlabeled": 100}]
    assert results.reports == {"unlabeled_counts": [{"experience": 0, "unlabeled": 100}]}
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "method_report" and e["key"] == "unlabeled_counts" for e in events)


def test_report_shows_pseudo_label_diagnostics(tmp_path: Path) -> None:
    from lifelong.evaluation.report import write_report

    raw = {
        "data": {"name": "fashion_mnist", "train_per_class": 30, "test_per_class": 5},
        "scenario": {"type": "class_incremental", "experiences": 2, "label_fraction": 0.3},
        "model": {"name": "mlp", "hidden": [16]},
        "method": [{"name": "pseudo_label", "threshold": 0.0, "teacher": "ema"}],
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    }
    run_config(parse_config(raw), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["pseudo_labels"]
    assert [e["experience"] for e in saved] == [0, 1]
    assert all(0.0 <= e["precision"] <= 1.0 and e["coverage"] == 1.0 for e in saved)  # threshold 0 keeps all
    html = write_report(tmp_path / "run", plots=False).read_text()
    assert "<h2>Pseudo-labels</h2>" in html and "reliability diagram" in html
