"""The README's Python example runs as written, and the overhead benchmark's smoke version agrees with a
hand-written loop (same arithmetic, same accuracies)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    acc = float(re.search(r"ACC (\d\.\d+)", out).group(1))
    assert 0.5 < acc < 0.9  # replay on Split Fashion-MNIST: far above naive's ~0.2
    assert (tmp_path / "runs" / "readme" / "results.json").exists()


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
