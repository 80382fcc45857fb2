"""Whole-process cost of `lifelong run` against the script a user writes by hand for the same job.

Split Fashion-MNIST (5 experiences of 2 classes), MLP 2x400, naive fine-tuning, SGD lr 0.01, batch 32,
1 epoch: `lifelong run bench/configs/split_fmnist_naive.yaml --no-progress` (imports, data, checks,
fingerprint, training, evaluation with confusion matrices, checkpoints, results.json, plots and
report.html) against `python bench/handwritten/split_fmnist_naive.py` (imports, data, training,
evaluation, results.json and a torch.save of the model). Each is a fresh process, timed from start to
exit; the two interleaved (A B A B ...), median of the repeats, ratio measured in this one run.

    python bench/process_overhead.py              # 5 repeats; writes docs/BENCHMARKS.md's section
    python bench/process_overhead.py --repeats 1 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docsection import write_section as write_marked

ROOT = Path(__file__).resolve().parents[1]
LIFELONG = str(Path(sys.executable).with_name("lifelong"))


def contenders(out: Path) -> dict[str, list[str]]:
    return {
        "hand-written script": [
            sys.executable,
            str(ROOT / "bench/handwritten/split_fmnist_naive.py"),
            str(out / "hw"),
        ],
        "lifelong run": [
            LIFELONG,
            "run",
            str(ROOT / "bench/configs/split_fmnist_naive.yaml"),
            "--out",
            str(out / "ll"),
            "--no-progress",
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    times: dict[str, list[float]] = {}
    accs: dict[str, float] = {}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            for name, cmd in contenders(Path(tmp)).items():
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                elapsed = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
                times.setdefault(name, []).append(elapsed)
                folder = Path(tmp) / ("hw" if name.startswith("hand") else "ll")
                res = json.loads((folder / "results.json").read_text())
                accs[name] = res["acc"] if "acc" in res else res["summary"]["acc"]
                print(f"repeat {r + 1}/{args.repeats}  {name:22s} {elapsed:6.2f} s", flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    base = median["hand-written script"]
    ratio = median["lifelong run"] / base
    table = "\n".join(
        [
            "| contender | median wall s (whole process) | ratio | ACC % |",
            "|---|---:|---:|---:|",
            *(f"| {k} | {median[k]:.2f} | {median[k] / base:.3f}x | {100 * accs[k]:.1f} |" for k in times),
        ]
    )
    print(table)
    print(f"lifelong run / hand-written script: {ratio:.3f}x (target 1.10x)")
    if not args.no_write:
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        record = {"date": time.strftime("%Y-%m-%d"), "times": times, "median": median, "ratio": ratio}
        (out / "process_overhead.json").write_text(json.dumps(record, indent=2) + "\n")
        write_section(table, times, ratio)


def write_section(table: str, times: dict[str, list[float]], ratio: float) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    repeats = len(next(iter(times.values())))
    each = "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items())
    body = (
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/process_overhead.py` "
        f"(median of {repeats} interleaved repeats, each a fresh process):\n\n{table}\n\n"
        f"Whole-process ratio: **{ratio:.3f}x** (target 1.10x). Every repeat, in seconds: {each}.\n"
    )
    write_marked(
        path,
        "process",
        body,
        "## `lifelong run` as a whole process",
        "`bench/process_overhead.py` times `lifelong run` on Split Fashion-MNIST (naive, MLP 2x400) from "
        "process start to exit, against a hand-written script doing the same job "
        "(`bench/handwritten/split_fmnist_naive.py`): imports, data, training, evaluation and output "
        "included.",
    )


if __name__ == "__main__":
    main()
