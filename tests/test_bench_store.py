"""Smoke run of bench/store.py: versions written and read on SQLite and PostgreSQL, LoRA version sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_store_bench_quick(postgres) -> None:
    import store as bench_store

    result = bench_store.main(["--quick", "--no-write"])
    for backend in ("sqlite", "postgres"):
        m = result[backend]
        assert m["versions"] == 5 and m["write_per_s"] > 0 and m["read_verified_per_s"] > 0
        assert m["store_bytes"] >= 5 * m["version_bytes"] > 0
    assert 0 < result["lora"]["lora_bytes"] < result["lora"]["full_bytes"]
