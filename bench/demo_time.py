"""Wall time of `lifelong demo` (the README's main job) on this machine, end to end in a fresh process:
start-up, data loading, three runs (Naive, Replay, Joint), reports.

    python bench/demo_time.py            # writes the demo section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docsection import write_section

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "demo"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lifelong.cli", "demo", "--no-progress", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    acc = {
        name: json.loads((out / name / "results.json").read_text())["summary"]["acc"]
        for name in ("naive", "replay", "joint")
    }
    per_run = {name: json.loads((out / name / "results.json").read_text())["wall_seconds"] for name in acc}
    print(proc.stdout[-1500:])
    line = (
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/demo_time.py`: `lifelong demo` took "
        f"**{wall:.0f} s** end to end (limit: 300 s). ACC: "
        + ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items())
        + "; training + evaluation per run: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in per_run.items())
        + ".\n"
    )
    print(line)
    if not args.no_write:
        write_section(ROOT / "docs" / "BENCHMARKS.md", "demo", line, "## Demo wall time")


if __name__ == "__main__":
    main()
