"""Start-up time of the command line: `lifelong --help`, `-h`, `--version`, `datasets` and `report RUN`, each
timed as a whole process (interpreter start, imports, the command), median of N runs, commands interleaved.

    python bench/startup.py                  # writes the "CLI start-up" section of docs/BENCHMARKS.md
    python bench/startup.py --repeats 3 --no-write

A small run is trained once first (not timed) for `report RUN`. One more run of each command under
`python -X importtime` says whether it imported torch and which top-level imports cost the most.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docsection import write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5  # --help, -h, --version, datasets and report; drawing with matplotlib costs what it costs
RUN_CONFIG = """\
data: {name: digits, train_per_class: 20, test_per_class: 10}
scenario: {type: class_incremental, experiences: 3, seed: 0}
model: {name: mlp, hidden: [32]}
method: {name: replay, memory: 40}
train: {epochs: 1, batch_size: 16, lr: 0.05}
"""


def lifelong_command() -> list[str]:
    """The installed `lifelong` script beside this interpreter (what users run), else `python -m`."""
    script = Path(sys.executable).parent / "lifelong"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lifelong.cli"]


def timed(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def imports(args: list[str], cwd: Path) -> tuple[bool, list[tuple[str, float]]]:
    """(whether torch was imported, the three costliest top-level imports in seconds) of one command."""
    argv = json.dumps(args)
    code = f"import sys\nfrom lifelong.cli import app\nsys.argv = ['lifelong', *{argv}]\napp()"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=cwd, capture_output=True, text=True
    )
    names, top = set(), []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)$", line)
        if m:
            names.add(m[3])
            if len(m[2]) == 1 and m[3] not in ("site", "encodings"):  # imported by the command, not nested
                top.append((m[3], int(m[1]) / 1e6))
    return "torch" in names, sorted(top, key=lambda t: -t[1])[:3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lifelong-startup-"))
    try:
        (work / "small.yaml").write_text(RUN_CONFIG)
        cli = lifelong_command()
        for out, extra in (("run", []), ("curves", ["train.eval_every=5"])):
            subprocess.run(
                [*cli, "run", "small.yaml", *extra, "--out", out, "--no-progress"],
                cwd=work,
                check=True,
                capture_output=True,
            )
        commands = {
            "lifelong --help": ["--help"],
            "lifelong -h": ["-h"],
            "lifelong --version": ["--version"],
            "lifelong datasets": ["datasets"],
            "lifelong report RUN": ["report", "run"],
            "lifelong report RUN (evaluated during training: curves drawn)": ["report", "curves"],
            "lifelong report RUN --plots (PNG files too)": ["report", "run", "--plots"],
        }
        baselines = {
            "python -c pass (interpreter alone)": [sys.executable, "-c", "pass"],
            "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
        }
        everything = {**{k: [*cli, *v] for k, v in commands.items()}, **baselines}
        for argv in everything.values():  # warm the file cache
            timed(argv, work)
        times: dict[str, list[float]] = {name: [] for name in everything}
        for _ in range(args.repeats):
            for name, argv in everything.items():
                times[name].append(timed(argv, work))
        probes = {name: imports(argv, work) for name, argv in commands.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = ["| command | median wall s | min s | imports torch | costliest top-level imports (s) |"]
    rows.append("|---|---:|---:|---|---|")
    for name, samples in times.items():
        torch_imported, top = probes.get(name, (None, []))
        flag = "-" if torch_imported is None else ("**yes**" if torch_imported else "no")
        costly = ", ".join(f"`{module}` {s:.2f}" for module, s in top) or "-"
        rows.append(
            f"| `{name}` | {statistics.median(samples):.2f} | {min(samples):.2f} | {flag} | {costly} |"
        )
    section = (
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/startup.py --repeats {args.repeats}` "
        f"({platform.machine()}, Python {platform.python_version()}); median of {args.repeats} runs, "
        f"commands interleaved. Target: under {TARGET_S} s for --help, -h, --version, datasets and report "
        "(a run's page; drawing curves or PNG files imports matplotlib).\n\n" + "\n".join(rows) + "\n"
    )
    print(section)
    if not args.no_write:
        write_section(ROOT / "docs" / "BENCHMARKS.md", "startup", section, "## CLI start-up")


if __name__ == "__main__":
    main()
