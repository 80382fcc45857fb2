"""The unlearning bench (bench/unlearn.py) in its smoke version: small Fashion-MNIST subsets, S in {1, 2}.

Checks that exact deletion equals retraining for every S and retrains only the deleted sample's shard, that
the approximate part audits all four models on both forget sets, and that the doc section is written with
its heading and markers (to a temporary page, not docs/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong import datasets

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "unlearn.py"


def test_quick_bench(tmp_path):
    if datasets.info("fashion_mnist").locate() is None:
        pytest.skip("Fashion-MNIST is not installed here (Debian package dataset-fashion-mnist)")
    out, page = tmp_path / "unlearn.json", tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--results-md", str(page)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["exact"]["rows"]
    assert set(rows) == {"1", "2"}
    for s, row in rows.items():
        assert row["equal"] and row["max_weight_diff"] == 0.0 and row["max_score_diff"] == 0.0, s
        assert row["forget_slices"] == [0, 1, 2, 3, 4]  # a sample of the first experience: the whole shard
        assert row["forget_best_slices"] == [4]  # one of the last: one slice
        assert sum(row["samples_per_shard"]) == result["exact"]["train_samples"] - 2  # both deleted
        assert 0.0 <= row["ensemble_acc"] <= 1.0
    for name in ("random", "class"):
        entry = result["approximate"][name]
        for variant in ("original", "retrain", "neggrad+", "scrub"):
            assert 0.0 <= entry[variant]["mia_auc"] <= 1.0
            assert entry[variant]["forget_size"] == entry["forget_samples"]
        total = result["approximate"]["train_samples"]
        assert entry["retrain"]["retain_size"] + entry["forget_samples"] == total
    assert result["approximate"]["class"]["retrain"]["forget_accuracy"] == 0.0  # never saw the class
    text = page.read_text()
    assert "## Unlearning: exact (sharded) and approximate" in text
    assert "<!-- unlearning:start -->" in text and "<!-- unlearning:end -->" in text
    assert "| shards S |" in text and "Verdict:" in text and "python bench/unlearn.py --quick" in text
