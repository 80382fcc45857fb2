"""The negative-flip bench (bench/flips.py) in its smoke version: tiny data and models, one seed.

Checks that every scenario runs every variant, that the flip figures of each update are consistent (the new
accuracy is the old one minus the negative flips plus the positive ones, on the previous version's test
sets), that the summary and its relative reductions come out of the raw runs, and that the doc section
renders (the quick run itself writes no doc section).
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
SCRIPT = ROOT / "bench" / "flips.py"
VARIANTS = ["naive", "compatible", "replay", "replay+compatible"]
CORPORA = ("python_docs", "kjv", "austen")


def test_quick_bench_runs_every_scenario_and_variant(tmp_path):
    if datasets.info("fashion_mnist").locate() is None:
        pytest.skip("Fashion-MNIST is not installed here (see `lifelong datasets`)")
    out = tmp_path / "flips.json"
    results_md = (ROOT / "docs" / "RESULTS.md").read_text()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ROOT / "docs" / "RESULTS.md").read_text() == results_md  # quick: no doc section
    result = json.loads(out.read_text())
    text_here = all(datasets.info(name).locate() is not None for name in CORPORA)
    expected = ["class_il", "domain_il", *(["text"] if text_here else [])]
    assert result["scenarios"] == expected and result["seeds"] == [0]
    if not text_here:
        assert "corpora not installed" in result["skipped"]["text"]
    for scenario in expected:
        updates = 2 if scenario == "text" else 4  # the stream's experiences minus one
        assert sorted(result["runs"][scenario]) == sorted(VARIANTS)
        for variant in VARIANTS:
            run = result["runs"][scenario][variant]["0"]
            assert len(run["updates"]) == updates
            for u in run["updates"]:
                assert 0.0 <= u["negative_flip_rate"] <= 1.0 and u["samples"] > 0
                change = u["positive_flip_rate"] - u["negative_flip_rate"]
                assert u["new_accuracy"] == pytest.approx(u["old_accuracy"] + change)
            assert 0.0 <= run["final_accuracy"] <= 1.0
        summary = result["summary"][scenario]
        assert sorted(summary["variants"]) == sorted(VARIANTS)
        assert all(math.isfinite(v["negative_flip_rate"]["mean"]) for v in summary["variants"].values())
        for base, compat in (("naive", "compatible"), ("replay", "replay+compatible")):
            nfr = [
                sum(u["negative_flip_rate"] for u in result["runs"][scenario][v]["0"]["updates"]) / updates
                for v in (base, compat)
            ]
            if nfr[0] > 0:
                assert summary["reduction"][compat]["mean"] == pytest.approx(1 - nfr[1] / nfr[0])
    assert "| replay+compatible |" in proc.stdout

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import flips as bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    result["summary"] = bench.summarize(result["runs"])  # as --report-only rebuilds it: the bench's order
    assert list(result["summary"]) == expected and list(result["summary"]["class_il"]["variants"]) == VARIANTS
    section = bench.doc_section(result)
    assert "relative NFR reduction" in section and "Verdict:" in section
    assert all(bench.LABELS[s] in section for s in expected)
