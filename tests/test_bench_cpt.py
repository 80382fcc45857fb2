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


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env_cache = ["--cache-dir", str(tmp_path / "cache")]
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-write", *env_cache, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_resumed_bench_keeps_finished_variants_and_merges_seeds(tmp_path):
    """A design-size bench runs for hours: `--resume` keeps what a killed run finished (and the A phase's
    weights), `--report-only --merge` joins benches run in parallel on other seeds."""
    missing = _missing()
    if missing:
        pytest.skip(f"corpora not installed here: {missing} (see docs for `lifelong datasets`)")
    out = tmp_path / "w1.json"
    first = _bench(tmp_path, "--seeds", "0", "--variants", "cosine,retrain", "--out", str(out), "--resume")
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads(out.read_text())["runs"]["0"]
    second = _bench(tmp_path, "--seeds", "0", "--variants", "cosine,replay_5", "--out", str(out), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "seed 0 cosine: done before, kept" in second.stdout
    assert "seed 0 A phase: weights loaded" in second.stdout
    after = json.loads(out.read_text())
    assert after["variants"] == ["cosine", "replay_5", "retrain"]
    assert (
        after["runs"]["0"]["cosine"] == before["cosine"]
        and after["runs"]["0"]["retrain"] == before["retrain"]
    )
    # replay from the loaded A weights starts from the same A model
    assert after["runs"]["0"]["replay_5"]["matrix"][0] == before["cosine"]["matrix"][0]

    other = tmp_path / "w2.json"
    third = _bench(tmp_path, "--seeds", "1", "--variants", "cosine,retrain", "--out", str(other))
    assert third.returncode == 0, third.stderr[-3000:]
    report = ["--report-only", "--no-write", "--out", str(out), "--merge", str(other)]
    merged = subprocess.run(
        [sys.executable, str(SCRIPT), *report], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1]
    assert result["summary"]["cosine"]["seeds"] == [0, 1] and result["summary"]["replay_5"]["seeds"] == [0]
    assert result["summary"]["cosine"]["gap_to_retrain"]["n"] == 2

    wrong = _bench(
        tmp_path, "--seeds", "0", "--variants", "cosine", "--out", str(out), "--resume", "--a-tokens", "4096"
    )
    assert wrong.returncode != 0 and "another budget" in wrong.stderr
