"""Smoke run of bench/selftrain.py: every variant of both parts runs and reports accuracy and precision."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_selftrain_bench_quick() -> None:
    import selftrain as bench

    result = bench.main(["--quick"])
    assert set(result["part2"]) == set(bench.STREAM_VARIANTS)
    for key, entry in result["part1"].items():
        assert 0.0 <= entry["accuracy"]["mean"] <= 1.0, key
    # the top-k variants always select (half of every draw): their precision is measured
    assert result["part1"]["biased/100/topk_tsim"]["precision"] is not None
    assert "T-similarity" in bench.doc_section(result)
