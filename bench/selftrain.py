"""Self-training on Fashion-MNIST: does learning from unlabeled data help, and can its confidence be trusted?

Part 1 (one experience of all 10 classes, an MLP 784-256-10): 100 / 500 / 1000 labels (10 / 50 / 100 per
class), the other training images unlabeled; labels drawn uniformly, and drawn with selection bias
(`label_bias: 0.8`: about 90 % of each class's labels from one half of the input space). Variants:

    supervised        the labelled images only (naive)
    pseudo_softmax    pseudo-labelling by an EMA teacher, confidence = max softmax, threshold 0.95
    fixmatch          FixMatch-like weak/strong consistency, threshold 0.95
    topk_softmax      pseudo-labelling of the most confident half of each unlabeled batch, by max softmax
    topk_tsim         the same, ranked by T-similarity (5 heads with a diversity term)

The two top-k variants select the same number of samples, so their pseudo-label precision compares the
rankings of the two confidence scores directly (the T-similarity paper's question under selection bias).

Part 2: class-incremental Split Fashion-MNIST (5 x 2 classes) with 10 % labels per experience: ACC with and
without self-training (pseudo_softmax), with and without replay (memory 500).

    python bench/selftrain.py           # 3 seeds (~25 min on one core), docs/RESULTS.md section `selftrain`
    python bench/selftrain.py --quick   # smoke: tiny subsets, one seed, no doc section
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from docsection import write_section  # noqa: E402

from lifelong.config import parse_config  # noqa: E402
from lifelong.experiment import run_config  # noqa: E402

RESULTS_MD = ROOT / "docs" / "RESULTS.md"
RESULTS_JSON = ROOT / "bench" / "results" / "selftrain.json"
HEADING = "## Self-training: learning from unlabeled data"

LABELS = (10, 50, 100)  # per class: 100 / 500 / 1000 labels
VARIANTS = {
    "supervised": {"name": "naive"},
    "pseudo_softmax": {"name": "pseudo_label", "confidence": "softmax", "threshold": 0.95, "teacher": "ema"},
    "fixmatch": {"name": "fixmatch", "threshold": 0.95},
    "topk_softmax": {
        "name": "pseudo_label",
        "confidence": "softmax",
        "selection": "topk",
        "share": 0.5,
        "teacher": "ema",
    },
    "topk_tsim": {
        "name": "pseudo_label",
        "confidence": "tsimilarity",
        "selection": "topk",
        "share": 0.5,
        "teacher": "ema",
    },
}
STREAM_VARIANTS = {
    "supervised": [{"name": "naive"}],
    "self_training": [{"name": "pseudo_label", "confidence": "softmax", "threshold": 0.95, "teacher": "ema"}],
    "replay": [{"name": "replay", "memory": 500}],
    "replay+self_training": [
        {"name": "replay", "memory": 500},
        {"name": "pseudo_label", "confidence": "softmax", "threshold": 0.95, "teacher": "ema"},
    ],
}
STEPS = 600  # optimizer steps per run in part 1, whatever the number of labels (epochs scale with it)


def one_experience(labels: int, bias: float | None, method: dict, seed: int, quick: bool) -> dict[str, Any]:
    per_class, test = (60, 20) if quick else (600, 200)
    batch = 32
    epochs = max(1, math.ceil((30 if quick else STEPS) * batch / (labels * 10)))
    raw = {
        "data": {"name": "fashion_mnist", "train_per_class": per_class, "test_per_class": test},
        "scenario": {"type": "class_incremental", "experiences": 1, "labels_per_class": labels, "seed": seed,
                     **({"label_bias": bias} if bias else {})},
        "model": {"name": "mlp", "hidden": [256]},
        "method": [method],
        "train": {"epochs": epochs, "batch_size": batch, "lr": 0.05},
        "seed": seed,
    }  # fmt: skip
    began = time.perf_counter()
    results = run_config(parse_config(raw), None, progress=False).to_dict()
    pseudo = (results.get("pseudo_labels") or [{}])[-1]
    return {
        "accuracy": results["matrix"][-1][0],
        "precision": pseudo.get("precision"),
        "coverage": pseudo.get("coverage"),
        "ece": pseudo.get("ece"),
        "seconds": time.perf_counter() - began,
    }


def class_incremental(methods: list[dict], seed: int, quick: bool) -> dict[str, Any]:
    raw = {
        "data": {"name": "fashion_mnist", "train_per_class": 60 if quick else 1000,
                 "test_per_class": 20 if quick else 200},
        "scenario": {"type": "class_incremental", "experiences": 5, "label_fraction": 0.1, "seed": seed},
        "model": {"name": "mlp", "hidden": [256]},
        "method": methods,
        "train": {"epochs": 2 if quick else 10, "batch_size": 32, "lr": 0.05},
        "seed": seed,
    }  # fmt: skip
    results = run_config(parse_config(raw), None, progress=False).to_dict()
    pseudo = results.get("pseudo_labels") or []
    return {
        "acc": results["summary"]["acc"],
        "precision": [p.get("precision") for p in pseudo] or None,
    }


def mean_std(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def fmt(stat: dict[str, float] | None, scale: float = 100.0) -> str:
    return "–" if stat is None else f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny subsets, one seed, no doc")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    labels = (10,) if args.quick else LABELS
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    part1: dict[str, Any] = {}
    for bias in (None, 0.8):
        for n in labels:
            for name, method in VARIANTS.items():
                runs = [one_experience(n, bias, method, s, args.quick) for s in seeds]
                key = f"{'biased' if bias else 'uniform'}/{n * 10}/{name}"
                part1[key] = {
                    "runs": runs,
                    "accuracy": mean_std([r["accuracy"] for r in runs]),
                    "precision": mean_std([r["precision"] for r in runs]),
                    "coverage": mean_std([r["coverage"] for r in runs]),
                }
                print(f"[{time.strftime('%H:%M:%S')}] {key}: acc {fmt(part1[key]['accuracy'])}, precision "
                      f"{fmt(part1[key]['precision'])}", flush=True)  # fmt: skip
    part2: dict[str, Any] = {}
    for name, methods in STREAM_VARIANTS.items():
        runs = [class_incremental(methods, s, args.quick) for s in seeds]
        part2[name] = {"runs": runs, "acc": mean_std([r["acc"] for r in runs])}
        print(f"[{time.strftime('%H:%M:%S')}] class-IL {name}: ACC {fmt(part2[name]['acc'])}", flush=True)
    result = {
        "date": date.today().isoformat(),
        "command": " ".join(["python bench/selftrain.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{os.cpu_count()}-core {platform.machine()} (load {load_before:.1f} at the start), "
        f"{args.threads} torch thread(s), torch {torch.__version__}",
        "seeds": seeds,
        "labels": [n * 10 for n in labels],
        "part1": part1,
        "part2": part2,
        "minutes": (time.perf_counter() - began) / 60,
    }
    out = args.out or (None if args.quick else RESULTS_JSON)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    if not args.quick and not args.no_write:
        write_section(RESULTS_MD, "selftrain", doc_section(result), HEADING)
    return result


def verdicts(r: dict[str, Any]) -> list[str]:
    p1 = r["part1"]
    lines = []
    for n in r["labels"]:
        sup = p1[f"uniform/{n}/supervised"]["accuracy"]["mean"]
        best = max(VARIANTS, key=lambda v: p1[f"uniform/{n}/{v}"]["accuracy"]["mean"])
        gain = p1[f"uniform/{n}/{best}"]["accuracy"]["mean"] - sup
        lines.append(
            f"- {n} labels, uniform: the best variant is {best} ({gain * 100:+.1f} points over supervised "
            "only)."
        )
    wins = []
    for n in r["labels"]:
        soft = p1[f"biased/{n}/topk_softmax"]["precision"]
        tsim = p1[f"biased/{n}/topk_tsim"]["precision"]
        if soft and tsim:
            wins.append(tsim["mean"] > soft["mean"])
            lines.append(
                f"- {n} labels, biased labelling, equal selection share: pseudo-label precision T-similarity "
                f"{tsim['mean'] * 100:.1f} % vs softmax {soft['mean'] * 100:.1f} %."
            )
    if wins:
        held = (
            "holds" if all(wins) else ("holds for some label counts only" if any(wins) else "does not hold")
        )
        claim = "T-similarity beats softmax confidence under biased labelling (the paper's claim)"
        lines.append(f"- {claim}: **{held}**.")
    p2 = r["part2"]
    lines.append(
        "- Class-incremental, 10 % labels: ACC "
        + ", ".join(f"{k} {fmt(v['acc'])} %" for k, v in p2.items())
        + "."
    )
    return lines


def doc_section(r: dict[str, Any]) -> str:
    p1 = r["part1"]
    lines = [
        f"Generated {r['date']} by `{r['command']}` ({r['minutes']:.0f} min; {r['machine']}).",
        "",
        __doc__.split("\n\n", 1)[1].split("    python bench")[0].strip(),
        "",
    ]
    for bias in ("uniform", "biased"):
        lines += [
            f"**{'Uniform' if bias == 'uniform' else 'Biased (label_bias 0.8)'} labelling**: test accuracy % "
            "(pseudo-label precision % / coverage % at the end), mean ± std over seeds "
            f"{', '.join(map(str, r['seeds']))}.",
            "",
            "| variant | " + " | ".join(f"{n} labels" for n in r["labels"]) + " |",
            "|---|" + "---:|" * len(r["labels"]),
        ]
        for v in VARIANTS:
            cells = []
            for n in r["labels"]:
                e = p1[f"{bias}/{n}/{v}"]
                extra = "" if e["precision"] is None else f" ({fmt(e['precision'])} / {fmt(e['coverage'])})"
                cells.append(fmt(e["accuracy"]) + extra)
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "**Class-incremental** (5 x 2 classes, 10 % labels per experience, 10 epochs): ACC %.",
        "",
        "| variant | ACC % |",
        "|---|---:|",
        *(f"| {k} | {fmt(v['acc'])} |" for k, v in r["part2"].items()),
        "",
        "Verdict:",
        "",
        *verdicts(r),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
