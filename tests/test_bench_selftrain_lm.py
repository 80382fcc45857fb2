"""The language-model self-training benches in their smoke versions: bench/self_improve.py and
bench/collapse.py with --quick (tiny models and data, seconds each).

Checks the shape and bookkeeping of the raw numbers (rounds, accepted <= sampled, real and synthetic block
counts per share, the shared pre-trained start) and that each doc section is written with its heading,
markers, table and verdict (to a temporary page, not docs/RESULTS.md).
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


def _run(script: str, tmp_path: Path) -> tuple[dict, str, str]:
    out, page = tmp_path / f"{script}.json", tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick", "--out", str(out), "--results-md",
         str(page)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), page.read_text(), proc.stdout


def test_quick_self_improve_bench(tmp_path):
    result, page, stdout = _run("self_improve", tmp_path)
    budget, run = result["budget"], result["run"]
    si, real = run["self_improve"], run["sft_real"]
    assert [e["round"] for e in si] == [e["round"] for e in real] == list(range(budget["rounds"] + 1))
    assert si[0]["accuracy"] == real[0]["accuracy"] == run["sft"]["accuracy"]  # both start from the SFT model
    assert run["sft"]["examples"] == budget["sft_examples"]
    for e in si[1:]:
        assert e["sampled"] == budget["pool"] * budget["k"]
        assert 0 <= e["solved"] <= e["trained"] <= e["accepted"] <= e["sampled"]
        assert 0.0 <= e["accuracy"] <= 1.0
    for e in real[1:]:
        assert e["trained"] == budget["pool"] and math.isfinite(e["train_loss"])
    assert "## Self-improvement with a verifier" in page
    assert "<!-- self_improve:start -->" in page and "<!-- self_improve:end -->" in page
    assert "| round | self-improvement accuracy |" in page and "Verdict:" in page
    assert "python bench/self_improve.py --quick" in page
    assert "Self-improvement raises held-out accuracy above the SFT start" in stdout


def test_quick_collapse_bench(tmp_path):
    if datasets.info("austen").locate() is None and datasets.info("fortunes").locate() is None:
        pytest.skip("neither the austen nor the fortunes corpus is installed here")
    result, page, stdout = _run("collapse", tmp_path)
    budget, run = result["budget"], result["run"]
    assert result["fractions"] == [0.0, 0.1, 0.5]
    start = run["runs"]["0.0"][0]
    for fraction, history in run["runs"].items():
        assert [h["round"] for h in history] == list(range(budget["rounds"] + 1))
        assert history[0] == {**start, "real_blocks": history[0]["real_blocks"]}  # one pre-trained start
        real = round(budget["blocks_per_round"] * float(fraction))
        for h in history[1:]:
            assert h["real_blocks"] == real and h["synthetic_blocks"] == budget["blocks_per_round"] - real
        for h in history:
            assert math.isfinite(h["perplexity"]) and h["perplexity"] > 1.0
            assert 0.0 < h["entropy"] <= 8.0  # bits per byte
            assert all(0.0 < h[f"distinct_{n}"] <= 1.0 for n in (1, 2, 3))
    assert set(run["real_reference"]) == {"entropy", "distinct_1", "distinct_2", "distinct_3"}
    assert "## Collapse: a tiny GPT trained on its own generations" in page
    assert "<!-- collapse:start -->" in page and "<!-- collapse:end -->" in page
    assert "| real share | round |" in page and "| real text |" in page
    assert "keeps the model stable" in page and "python bench/collapse.py --quick" in page
    assert "Keeping real data keeps the model stable" in stdout
