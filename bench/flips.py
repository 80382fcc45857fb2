"""Negative flips: naive updates against compatibility-aware updates (`compatible`, focal distillation).

A negative flip is a sample the previous version got right and the updated version gets wrong: what the
previous version's users meet as a regression. For each update k (the model after experience k-1 -> after
experience k) the negative flip rate (NFR) is measured on the union of the test sets of experiences
0..k-1, the data of the previous version's users, and averaged over the updates of the stream.

Scenarios (every one with the same four variants: naive, compatible, replay, replay + compatible):

    class_il   Split Fashion-MNIST, 5 experiences x 2 classes, all 60000/10000 images, MLP 2x400
    domain_il  Rotated Fashion-MNIST, 5 angles over [0, 180), 2000/500 images per class, MLP 2x400
    text       three corpora in turn (python_docs, kjv, austen), byte-level, a TinyGPT; a "sample" is a token
               position: old top-1 next token right, new one wrong

Image scenarios train as the method library's benchmark does (bench/reproduce.py): SGD, lr 0.01, batch 32,
one epoch per experience; replay keeps a reservoir memory of 200 samples (text: 64 blocks) and adds as many
replayed samples as the batch has. `compatible` runs with its defaults (strength 1, alpha 0, beta 1,
temperature 1, mode kl); nothing is tuned on the test sets. Why strength 1: at T = 1 the gradient of the
distillation term on a sample's logits is p_new - p_old and that of the cross-entropy is p_new - onehot(y);
strength 1 weighs keeping the previous version's answer exactly as much as learning the label, so neither
term wins by construction of the scale.

    python bench/flips.py                # full: 3 seeds (~15 min on one core), JSON + docs/RESULTS.md section
    python bench/flips.py --quick        # smoke: tiny data and models, one seed, seconds; no doc section
    python bench/flips.py --report-only  # the summary and doc section again, from bench/results/flips.json

Raw numbers go to bench/results/flips.json (`--out`); `--no-write` leaves docs/RESULTS.md alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from docsection import write_section

from lifelong.atomic import atomic_write_json
from lifelong.evaluation.flips import flip_report, predictions
from lifelong.methods.base import Context, Method
from lifelong.streams.experience import Split, Stream

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results" / "flips.json"
QUICK_JSON = ROOT / "bench" / "results" / "flips_quick.json"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
HEADING = "## Negative flips: naive vs compatibility-aware updates"
SCENARIOS = ("class_il", "domain_il", "text")
VARIANTS = ("naive", "compatible", "replay", "replay+compatible")
CORPORA = ("python_docs", "kjv", "austen")
LABELS = {
    "class_il": "Split Fashion-MNIST, class-incremental (5 x 2 classes), MLP",
    "domain_il": "Rotated Fashion-MNIST, domain-incremental (5 angles over [0, 180)), MLP",
    "text": "Three corpora in turn (python_docs, kjv, austen), TinyGPT, token-level flips",
}
PAIRS = (("naive", "compatible"), ("replay", "replay+compatible"))  # (baseline, compatibility-aware)


@dataclass(frozen=True)
class Budget:
    """Data, models and optimisation of one bench run."""

    class_train_per_class: int | None  # None: every image
    class_test_per_class: int | None
    rotated_train_per_class: int
    rotated_test_per_class: int
    hidden: tuple[int, ...] = (400, 400)
    memory: int = 200
    text_train_blocks: int = 3200  # per domain
    text_test_blocks: int = 64  # per domain
    block: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    text_batch: int = 16
    text_lr: float = 2e-3
    text_memory: int = 64  # blocks


# Sized on the 2-core machine shared with the team (one torch thread; an MLP 2x400 step of 64 samples ~3 ms,
# a TinyGPT 2x64 step of 16 x 64 tokens ~20 ms under load): 36 runs, about 15 minutes.
FULL = Budget(class_train_per_class=None, class_test_per_class=None, rotated_train_per_class=2000,
              rotated_test_per_class=500)  # fmt: skip
QUICK = Budget(
    class_train_per_class=40, class_test_per_class=20, rotated_train_per_class=30, rotated_test_per_class=20,
    hidden=(64,), memory=40, text_train_blocks=24, text_test_blocks=6, block=32, n_layer=1, n_embd=32,
    text_batch=8, text_memory=8,
)  # fmt: skip


class Versions(Method):
    """After each experience: the model's predictions on every test set seen so far (the version users
    get), kept in memory. Bench-local; it changes nothing in training.

    >>> Versions().after
    []
    """

    name = "flips_versions"

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def end(self, ctx: Context) -> None:
        kind = "language_modeling" if ctx.objective.metric == "perplexity" else "classification"
        tests = Split.concat([e.test for e in ctx.seen])
        self.after.append(predictions(ctx.model, tests, kind, objective=ctx.objective))


# --------------------------------------------------------------------------------------------------- data


def build_streams(budget: Budget, scenarios: tuple[str, ...]) -> tuple[dict[str, Stream], dict[str, str]]:
    """The streams of `scenarios`, and a note for each scenario that could not be built (missing data)."""
    from lifelong import datasets
    from lifelong.datasets.base import Dataset
    from lifelong.streams import class_incremental, rotated, subsample

    streams, skipped = {}, {}
    if {"class_il", "domain_il"} & set(scenarios):
        fmnist = datasets.load("fashion_mnist")
        assert isinstance(fmnist, Dataset)
        if "class_il" in scenarios:
            ds = subsample(fmnist, budget.class_train_per_class, budget.class_test_per_class, seed=0)
            streams["class_il"] = class_incremental(ds, experiences=5)
        if "domain_il" in scenarios:
            ds = subsample(fmnist, budget.rotated_train_per_class, budget.rotated_test_per_class, seed=0)
            streams["domain_il"] = rotated(ds, experiences=5)
    if "text" in scenarios:
        missing = [name for name in CORPORA if datasets.info(name).locate() is None]
        if missing:
            skipped["text"] = f"corpora not installed: {', '.join(missing)} (see `lifelong datasets`)"
        else:
            streams["text"] = text_stream(budget)
    return streams, skipped


def text_stream(budget: Budget) -> Stream:
    """One domain per corpus (its documents merged), byte-level blocks; `text_test_blocks` evenly spaced
    held-out blocks per domain, so the test sets cover each corpus from start to end."""
    from lifelong import datasets
    from lifelong.datasets.base import TextCorpus
    from lifelong.streams.text import text_domains

    docs = {}
    for name in CORPORA:
        corpus = datasets.load(name)
        assert isinstance(corpus, TextCorpus)
        docs[name] = [d for documents in corpus.domains.values() for d in documents]
    stream = text_domains(
        TextCorpus("flips", docs, "lifelong.datasets: " + ", ".join(CORPORA)),
        block_size=budget.block, max_blocks_per_domain=budget.text_train_blocks,
    )  # fmt: skip
    experiences = []
    for e in stream:
        keep = torch.linspace(0, len(e.test) - 1, min(budget.text_test_blocks, len(e.test))).round().long()
        experiences.append(dataclasses.replace(e, test=e.test.subset(keep.unique())))
    return dataclasses.replace(stream, experiences=experiences)


# --------------------------------------------------------------------------------------------------- runs


def make_model(scenario: str, stream: Stream, budget: Budget, seed: int) -> torch.nn.Module:
    import lifelong
    from lifelong.models import MLP, TinyGPT

    lifelong.seed(seed)  # the same initial weights for every variant of a seed
    if scenario == "text":
        shape = {"n_layer": budget.n_layer, "n_head": budget.n_head, "n_embd": budget.n_embd}
        return TinyGPT(stream.num_classes, budget.block, **shape)
    return MLP(stream.input_shape, stream.num_classes, hidden=list(budget.hidden))


def methods_of(variant: str, scenario: str, budget: Budget, seed: int) -> list[Method]:
    from lifelong.methods import Compatible, Replay

    memory = budget.text_memory if scenario == "text" else budget.memory
    methods: list[Method] = []
    if variant.startswith("replay"):
        methods.append(Replay(memory, seed=seed))
    if variant.endswith("compatible"):
        methods.append(Compatible())  # the defaults: strength 1 (see the module docstring)
    return methods


def run_one(scenario: str, stream: Stream, variant: str, budget: Budget, seed: int) -> dict[str, Any]:
    """One run: per update, the flip report's figures on the previous version's test sets."""
    from lifelong.learner import Learner

    if scenario == "text":
        train: dict[str, Any] = {
            "epochs": 1, "batch_size": budget.text_batch, "optimizer": "adamw", "lr": budget.text_lr,
            "grad_clip": 1.0, "eval_batch_size": 64,
        }  # fmt: skip
    else:
        train = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.01}
    versions = Versions()
    model = make_model(scenario, stream, budget, seed)
    methods = [*methods_of(variant, scenario, budget, seed), versions]
    results = Learner(model, methods, progress=False, seed=seed, **train).run(stream)
    updates = []
    for k in range(1, len(stream)):
        users = Split.concat(stream.test_sets[:k])  # the previous version's users
        n = len(versions.after[k - 1])
        report = flip_report(versions.after[k - 1], versions.after[k][:n], users.y.reshape(-1), examples=0)
        updates.append({key: report[key] for key in FIGURES})
    every = Split.concat(stream.test_sets)
    final_accuracy = float((versions.after[-1] == every.y.reshape(-1)).double().mean())
    return {
        "updates": updates,
        "final_accuracy": final_accuracy,  # classes, or top-1 next tokens, on every test set
        "matrix": results.matrix,
        "metric": results.metric,
        "wall_seconds": round(results.wall_seconds, 2),
    }


FIGURES = ("negative_flip_rate", "positive_flip_rate", "old_accuracy", "new_accuracy", "samples")


# ------------------------------------------------------------------------------------------------ summary


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per scenario and variant, over seeds: mean NFR / PFR over the updates, final accuracy; per scenario
    and pair, the relative NFR reduction of the compatibility-aware variant (per seed, then mean)."""
    out: dict[str, Any] = {}
    for scenario in [s for s in SCENARIOS if s in runs]:  # the bench's order (the JSON sorts keys)
        by_variant = runs[scenario]
        entry: dict[str, Any] = {"variants": {}, "reduction": {}}
        for variant in [v for v in VARIANTS if v in by_variant]:
            by_seed = by_variant[variant]
            seeds = sorted(by_seed)
            nfr = [_over_updates(by_seed[s], "negative_flip_rate") for s in seeds]
            pfr = [_over_updates(by_seed[s], "positive_flip_rate") for s in seeds]
            entry["variants"][variant] = {
                "negative_flip_rate": mean_std(nfr),
                "positive_flip_rate": mean_std(pfr),
                "final_accuracy": mean_std([by_seed[s]["final_accuracy"] for s in seeds]),
                "wall_seconds": mean_std([by_seed[s]["wall_seconds"] for s in seeds]),
            }
            if by_seed[seeds[0]]["metric"] == "perplexity":
                entry["variants"][variant]["final_mean_perplexity"] = mean_std(
                    [statistics.fmean(by_seed[s]["matrix"][-1]) for s in seeds]
                )
        for base, compat in PAIRS:
            if base in by_variant and compat in by_variant:
                seeds = sorted(set(by_variant[base]) & set(by_variant[compat]))
                reductions = []
                for s in seeds:
                    before = _over_updates(by_variant[base][s], "negative_flip_rate")
                    after = _over_updates(by_variant[compat][s], "negative_flip_rate")
                    if before > 0:
                        reductions.append(1 - after / before)
                if reductions:
                    entry["reduction"][compat] = mean_std(reductions)
        out[scenario] = entry
    return out


def _over_updates(run: dict[str, Any], key: str) -> float:
    return statistics.fmean(u[key] for u in run["updates"])


def fmt(stat: dict[str, float] | None, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    if stat is None:
        return "–"
    sign = "+" if signed else ""
    return f"{stat['mean'] * scale:{sign}.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def table(scenario: str, entry: dict[str, Any]) -> str:
    text = scenario == "text"
    accuracy = "final top-1 token accuracy %" if text else "final accuracy %"
    extra = " | final mean perplexity" if text else ""
    rows = [
        f"| variant | NFR % (mean over updates) | relative NFR reduction | PFR % | {accuracy}{extra} |",
        "|---|---:|---:|---:|---:|" + ("---:|" if text else ""),
    ]
    for variant, e in entry["variants"].items():
        reduction = entry["reduction"].get(variant)
        cell = f"{fmt(reduction, 100, 1, True)} %" if reduction is not None else "–"
        ppl = f" | {fmt(e['final_mean_perplexity'], 1.0, 2)}" if text else ""
        rows.append(
            f"| {variant} | {fmt(e['negative_flip_rate'])} | {cell} | {fmt(e['positive_flip_rate'])} "
            f"| {fmt(e['final_accuracy'])}{ppl} |"
        )
    return "\n".join(rows)


def verdict(summary: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers, so a rerun cannot leave a stale verdict behind."""
    lines = []
    for scenario, entry in summary.items():
        parts = []
        for base, compat in PAIRS:
            if compat not in entry["reduction"]:
                continue
            b, c = entry["variants"][base], entry["variants"][compat]
            red = entry["reduction"][compat]
            accuracy = c["final_accuracy"]["mean"] - b["final_accuracy"]["mean"]
            parts.append(
                f"{compat} vs {base}: NFR {b['negative_flip_rate']['mean'] * 100:.2f} % -> "
                f"{c['negative_flip_rate']['mean'] * 100:.2f} % (relative reduction "
                f"{red['mean'] * 100:.1f} % ± {red['std'] * 100:.1f}), final accuracy "
                f"{accuracy * 100:+.2f} points"
            )
        if parts:
            lines.append(f"- {scenario}: " + "; ".join(parts) + ".")
    return lines


def doc_section(result: dict[str, Any]) -> str:
    b = result["budget"]
    lines = [
        f"Generated {result['date']} by `{result['command']}` ({result['wall_seconds'] / 60:.0f} min; "
        f"{result['machine']}).",
        "",
        "NFR (negative flip rate): for each update k, the share of the previous version's test samples "
        "(the test sets of experiences 0..k-1; for text, their token positions) that the model after "
        "experience k-1 got right and the model after experience k gets wrong, averaged over the 4 updates "
        "of each stream; PFR the reverse. Relative NFR reduction: 1 - NFR(compatibility-aware) / "
        "NFR(its baseline), per seed, then mean ± std. Final accuracy: on every test set after the last "
        f"experience. Seeds {', '.join(map(str, result['seeds']))} (initial weights, data order, replay "
        "sampling; the streams are the same for every seed).",
        "",
        "Set-up: images as in the method library's benchmark (SGD, lr 0.01, batch 32, one epoch per "
        f"experience, MLP {'x'.join(map(str, b['hidden']))}); Split Fashion-MNIST with all images, Rotated "
        f"Fashion-MNIST with {b['rotated_train_per_class']}/{b['rotated_test_per_class']} train/test images "
        f"per class. Text: byte-level TinyGPT ({b['n_layer']} layers, width {b['n_embd']}, context "
        f"{b['block']}), AdamW lr {b['text_lr']:g}, batch {b['text_batch']}, {b['text_train_blocks']} "
        f"training blocks and {b['text_test_blocks']} evenly spaced held-out blocks per corpus. Replay: a "
        f"reservoir memory of {b['memory']} samples (text: {b['text_memory']} blocks), as many replayed "
        "samples added to each batch as it has. `compatible` with its defaults (strength 1, alpha 0, beta 1, "
        "T 1, mode kl), chosen before any run and not tuned: at T = 1 the distillation gradient on a "
        "sample's logits (p_new - p_old) has the size of the cross-entropy's (p_new - onehot(y)), so "
        "strength 1 weighs keeping the previous answer as much as learning the label.",
        "",
    ]
    for scenario, entry in result["summary"].items():
        lines += [f"### {LABELS[scenario]}", "", table(scenario, entry), ""]
    for scenario, note in result.get("skipped", {}).items():
        lines += [f"{LABELS[scenario]}: not run ({note}).", ""]
    lines += ["Verdict:", "", *verdict(result["summary"]), "", *reading(result["summary"])]
    return "\n".join(lines)


def reading(summary: dict[str, Any]) -> list[str]:
    """What the numbers can and cannot say."""
    lines = [
        "How to read this: with alpha 0 the term acts only on samples the previous version got right. In a "
        "class-incremental stream without replay the previous version is practically never right on the new "
        "classes (it would have to predict a class it never trained on), so `compatible` alone is (nearly) "
        "naive fine-tuning there; its effect in class-IL comes through the replayed samples. MUSCLE "
        "(Echterhoff et al. 2024) reports up to 40 % fewer negative flips for compatibility-aware LLM "
        "updates; a difference smaller than the ± is not a finding."
    ]
    return lines


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data and models, no doc")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves cores to others)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the raw numbers")
    parser.add_argument("--no-write", action="store_true", help="leave docs/RESULTS.md alone")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the summary and doc section from the JSON"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        return report_only(args.out or RESULTS_JSON, write=not args.no_write)

    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    out = args.out or (QUICK_JSON if args.quick else RESULTS_JSON)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    streams, skipped = build_streams(budget, scenarios)
    for scenario, note in skipped.items():
        log(f"{scenario}: skipped, {note}")
    runs: dict[str, dict[str, dict[str, Any]]] = {}  # scenario -> variant -> seed (as in the JSON) -> run
    for scenario, stream in streams.items():
        runs[scenario] = {}
        for variant in VARIANTS:
            runs[scenario][variant] = {}
            for seed in seeds:
                run = run_one(scenario, stream, variant, budget, seed)
                runs[scenario][variant][str(seed)] = run
                nfr = _over_updates(run, "negative_flip_rate")
                log(
                    f"{scenario} {variant} seed {seed}: NFR {nfr * 100:.2f} %, final accuracy "
                    f"{run['final_accuracy'] * 100:.2f} %, {run['wall_seconds']:.0f} s"
                )
    result: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": " ".join(["python bench/flips.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": (
            f"{os.cpu_count()}-core {platform.machine()} machine shared with other jobs (load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), {args.threads} torch "
            f"thread(s), torch {torch.__version__}"
        ),
        "seeds": seeds,
        "scenarios": list(streams),
        "skipped": skipped,
        "budget": dataclasses.asdict(budget),
        "wall_seconds": round(time.perf_counter() - began, 1),
        "runs": runs,
        "summary": summarize(runs),
    }
    atomic_write_json(out, result)
    log(f"wrote {out}")
    for scenario, entry in result["summary"].items():
        print(f"\n{LABELS[scenario]}\n{table(scenario, entry)}")
    print("\n".join(verdict(result["summary"])))
    if not args.quick and not args.no_write and set(streams) == set(SCENARIOS):
        write_doc(result)
        log(f"wrote the flips section of {RESULTS_MD}")
    return result


def write_doc(result: dict[str, Any]) -> None:
    write_section(
        RESULTS_MD, "flips", doc_section(result), HEADING,
        "Regenerate with `.venv/bin/python bench/flips.py` (about 15 minutes on one core); `--quick` is the "
        "smoke version the test suite runs.",
    )  # fmt: skip


def report_only(path: Path, write: bool) -> dict[str, Any]:
    """The summary recomputed from the raw runs of a finished bench's JSON, and its doc section."""
    from lifelong.atomic import read_json

    result = read_json(path, "flips bench results")
    result["summary"] = summarize(result["runs"])
    atomic_write_json(path, result)
    for scenario, entry in result["summary"].items():
        print(f"\n{LABELS[scenario]}\n{table(scenario, entry)}")
    print("\n".join(verdict(result["summary"])))
    if write and set(result["scenarios"]) == set(SCENARIOS):
        write_doc(result)
    return result


if __name__ == "__main__":
    main()
