"""Smoke tests of the language-model benchmarks' `--quick` paths (bench/lm_throughput.py and
bench/smollm2_cpt.py): tiny random models and toy text, run in this process (a fresh one would spend seconds
importing torch and transformers again). The full runs need SmolLM2 and half an hour; these check that the
scripts run end to end and that what they report is consistent."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
DOCS = Path(__file__).resolve().parents[1] / "docs"

pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        import lm_throughput
        import smollm2_cpt

        yield lm_throughput, smollm2_cpt
    finally:
        torch.set_num_threads(threads)  # the scripts set one thread; leave the session as it was
        sys.path.remove(str(BENCH))


def _docs_snapshot() -> dict[str, str]:
    return {name: (DOCS / name).read_text() for name in ("BENCHMARKS.md", "RESULTS.md")}


def test_throughput_quick_runs_both_contenders_on_the_same_arithmetic(bench_modules, tmp_path):
    lm_throughput, _ = bench_modules
    before = _docs_snapshot()
    out = tmp_path / "throughput.json"
    lm_throughput.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [c["case"]["name"] for c in result["cases"]] == ["tiny_gpt", "llama_full", "llama_lora"]
    for case in result["cases"]:
        for name in ("hand-written", "lifelong"):
            (run,) = case["runs"][name]
            assert run["seconds"] > 0 and run["cpu_seconds"] > 0
            assert run["tokens"] == case["case"]["tokens"]
        assert case["ratio"] > 0 and case["cpu_ratio"] > 0
        # without LoRA (whose adapters start from other random draws) both loops end with the same weights
        expected = None if case["case"]["lora"] else 0.0
        assert case["max_abs_weight_difference"] == expected
    memory = result["cases"][0]["memory"]
    assert set(memory) == {"hand-written", "lifelong"}
    assert all(m["peak_mib"] >= m["before_mib"] > 0 for m in memory.values())
    assert _docs_snapshot() == before  # --quick writes no doc section


def test_cpt_quick_records_four_runs_with_matrices(bench_modules, tmp_path):
    _, smollm2_cpt = bench_modules
    before = _docs_snapshot()
    out = tmp_path / "cpt.json"
    smollm2_cpt.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert list(runs) == list(smollm2_cpt.RUNS)
    for record in runs.values():
        assert record["domains"] == ["code", "verse", "novel"]
        assert len(record["matrix"]) == 3 and all(len(row) == 3 for row in record["matrix"])
        assert all(math.isfinite(v) and v > 1 for row in record["matrix"] for v in row)
        assert math.isfinite(record["summary"]["forgetting_log_ppl"])
        assert record["tokens_seen"] == [result["budget"]["train_tokens"]] * 3
        assert record["peak_rss_mib"] >= record["rss_before_mib"]
    # one starting model: LoRA's fresh adapters add exactly zero, so every run scores it the same
    assert len({tuple(r["initial"]) for r in runs.values()}) == 1
    assert runs["lora_naive"]["trainable_parameters"] < runs["full_naive"]["trainable_parameters"]
    # the doc text is built from the record: every run's label appears
    body = smollm2_cpt.doc_body(result)
    assert all(label in body for label in smollm2_cpt.LABELS.values())
    assert _docs_snapshot() == before


def test_unknown_case_or_run_is_refused(bench_modules):
    lm_throughput, smollm2_cpt = bench_modules
    with pytest.raises(SystemExit, match="unknown cases"):
        lm_throughput.main(["--quick", "--cases", "gpt5"])
    with pytest.raises(SystemExit, match="unknown runs"):
        smollm2_cpt.main(["--quick", "--runs", "full_sgd"])
