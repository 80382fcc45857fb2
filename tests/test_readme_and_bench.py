"""The README's Python example runs as written, and the overhead benchmark's smoke version agrees with a
hand-written loop (same arithmetic, same accuracies)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_as_written_and_gives_the_same_numbers_in_two_processes(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    runs = []
    for name in ("first", "second"):  # two fresh processes, side by side
        folder = tmp_path / name
        folder.mkdir()
        runs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
    outputs = []
    for proc in runs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out)
    acc = float(re.search(r"ACC (\d\.\d+)", outputs[0]).group(1))
    assert 0.5 < acc < 0.9  # replay on Split Fashion-MNIST: far above naive's ~0.2
    assert outputs[0] == outputs[1]  # the same accuracies to the last printed digit
    digests = [
        json.loads((tmp_path / name / "runs" / "readme" / "checkpoints" / "LATEST.json").read_text())["files"]
        for name in ("first", "second")
    ]
    for file in ("model.safetensors", "method-0-replay.safetensors", "rng.safetensors"):
        assert digests[0][file] == digests[1][file], file  # bit-identical weights, memory and RNG
    assert (tmp_path / "first" / "runs" / "readme" / "report.html").exists()  # Python runs write it too


def test_overhead_bench_smoke():
    proc = subprocess.run(
        [
            sys.executable,
            "bench/overhead.py",
            "--repeats",
            "1",
            "--train-per-class",
            "40",
            "--no-write",
            "--skip-memory",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "identical final accuracies (same arithmetic): True" in proc.stdout
    assert "| lifelong replay |" in proc.stdout


def test_reproduce_bench_smoke(tmp_path):
    cache = tmp_path / "runs.jsonl"
    args = [sys.executable, "bench/reproduce.py", "--quick", "--no-write", "--workers", "1"]
    args += ["--seeds", "0", "1"]
    args += ["--scenarios", "class_il", "task_il", "--methods", "naive", "joint", "replay", "icarl", "ewc"]
    proc = subprocess.run(
        [*args, "--cache", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FAILED" not in proc.stderr
    assert "### Split Fashion-MNIST, class-incremental (5 x 2), MLP 2x400" in proc.stdout
    assert "| icarl (m=500) |" in proc.stdout and "| ewc (strength 10000) |" in proc.stdout
    assert "Kendall's tau" in proc.stdout
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {r["seed"] for r in rows} == {0, 1} and all(0 <= r["summary"]["acc"] <= 1 for r in rows)
    # a second call finds every run cached and does nothing but the report
    again = subprocess.run(
        [*args, "--cache", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert "0 runs to do" in again.stderr
