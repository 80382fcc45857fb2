"""Reproduction: every method of the library on four Fashion-MNIST scenarios, 3 seeds, into docs/RESULTS.md.

Scenarios (van de Ven, Tuytelaars & Tolias 2022, "Three types of incremental learning", on Fashion-MNIST):
  class_il      Split Fashion-MNIST, 5 experiences x 2 classes, class-incremental, MLP 2x400
  task_il       the same split, task-incremental (task labels given, one head per task)
  permuted      Permuted Fashion-MNIST, 10 permutations, domain-incremental, MLP 2x400
  rotated       Rotated Fashion-MNIST, 5 angles over [0, 180), domain-incremental, MLP 2x400
  permuted_long Permuted with fewer images and 5 epochs: the regularisers where the model forgets
  class_il_cnn  class-incremental with a small CNN (a subset of the methods, 2000 images per class)
Replay methods run with memories of 200 and 500 samples. Every run is one `lifelong` config (the same
path as `lifelong run`), so a row of the table is reproduced by the config printed with `--show`.

    python bench/reproduce.py                      # everything (about an hour on 2 cores), then the report
    python bench/reproduce.py --scenarios class_il --seeds 0   # a part
    python bench/reproduce.py --report-only        # rebuild docs/RESULTS.md from the cached runs
    python bench/reproduce.py --quick --no-write   # smoke: tiny data, seconds

Each finished run is appended to bench/results/reproduce.jsonl (keyed by scenario, method and seed) and
skipped when the script runs again, so an interrupted reproduction continues where it stopped; `--fresh`
starts over. Runs go to `--workers` processes (one torch thread each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from typing import Any

from docsection import write_section

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "results" / "reproduce.jsonl"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
SEEDS = (0, 1, 2)
MEMORIES = (200, 500)

# --- the scenarios -------------------------------------------------------------------------------------

MLP = {"name": "mlp", "hidden": [400, 400]}
CNN = {"name": "cnn", "channels": [16, 32], "hidden": 128}
TRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "sgd", "eval_batch_size": 2000}

SCENARIOS: dict[str, dict[str, Any]] = {
    "class_il": {
        "title": "Split Fashion-MNIST, class-incremental (5 x 2), MLP 2x400",
        "data": {"name": "fashion_mnist"},
        "scenario": {"type": "class_incremental", "experiences": 5},
        "model": MLP,
    },
    "task_il": {
        "title": "Split Fashion-MNIST, task-incremental (5 x 2), MLP 2x400",
        "data": {"name": "fashion_mnist"},
        "scenario": {"type": "task_incremental", "experiences": 5},
        "model": MLP,
    },
    "permuted": {
        "title": "Permuted Fashion-MNIST, domain-incremental (10 permutations, 1000 training images per "
        "class), MLP 2x400",
        "data": {"name": "fashion_mnist", "train_per_class": 1000, "test_per_class": 500},
        "scenario": {"type": "permuted", "experiences": 10},
        "model": MLP,
    },
    "rotated": {
        "title": "Rotated Fashion-MNIST, domain-incremental (5 angles in [0, 180), 2000 training images per "
        "class), MLP 2x400",
        "data": {"name": "fashion_mnist", "train_per_class": 2000, "test_per_class": 500},
        "scenario": {"type": "rotated", "experiences": 5},
        "model": MLP,
    },
    "permuted_long": {
        "title": "Permuted Fashion-MNIST, 10 permutations, 300 training images per class, 5 epochs: "
        "regularisation where the model is trained long enough to forget",
        "data": {"name": "fashion_mnist", "train_per_class": 300, "test_per_class": 100},
        "scenario": {"type": "permuted", "experiences": 10},
        "model": MLP,
        "train": {"epochs": 5},
    },
    "class_il_cnn": {
        "title": "Split Fashion-MNIST, class-incremental (5 x 2), CNN (16-32 channels, 128 hidden), "
        "2000 training images per class",
        "data": {"name": "fashion_mnist", "train_per_class": 2000, "test_per_class": 500},
        "scenario": {"type": "class_incremental", "experiences": 5},
        "model": CNN,
    },
}

# --- the methods ---------------------------------------------------------------------------------------
# label -> the config's `method` entry (a list composes). Replay methods get one row per memory size.


def _with_memory(name: str, **extra: Any) -> dict[str, list[dict[str, Any]]]:
    return {f"{name} (m={m})": [{"name": name, "memory": m, **extra}] for m in MEMORIES}


BASELINES = {"naive": [{"name": "naive"}], "joint": [{"name": "joint"}]}
REGULARISERS = {
    "ewc": [{"name": "ewc"}],
    "online_ewc": [{"name": "online_ewc"}],
    "si": [{"name": "si"}],
    "mas": [{"name": "mas"}],
    "l2": [{"name": "l2"}],
    "lwf": [{"name": "lwf"}],
}
# Split streams (class- and task-IL) have 5 experiences instead of 10 permutations: much stronger
# regularisation stays stable there, and van de Ven et al. tune the strength per scenario too. Chosen on
# task-IL, seed 0 (python bench/reproduce.py ... ; see docs/RESULTS.md), then used for both split scenarios.
SPLIT_STRENGTHS = {"ewc": 10000, "online_ewc": 10000, "si": 1000, "mas": 10, "l2": 1}
TUNED_REGULARISERS = {
    f"{name} (strength {strength})": [{"name": name, "strength": strength}]
    for name, strength in SPLIT_STRENGTHS.items()
}
REPLAY = {
    **_with_memory("replay"),
    **_with_memory("er_ace"),
    **_with_memory("der"),
    **_with_memory("derpp"),
    **_with_memory("agem"),
    "gem (256 per experience)": [{"name": "gem", "memory_per_experience": 256}],
    **_with_memory("gdumb"),
}
CLASS_IL_ONLY = {
    **_with_memory("icarl"),
    **{
        f"wa + replay (m={m})": [{"name": "replay", "memory": m, "policy": "class_balanced"}, {"name": "wa"}]
        for m in MEMORIES
    },
}
STRUCTURAL = {
    "lora": [{"name": "lora"}],
    "hft": [{"name": "hft"}],
    "merge (average)": [{"name": "merge", "mode": "average"}],
    "merge (task arithmetic)": [{"name": "merge", "mode": "task_arithmetic"}],
    "lwf + replay (m=500)": [{"name": "replay", "memory": 500}, {"name": "lwf"}],
}
FROZEN = {"ncm": [{"name": "ncm"}], "analytic": [{"name": "analytic", "buffer": 2000}]}
CNN_SUBSET = {
    **BASELINES,
    "ewc": [{"name": "ewc"}],
    "lwf": [{"name": "lwf"}],
    "replay (m=500)": [{"name": "replay", "memory": 500}],
    "derpp (m=500)": [{"name": "derpp", "memory": 500}],
    "agem (m=500)": [{"name": "agem", "memory": 500}],
    "icarl (m=500)": [{"name": "icarl", "memory": 500}],
}


def plan_methods(scenario: str) -> dict[str, list[dict[str, Any]]]:
    if scenario == "class_il_cnn":
        return CNN_SUBSET
    if scenario == "permuted_long":
        return {**BASELINES, **REGULARISERS, "replay (m=500)": [{"name": "replay", "memory": 500}]}
    plan = {**BASELINES, **REGULARISERS, **REPLAY}
    if scenario in ("class_il", "task_il"):
        plan.update(TUNED_REGULARISERS)
    else:  # domain-IL: one memory size (the 200 / 500 comparison is made on the split streams)
        plan = {k: v for k, v in plan.items() if "(m=200)" not in k}
    if scenario == "class_il":
        plan.update(CLASS_IL_ONLY)
    plan.update(STRUCTURAL)
    if scenario != "task_il":  # frozen-feature classifiers have no task heads
        plan.update(FROZEN)
    return plan


def make_config(scenario: str, method: list[dict[str, Any]], seed: int, quick: bool) -> dict[str, Any]:
    sc = SCENARIOS[scenario]
    data = dict(sc["data"])
    scen = {**sc["scenario"], "seed": seed}
    train = {**TRAIN, **sc.get("train", {})}
    if quick:  # seconds, for the smoke test: a few samples per class, two experiences
        data.update(train_per_class=20, test_per_class=10)
        scen["experiences"] = 2 if scenario != "class_il" else 5
        method = [
            {**m, **({"memory": min(m["memory"], 20)} if "memory" in m else {})}
            | ({"memory_per_experience": 10} if m["name"] == "gem" else {})
            | ({"buffer": 64} if m["name"] == "analytic" else {})
            for m in method
        ]
    model = sc["model"]
    return {"data": data, "scenario": scen, "model": model, "method": method, "train": train, "seed": seed}


# --- running -------------------------------------------------------------------------------------------


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lifelong.config import parse_config
    from lifelong.experiment import run_config

    torch.set_num_threads(job["threads"])
    cfg = parse_config(job["config"])
    began = time.perf_counter()
    results = run_config(cfg, out=None, progress=False)
    return {
        "key": job["key"],
        "scenario": job["scenario"],
        "label": job["label"],
        "seed": job["seed"],
        "config": job["config"],
        "summary": results.summary,
        "matrix": results.matrix,
        "wall_seconds": time.perf_counter() - began,
        "threads": job["threads"],
    }


def _warm_up(threads: int) -> None:
    """torch 2.13's first optimizer step costs ~1.4 s (a lazy import): pay it before timing anything."""
    import torch

    torch.set_num_threads(threads)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    p.sum().backward()
    opt.step()


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["key"]] = row
    return out


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cache_path = Path(args.cache)
    if args.fresh and cache_path.exists():
        cache_path.unlink()
    cache = load_cache(cache_path)
    jobs = []
    for scenario in args.scenarios:
        for label, method in plan_methods(scenario).items():
            if args.methods and not any(label.startswith(m) for m in args.methods):
                continue
            for seed in args.seeds:
                key = f"{scenario}|{label}|{seed}"
                if key in cache:
                    continue
                config = make_config(scenario, method, seed, args.quick)
                jobs.append(
                    {
                        "key": key,
                        "scenario": scenario,
                        "label": label,
                        "seed": seed,
                        "config": config,
                        "threads": args.threads,
                    }
                )
    print(f"{len(jobs)} runs to do, {len(cache)} cached", file=sys.stderr)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=args.workers, initializer=_warm_up, initargs=(args.threads,))
    with pool:
        futures = {pool.submit(run_one, job): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                row = future.result()
            except Exception as e:  # a failing method must not lose the other runs: record and go on
                print(f"FAILED {job['key']}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            cache[row["key"]] = row
            with open(cache_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            acc = row["summary"]["acc"]
            print(
                f"[{done}/{len(jobs)} {time.perf_counter() - began:6.0f}s] {row['key']}: "
                f"ACC {100 * acc:.2f} in {row['wall_seconds']:.1f}s",
                file=sys.stderr,
            )
    return cache


# --- the report ----------------------------------------------------------------------------------------

# van de Ven, Tuytelaars & Tolias (2022), Table 3, Split CIFAR-100 class-IL (ACC %)
PUBLISHED_CLASS_IL = {
    "joint": 49.78,
    "icarl (m=500)": 37.83,
    "replay (m=500)": 37.57,
    "lwf": 25.57,
    "agem (m=500)": 20.38,
    "ewc": 8.24,
    "si": 8.10,
    "naive": 7.71,
}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> tuple[float, float]:
        values = [100 * r["summary"][key] for r in rows if r["summary"].get(key) is not None]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return {
        "acc": stats("acc"),
        "bwt": stats("bwt"),
        "forgetting": stats("forgetting"),
        "wall": statistics.fmean(r["wall_seconds"] for r in rows),
        "n": len(rows),
    }


def _pm(mean_std: tuple[float, float]) -> str:
    mean, std = mean_std
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def table(cache: dict[str, dict[str, Any]], scenario: str) -> tuple[str, dict[str, dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in cache.values():
        if row["scenario"] == scenario:
            groups.setdefault(row["label"], []).append(row)
    order = [label for label in plan_methods(scenario) if label in groups]
    agg = {label: aggregate(groups[label]) for label in order}
    lines = [
        "| method | ACC % | BWT % | forgetting % | wall s | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in sorted(order, key=lambda lb: -agg[lb]["acc"][0]):
        a = agg[label]
        lines.append(
            f"| {label} | {_pm(a['acc'])} | {_pm(a['bwt'])} | {_pm(a['forgetting'])} "
            f"| {a['wall']:.1f} | {a['n']} |"
        )
    return "\n".join(lines), agg


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    n, s = len(xs), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(math.copysign(1, (xs[i] - xs[j]) * (ys[i] - ys[j]))) if xs[i] != xs[j] else 0
    return s / (n * (n - 1) / 2)


def ordering_section(agg: dict[str, dict[str, Any]]) -> str:
    # the published numbers use per-scenario tuned strengths: compare with our tuned rows where they ran
    agg = dict(agg)
    for name, strength in SPLIT_STRENGTHS.items():
        if f"{name} (strength {strength})" in agg:
            agg[name] = agg[f"{name} (strength {strength})"]
    labels = [lb for lb in PUBLISHED_CLASS_IL if lb in agg]
    if len(labels) < 3:
        return "Not enough methods ran to compare the ordering."
    published = [PUBLISHED_CLASS_IL[lb] for lb in labels]
    ours = [agg[lb]["acc"][0] for lb in labels]
    lines = [
        "| method | published ACC % (Split CIFAR-100) | published rank "
        "| ours ACC % (Split Fashion-MNIST) | our rank |",
        "|---|---:|---:|---:|---:|",
    ]
    pub_rank = {lb: r for r, lb in enumerate(sorted(labels, key=lambda lb: -PUBLISHED_CLASS_IL[lb]), 1)}
    our_rank = {lb: r for r, lb in enumerate(sorted(labels, key=lambda lb: -agg[lb]["acc"][0]), 1)}
    for lb in labels:
        lines.append(
            f"| {lb} | {PUBLISHED_CLASS_IL[lb]:.2f} | {pub_rank[lb]} | {_pm(agg[lb]['acc'])} "
            f"| {our_rank[lb]} |"
        )
    inversions = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            gap_pub = PUBLISHED_CLASS_IL[a] - PUBLISHED_CLASS_IL[b]
            gap_ours = agg[a]["acc"][0] - agg[b]["acc"][0]
            noise = agg[a]["acc"][1] + agg[b]["acc"][1]
            if abs(gap_pub) > 2.0 and gap_pub * gap_ours < 0 and abs(gap_ours) > noise:
                inversions.append(f"{a} vs {b} (published {gap_pub:+.2f}, ours {gap_ours:+.2f})")
    lines.append("")
    tau = kendall_tau(published, ours)
    lines.append(f"Kendall's tau between the two orderings: {tau:.2f} (1 = identical).")
    lines.append(
        "Pairs ordered the other way round, where the published gap exceeds 2 points and ours exceeds the "
        "sum of the two standard deviations: " + ("; ".join(inversions) if inversions else "none") + "."
    )
    return "\n".join(lines)


def comparisons(aggs: dict[str, dict[str, dict[str, Any]]]) -> str:
    out = []
    for scenario, agg in aggs.items():
        for m in MEMORIES:
            er, derpp = agg.get(f"replay (m={m})"), agg.get(f"derpp (m={m})")
            if er and derpp:
                out.append(
                    f"| {scenario} | DER++ vs ER, m={m} | {_pm(derpp['acc'])} | {_pm(er['acc'])} | "
                    f"{derpp['acc'][0] - er['acc'][0]:+.2f} |"
                )
    for scenario in ("permuted", "permuted_long", "rotated", "task_il", "class_il"):
        agg = aggs.get(scenario, {})
        names = ["ewc", "online_ewc", "si"] + [f"{n} (strength {SPLIT_STRENGTHS[n]})" for n in ("ewc", "si")]
        for name in names:
            if name in agg and "naive" in agg:
                out.append(
                    f"| {scenario} | {name} vs naive | {_pm(agg[name]['acc'])} "
                    f"| {_pm(agg['naive']['acc'])} | "
                    f"{agg[name]['acc'][0] - agg['naive']['acc'][0]:+.2f} |"
                )
    if not out:
        return ""
    head = ["| scenario | comparison | first ACC % | second ACC % | difference |", "|---|---|---:|---:|---:|"]
    return "\n".join([*head, *out])


def report(cache: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    parts = [
        f"Generated {date.today().isoformat()} by `python bench/reproduce.py` "
        f"({len(cache)} runs; {args.workers} worker processes x {args.threads} torch thread, 2-core machine; "
        "wall time is per run, training and evaluation).",
        "",
        "Training in every scenario: SGD, lr 0.01, batch 32, 1 epoch per experience, default method "
        "options (see docs/methods/). ACC = mean accuracy over all experiences after the last one; BWT = "
        "backward transfer; forgetting = mean drop from each experience's best accuracy. Mean ± standard "
        "deviation over the seeds.",
    ]
    aggs = {}
    for scenario in SCENARIOS:
        if not any(r["scenario"] == scenario for r in cache.values()):
            continue
        text, agg = table(cache, scenario)
        aggs[scenario] = agg
        parts += ["", f"### {SCENARIOS[scenario]['title']}", "", text]
    if "class_il" in aggs:
        parts += [
            "",
            "### Ordering against van de Ven et al. (2022), Table 3 (class-IL)",
            "",
            ordering_section(aggs["class_il"]),
        ]
    cmp = comparisons(aggs)
    if cmp:
        parts += ["", "### DER++ against ER at equal memory; EWC and SI against naive", "", cmp]
    return "\n".join(parts)


def write_report(text: str) -> None:
    write_section(RESULTS_MD, "reproduce", text, "# Results")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", help="only the rows whose label starts with one of these")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--cache", default=str(CACHE))
    parser.add_argument("--fresh", action="store_true", help="forget cached runs")
    parser.add_argument("--quick", action="store_true", help="tiny data (smoke test)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the report instead of writing it")
    parser.add_argument("--show", metavar="KEY", help="print the config of scenario|label|seed and exit")
    args = parser.parse_args(argv)
    if args.show:
        scenario, label, seed = args.show.split("|")
        config = make_config(scenario, plan_methods(scenario)[label], int(seed), args.quick)
        print(json.dumps(config, indent=2))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    cache = load_cache(Path(args.cache)) if args.report_only else run_all(args)
    text = report(cache, args)
    if args.no_write:
        print(text)
    else:
        write_report(text)
        print(f"wrote {RESULTS_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
