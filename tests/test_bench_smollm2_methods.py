"""The SmolLM2 method bench (bench/smollm2_methods.py) in its smoke version: the same code on a tiny random
Llama and toy text. Every method runs to the end and leaves a record of the promised shape with finite
numbers; a method that raises is recorded as failed, with its traceback, and shown as such in the report."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "smollm2_methods.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("smollm2_methods", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["smollm2_methods"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "methods.json"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def finite(values: list[float]) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_every_method_runs_and_records_the_promised_figures(bench: Any, quick: dict[str, Any]) -> None:
    assert quick["quick"] is True
    assert sorted(quick["runs"]) == sorted(bench.RUNS)
    domains = list(quick["budget"]["domains"])
    steps = quick["steps_per_domain"]
    for name, run in quick["runs"].items():
        assert run["completed"] is True, (name, run.get("error"))
        assert run["domains"] == domains
        assert len(run["initial"]) == len(domains) and finite(run["initial"])
        assert [len(row) for row in run["matrix"]] == [len(domains)] * len(domains)
        assert all(finite(row) and min(row) > 1.0 for row in run["matrix"]), name
        s = run["summary"]
        assert finite([s["final_mean_perplexity"], s["forgetting_log_ppl"]])
        assert s["final_mean_perplexity"] == pytest.approx(sum(run["matrix"][-1]) / len(domains))
        assert run["experience_steps"] == [steps] * len(domains)
        speeds = [run["train_tokens_per_second"], run["train_tokens_per_cpu_second"]]
        assert finite([*speeds, run["wall_seconds"], run["cpu_seconds"], run["peak_rss_mib"]])
        assert min(speeds) > 0 and run["peak_rss_mib"] > 0
        assert 0 < run["eval_cpu_seconds"] < run["cpu_seconds"]
        # one pre-clipping gradient norm per step, per domain
        assert [len(norms) for norms in run["grad_norms"]] == [steps] * len(domains)
        assert all(finite(norms) and min(norms) > 0 for norms in run["grad_norms"])
        assert run["methods"][0]["name"] == name.removesuffix("_noclip")
        assert run["grad_clip"] == (None if name == "ewc_noclip" else quick["budget"]["grad_clip"])
        assert 0 < run["trainable_parameters"] <= run["parameters"]
    # every run starts from the same model, and LoRA trains only its adapters
    assert len({tuple(r["initial"]) for r in quick["runs"].values()}) == 1
    runs = quick["runs"]
    assert runs["lora"]["trainable_parameters"] < runs["naive"]["trainable_parameters"]
    assert runs["lora"]["lr"] == quick["budget"]["lr_lora"] and runs["naive"]["lr"] == quick["budget"]["lr"]


def test_report_renders_every_method(bench: Any, quick: dict[str, Any]) -> None:
    body = bench.doc_body(quick)
    for name in bench.METHODS:
        assert bench.label(name, quick["budget"]) in body
    assert "| initial |" in body and "failed" not in body
    assert "EWC and gradient clipping" in body  # the diagnostic pair is read


def test_a_failing_method_is_recorded_and_reported(bench: Any, monkeypatch: pytest.MonkeyPatch,
                                                   quick: dict[str, Any]) -> None:  # fmt: skip
    def broken(name: str, budget: Any, quick: bool) -> dict[str, Any]:
        raise RuntimeError("the adapter has no weight")

    monkeypatch.setattr(bench, "run_one", broken)
    record = bench.attempt("lora", bench.QUICK, quick=True)
    assert record["completed"] is False and "RuntimeError: the adapter has no weight" in record["error"]
    result = {**quick, "runs": {**quick["runs"], "lora": record}}
    body = bench.doc_body(result)
    assert "**no** (see below)" in body and "the adapter has no weight" in body
    assert "**lora failed**" in body
