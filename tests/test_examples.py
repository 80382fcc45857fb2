"""Every example config validates and runs (shrunk with overrides), and the user guide's Python snippets run
as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lifelong.config import load_config
from lifelong.experiment import run_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

SHRINK = {
    "text": ["scenario.max_blocks_per_domain=12", "train.epochs=1", "model.n_layer=1", "model.n_embd=32"],
    "cpt_gpt": [
        "scenario.max_tokens=2048",
        "scenario.max_test_tokens=512",
        "scenario.block_size=32",
        "model.vocab_size=300",
        "model.n_layer=1",
        "model.n_embd=32",
        "train.warmup_steps=2",
    ],
}
# examples that load a pretrained model are validated here; they run in bench/ (and one smoke test)
VALIDATE_ONLY = {"cpt_smollm2"}
SMALL_DATA = ["data.train_per_class=30", "data.test_per_class=20"]


def test_there_are_examples_for_every_scenario_family():
    names = {p.stem for p in EXAMPLES}
    assert {"first", "task_incremental", "permuted", "rotated", "online", "text"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_runs(path, tmp_path):
    overrides = SHRINK.get(path.stem, SMALL_DATA)
    cfg = load_config(path, overrides)
    if path.stem in VALIDATE_ONLY:
        return
    results = run_config(cfg, tmp_path / "run", progress=False)
    n = len(results.matrix)
    domains = cfg.scenario.domains or (cfg.data.names if cfg.data and len(cfg.data.names) > 1 else [])
    assert n == (cfg.scenario.experiences or len(domains))
    assert all(len(row) == n for row in results.matrix)
    assert (tmp_path / "run" / "results.json").exists()
    if results.metric == "accuracy":
        assert all(0.0 <= v <= 1.0 for row in results.matrix for v in row)
    else:
        assert all(v > 1.0 for row in results.matrix for v in row)


def _guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "guide.md").read_text(), flags=re.S)


def test_user_guide_snippets_run_as_written(tmp_path, monkeypatch):
    # the guide reads user files from data/monthly/: give it three months of a small table
    monthly = tmp_path / "data" / "monthly"
    monthly.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for month in ("2026-01", "2026-02", "2026-03"):
        frame = pd.DataFrame(rng.normal(size=(50, 4)), columns=["a", "b", "c", "d"])
        frame["label"] = rng.integers(0, 3, size=50)
        frame.to_csv(monthly / f"{month}.csv", index=False)
    monkeypatch.chdir(tmp_path)
    blocks = _guide_blocks()
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/guide.md", "exec"), namespace)
    assert len(namespace["ci"]) == 5 and namespace["ci"][0].classes == [8, 9]
    assert namespace["ti"][0].task == 0
    assert namespace["on"].single_pass
    assert [e.domain for e in namespace["stream"]] == ["tech", "life"]


def test_user_files_in_time_order_run_from_a_config(tmp_path):
    # three monthly CSV exports with string labels; a new class appears in March
    rng = np.random.default_rng(1)
    folder = tmp_path / "exports"
    folder.mkdir()
    for month, labels in (
        ("2026-01", ["cat", "dog"]),
        ("2026-02", ["cat", "dog"]),
        ("2026-03", ["cat", "fox"]),
    ):
        y = rng.choice(labels, size=80)
        x = rng.normal(size=(80, 6)) + np.array([{"cat": 0, "dog": 3, "fox": -3}[v] for v in y])[:, None]
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
        frame["species"] = y
        frame.to_csv(folder / f"{month}.csv", index=False)
    config = tmp_path / "files.yaml"
    config.write_text(
        f"scenario: {{type: files, path: {folder}, label_column: species, test_fraction: 0.25}}\n"
        "model: {name: mlp, hidden: [32]}\n"
        "method: {name: replay, memory: 40}\n"
        "train: {epochs: 5, batch_size: 16, lr: 0.05}\n"
    )
    results = run_config(load_config(config), tmp_path / "run", progress=False)
    assert results.experience_names == ["2026-01", "2026-02", "2026-03"]
    assert results.summary["acc"] > 0.8  # separable classes, replay keeps cat/dog while fox arrives
