"""Framework overhead: lifelong's loop against a hand-written PyTorch loop doing the same arithmetic.

Same stream (Split Fashion-MNIST, class-incremental, 5 x 2 classes), same MLP 2x400 and initial weights,
same data order, batch size, optimizer and evaluations (before training and after every experience on all
test sets). Timed in one process, the contenders interleaved (A B A B ...) so that machine noise hits both;
we report the median wall time of the repeats and the ratio. Peak memory (max RSS) is measured by running
each contender once in a fresh subprocess.

    python bench/overhead.py                 # full: 5 repeats, writes docs/BENCHMARKS.md's overhead section
    python bench/overhead.py --repeats 1 --train-per-class 300 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from docsection import write_section as write_marked

from lifelong import datasets
from lifelong.learner import Learner, _mix
from lifelong.methods import Naive, Replay
from lifelong.models import MLP
from lifelong.streams import class_incremental, subsample
from lifelong.streams.experience import Stream

ROOT = Path(__file__).resolve().parents[1]
SEED, EPOCHS, BATCH, LR, MEMORY = 0, 1, 32, 0.01, 500


def make_stream(train_per_class: int | None) -> Stream:
    ds = datasets.load("fashion_mnist")
    if train_per_class:
        ds = subsample(ds, train_per_class, None, seed=0)
    return class_incremental(ds, 5, seed=0)


def make_model(stream: Stream) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return MLP(stream.input_shape, stream.num_classes, [400, 400])


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: Stream) -> list[float]:
    model.eval()
    out = []
    for e in stream:
        correct = 0
        for i in range(0, len(e.test), 1000):
            correct += int((model(e.test.x[i : i + 1000]).argmax(1) == e.test.y[i : i + 1000]).sum())
        out.append(correct / len(e.test))
    model.train()
    return out


def hand_written(stream: Stream, replay: bool) -> list[float]:
    """The loop a careful user writes by hand: no hooks, no framework. Returns the last matrix row."""
    model = make_model(stream)
    torch.manual_seed(SEED)
    evaluate(model, stream)  # the framework evaluates the untrained model too (for forward transfer)
    if replay:
        mem_x = torch.zeros((MEMORY, *stream.input_shape))
        mem_y = torch.zeros(MEMORY, dtype=torch.long)
        size, seen, gen = 0, 0, torch.Generator().manual_seed(SEED)
    row: list[float] = []
    for i, e in enumerate(stream):
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        x, y, n = e.train.x, e.train.y, len(e.train)
        for epoch in range(EPOCHS):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(SEED, i, epoch)))
            for b in range(0, n, BATCH):
                idx = order[b : b + BATCH]
                bx, by = x[idx], y[idx]
                if replay:
                    r = torch.randperm(size, generator=gen)[: len(idx)] if size else None
                    old_x, old_y = (mem_x[r], mem_y[r]) if r is not None else (None, None)
                    if epoch == 0:  # reservoir sampling, vectorised (algorithm R)
                        pos = torch.arange(seen, seen + len(idx))
                        draw = torch.rand(len(idx), generator=gen, dtype=torch.float64)
                        slot = torch.where(pos < MEMORY, pos, (draw * (pos + 1).double()).long())
                        ok = slot < MEMORY
                        slot, rows = slot[ok], torch.nonzero(ok).squeeze(1)
                        if slot.numel() > 1:
                            o = torch.argsort(slot * len(idx) + rows)
                            slot, rows = slot[o], rows[o]
                            last = torch.ones_like(slot, dtype=torch.bool)
                            last[:-1] = slot[1:] != slot[:-1]
                            slot, rows = slot[last], rows[last]
                        mem_x[slot], mem_y[slot] = bx[rows], by[rows]
                        seen += len(idx)
                        size = min(MEMORY, seen)
                    if r is not None:  # replay what was stored before this batch arrived
                        bx, by = torch.cat([bx, old_x]), torch.cat([by, old_y])
                loss = F.cross_entropy(model(bx), by)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        row = evaluate(model, stream)
    return row


def with_lifelong(stream: Stream, replay: bool, run_dir: Path | None = None) -> list[float]:
    model = make_model(stream)
    methods = [Replay(MEMORY, seed=SEED)] if replay else [Naive()]
    learner = Learner(
        model, methods, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED, progress=False, run_dir=run_dir
    )
    return learner.run(stream).matrix[-1]


def warm_up() -> None:
    # torch 2.13's first optimizer step pays a ~1.4 s lazy import: pay it before timing anything
    m = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.zeros(1, 4)).sum().backward()
    opt.step()


CONTENDERS = {
    "hand-written naive": lambda s, d: hand_written(s, replay=False),
    "lifelong naive": lambda s, d: with_lifelong(s, replay=False),
    "hand-written replay": lambda s, d: hand_written(s, replay=True),
    "lifelong replay": lambda s, d: with_lifelong(s, replay=True),
    "lifelong naive + checkpoints": lambda s, d: with_lifelong(s, replay=False, run_dir=d),
}


def peak_rss(name: str, train_per_class: int | None) -> float:
    """Max RSS (MiB) of a fresh process that loads the data and runs one contender."""
    code = (
        "import sys, resource, tempfile, pathlib; sys.path.insert(0, 'bench'); import overhead as o; "
        f"s = o.make_stream({train_per_class!r}); o.warm_up(); "
        f"d = pathlib.Path(tempfile.mkdtemp()) / 'run'; o.CONTENDERS[{name!r}](s, d); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-per-class", type=int, default=None, help="subsample (smoke runs)")
    ap.add_argument("--no-write", action="store_true", help="write no result files")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    import tempfile

    stream = make_stream(args.train_per_class)
    warm_up()
    times: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    rows: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for name, fn in CONTENDERS.items():
            run_dir = Path(tempfile.mkdtemp()) / "run"
            t0 = time.perf_counter()
            rows[name] = fn(stream, run_dir)
            times[name].append(time.perf_counter() - t0)
            print(f"repeat {r + 1}/{args.repeats}  {name:30s} {times[name][-1]:7.2f} s", flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    memory = {} if args.skip_memory else {k: peak_rss(k, args.train_per_class) for k in CONTENDERS}

    def acc(name: str) -> float:
        return 100 * sum(rows[name]) / len(rows[name])

    lines = [
        "| contender | median wall s | ratio to hand-written | ACC % | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        base = "hand-written replay" if "replay" in name else "hand-written naive"
        mem = f"{memory[name]:.0f}" if memory else "-"
        lines.append(
            f"| {name} | {median[name]:.2f} | {median[name] / median[base]:.3f}x | {acc(name):.2f} | {mem} |"
        )
    same = (
        rows["lifelong naive"] == rows["hand-written naive"]
        and rows["lifelong replay"] == rows["hand-written replay"]
    )
    table = "\n".join(lines)
    print(table)
    print(f"identical final accuracies (same arithmetic): {same}")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/overhead.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "times": times,
        "median": median,
        "peak_rss_mib": memory,
        "identical_results": same,
        "table": table,
    }
    if not same:
        raise SystemExit("lifelong and the hand-written loop disagree: the comparison is not like for like")
    if not args.no_write:
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
        write_section(result)


def write_section(result: dict) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    body = (
        f"Measured {result['date']} with `{result['command']}` "
        f"({result['machine']}, torch {result['torch']}); "
        f"median of {len(next(iter(result['times'].values())))} interleaved repeats.\n\n{result['table']}\n\n"
        f"Same final accuracies as the hand-written loop (same arithmetic): {result['identical_results']}.\n"
    )
    write_marked(path, "overhead", body, "## Framework overhead")


if __name__ == "__main__":
    main()
