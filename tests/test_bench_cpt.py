"""The continual pre-training bench (bench/cpt.py) in its smoke version: tiny model and budgets, one seed.

Checks that every variant runs and ends with finite perplexities on the three domains, that the shared A
phase is what the A-started variants begin from, and that the token accounting matches the design (every
variant trains B and C with the same tokens, replay included; re-training costs A+B+C).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong import datasets

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "cpt.py"
CORPORA = ("python_docs", "kjv", "austen")


def _missing() -> list[str]:
    return [name for name in CORPORA if datasets.info(name).locate() is None]


def test_quick_bench_runs_every_variant(tmp_path):
    missing = _missing()
    if missing:
        pytest.skip(f"corpora not installed here: {missing} (see docs for `lifelong datasets`)")
    out = tmp_path / "cpt.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    variants = ["constant", "continue", "cosine", "replay_1", "replay_5", "replay_25", "wsd", "retrain"]
    assert result["variants"] == variants and result["seeds"] == [0]
    run = result["runs"]["0"]
    a_model_ppl = run["a_phase"]["matrix"][0][0]
    for v in variants:
        matrix = run[v]["matrix"]
        assert len(matrix) == (1 if v == "retrain" else 3) and all(len(row) == 3 for row in matrix)
        assert all(math.isfinite(x) and x > 1.0 for row in matrix for x in row), (v, matrix)
        summary = result["summary"][v]
        assert math.isfinite(summary["final_mean_perplexity"]["mean"])
        assert set(summary["final_perplexity"]) == {"A", "B", "C"}
    b_tokens = result["notes"]["train_tokens"]["kjv"]
    c_tokens = result["notes"]["train_tokens"]["austen"]
    retrain_tokens = sum(run["retrain"]["tokens_seen"])
    assert retrain_tokens == sum(result["notes"]["train_tokens"].values())
    for v in ("constant", "continue", "cosine", "replay_1", "replay_5", "replay_25"):
        # experience 0 is skipped: row 0 is the shared A model, and B, C cost the same with or without replay
        assert run[v]["tokens_seen"] == [0, b_tokens, c_tokens]
        assert run[v]["matrix"][0][0] == pytest.approx(a_model_ppl, rel=1e-5)
        assert result["summary"][v]["last_update_share"]["mean"] == pytest.approx(c_tokens / retrain_tokens)
    assert run["wsd"]["tokens_seen"][0] == result["notes"]["train_tokens"]["python_docs"]
    assert "| re-train from scratch on A+B+C |" in proc.stdout and "Target 1" in proc.stdout
