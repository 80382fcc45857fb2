"""Unlearning on Fashion-MNIST: exact deletion with S shards, approximate unlearning against retraining.

(a) Exact (lifelong.unlearn.ShardedRun, SISA with slices along the stream). Split Fashion-MNIST, class-
    incremental (5 experiences of 2 classes), an MLP per shard with a replay memory of its own, for S in
    {1, 2, 4, 8} shards. One training sample is deleted; the time this takes is set against a full retrain
    of the same S shards without that sample (the alternative to slicing), and the result is compared with
    that retrain, weight by weight and prediction by prediction. The sample deleted is from the first
    experience (the worst case: its whole shard is retrained); a sample of the last experience (the best
    case: one slice) is deleted after it. The target: deleting costs at most 1/S of the retrain plus a
    constant.
(b) Approximate (lifelong.unlearn.unlearn, audited by lifelong.unlearn.audit). One MLP trained long enough
    to fit its training set; two forget sets: a random 1 % of the training samples, and every training sample
    of one class. NegGrad+ and SCRUB against the gold standard, a model retrained from scratch without the
    forget set: the membership-inference AUC on the forget set (0.5: indistinguishable from unseen data),
    forget / retain / test accuracy, seconds. The target: an AUC of about 0.5 with the retain accuracy within
    1 point of the original model's.

    python bench/unlearn.py              # full: about 10 minutes on one core; JSON + docs/RESULTS.md section
    python bench/unlearn.py --quick      # smoke: small subsets, S in {1, 2}; a minute; writes no doc section

Raw numbers go to bench/results/unlearn.json (`--out`); `--no-write` leaves docs/RESULTS.md alone,
`--results-md PATH` writes the section to another page.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch
from docsection import write_section

from lifelong.atomic import atomic_write_json
from lifelong.streams.experience import Experience, Split, Stream

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results" / "unlearn.json"
QUICK_JSON = ROOT / "bench" / "results" / "unlearn_quick.json"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
SECTION = "unlearning"
HEADING = "## Unlearning: exact (sharded) and approximate"
MIA_TOLERANCE = 0.05  # "about 0.5": within this of 0.5
RETAIN_TOLERANCE = 0.01  # retain accuracy within 1 point of the original model's


@dataclass(frozen=True)
class Budget:
    """Data, models and optimisation of one bench run."""

    # (a) exact
    shards: tuple[int, ...] = (1, 2, 4, 8)
    exact_train_per_class: int | None = None  # None: all 6000
    exact_test_per_class: int | None = None  # None: all 1000
    experiences: int = 5
    exact_hidden: tuple[int, ...] = (256,)
    memory: int = 500  # replay memory of each shard
    exact_epochs: int = 2
    batch: int = 64
    lr: float = 0.05
    # (b) approximate
    approx_train_per_class: int | None = 2000
    approx_test_per_class: int | None = None
    approx_hidden: tuple[int, ...] = (256, 256)
    approx_epochs: int = 30  # long enough to fit the training set closely: a membership signal to remove
    approx_lr: float = 0.02
    approx_momentum: float = 0.9
    forget_share: float = 0.01
    forget_class: int = 0  # T-shirt/top
    # unlearn() settings per forget set. `clip_at_test_loss`: NegGrad+'s forget_clip is the original model's
    # mean test loss (a forget sample need look no more familiar than an average unseen one) instead of
    # log 10 (chance), which over-forgets a random forget set; a forgotten class should go past chance
    neggrad: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "random": {"steps": 100, "lr": 0.01, "alpha": 1.0, "clip_at_test_loss": True},
            "class": {"steps": 100, "lr": 0.01, "alpha": 1.0},
        }
    )
    scrub: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "random": {"steps": 200, "lr": 0.01, "max_steps": 100},
            # a whole class: a max step at every step, at temperature 1 (at 4, 100 max steps left ~80 % of
            # the class recognised in a trial run)
            "class": {"steps": 200, "lr": 0.01, "max_steps": 200, "temperature": 1.0},
        }
    )
    unlearn_batch: int = 64


FULL = Budget()
QUICK = Budget(
    shards=(1, 2), exact_train_per_class=60, exact_test_per_class=30, memory=30, exact_epochs=1,
    approx_train_per_class=100, approx_test_per_class=50, approx_hidden=(64,), approx_epochs=4,
    forget_share=0.05,
    neggrad={
        "random": {"steps": 20, "lr": 0.01, "clip_at_test_loss": True}, "class": {"steps": 20, "lr": 0.01},
    },
    scrub={
        "random": {"steps": 20, "lr": 0.01, "max_steps": 10},
        "class": {"steps": 20, "lr": 0.01, "max_steps": 10},
    },
)  # fmt: skip


# --------------------------------------------------------------------------------------------- (a) exact


@functools.cache
def fashion_mnist() -> Any:
    from lifelong import datasets

    return datasets.load("fashion_mnist")


def exact(budget: Budget, work: Path, log: Any) -> dict[str, Any]:
    """Per S: train, delete one sample (worst case), retrain without it, compare; then a best-case delete."""
    from lifelong.methods import Replay
    from lifelong.models import MLP
    from lifelong.streams import scenarios
    from lifelong.streams.sample_ids import sample_ids, without_ids
    from lifelong.training import TrainConfig
    from lifelong.unlearn import ShardedRun

    ds = scenarios.subsample(
        fashion_mnist(), budget.exact_train_per_class, budget.exact_test_per_class, seed=0
    )
    stream = scenarios.class_incremental(ds, budget.experiences)
    train = TrainConfig(epochs=budget.exact_epochs, batch_size=budget.batch, lr=budget.lr, log_every=None)

    def build() -> tuple[torch.nn.Module, list]:
        return MLP(stream.input_shape, stream.num_classes, hidden=budget.exact_hidden), [
            Replay(memory=budget.memory)
        ]

    g = torch.Generator().manual_seed(0)
    first_ids, last_ids = sample_ids(stream[0]), sample_ids(stream[-1])
    worst = first_ids[int(torch.randint(len(first_ids), (1,), generator=g))]
    best = last_ids[int(torch.randint(len(last_ids), (1,), generator=g))]
    without = Stream(
        stream.name, [without_ids(e, {worst})[0] for e in stream], stream.kind, stream.num_classes,
        stream.input_shape, info=stream.info,
    )  # fmt: skip
    test_x = torch.cat([e.test.x for e in stream])
    rows: dict[str, Any] = {}
    for shards in budget.shards:
        began = time.perf_counter()
        run = ShardedRun.train(work / f"s{shards}", stream, build, train, shards=shards)
        train_seconds = time.perf_counter() - began
        forgot = run.forget({worst})
        began = time.perf_counter()
        reference = ShardedRun.train(work / f"s{shards}-ref", without, build, train, shards=shards)
        retrain_seconds = time.perf_counter() - began
        weight_diff = 0.0
        for k in range(shards):
            if run.shard_dir(k).exists():
                a, b = _weights(run.shard_dir(k)), _weights(reference.shard_dir(k))
                weight_diff = max([weight_diff, *((a[n] - b[n]).abs().max().item() for n in a)])
        score_diff = (run.scores(test_x) - reference.scores(test_x)).abs().max().item()
        shard_accs = [_shard_acc(run.shard_dir(k)) for k in range(shards) if run.shard_dir(k).exists()]
        (k_worst, info), = forgot["shards"].items()
        forgot_best = run.forget({best})
        rows[str(shards)] = {
            "train_seconds": round(train_seconds, 2),
            "retrain_seconds": round(retrain_seconds, 2),
            "forget_seconds": forgot["seconds"],
            "forget_retraining_seconds": info["seconds"],
            "forget_slices": info["slices"],
            "forget_best_seconds": forgot_best["seconds"],
            "forget_best_slices": [s for v in forgot_best["shards"].values() for s in v["slices"]],
            "equal": weight_diff == 0.0 and score_diff == 0.0,
            "max_weight_diff": weight_diff,
            "max_score_diff": score_diff,
            "ensemble_acc": reference.meta["ensemble"]["summary"]["acc"],
            "mean_shard_acc": sum(shard_accs) / len(shard_accs),
            "samples_per_shard": [sum(row) for row in run.meta["sizes"]],
        }
        r = rows[str(shards)]
        log(
            f"S={shards}: train {train_seconds:.1f} s, forget {r['forget_seconds']:.1f} s (shard {k_worst}, "
            f"slices {info['slices']}), retrain {retrain_seconds:.1f} s, equal {r['equal']}, ensemble acc "
            f"{r['ensemble_acc']:.3f}; best-case forget {r['forget_best_seconds']:.1f} s"
        )
        shutil.rmtree(work / f"s{shards}")
        shutil.rmtree(work / f"s{shards}-ref")
    return {
        "train_samples": sum(len(e.train) for e in stream),
        "test_samples": sum(len(e.test) for e in stream),
        "deleted_worst": worst,
        "deleted_best": best,
        "rows": rows,
    }


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from lifelong import state as st

    return st.read_checkpoint(run_dir)["model"]


def _shard_acc(run_dir: Path) -> float:
    from lifelong.atomic import read_json

    return float(read_json(run_dir / "results.json", "results")["summary"]["acc"])


# --------------------------------------------------------------------------------------- (b) approximate


def approximate(budget: Budget, log: Any) -> dict[str, Any]:
    """One trained model; for each forget set: the original, the retrained gold standard, NegGrad+, SCRUB."""
    from lifelong.streams import scenarios
    from lifelong.unlearn import audit, unlearn

    ds = scenarios.subsample(
        fashion_mnist(), budget.approx_train_per_class, budget.approx_test_per_class, seed=0
    )
    train, test = Split(ds.train_x, ds.train_y), Split(ds.test_x, ds.test_y)
    original, original_seconds = _train_model(budget, train, test)
    log(f"approximate: original model trained on {len(train)} samples in {original_seconds:.1f} s")
    g = torch.Generator().manual_seed(1)
    n_forget = max(1, round(budget.forget_share * len(train)))
    random_rows = torch.randperm(len(train), generator=g)[:n_forget]
    is_class = train.y == budget.forget_class
    sets = {
        "random": (random_rows, None),
        "class": (torch.nonzero(is_class).squeeze(1), budget.forget_class),
    }
    out: dict[str, Any] = {
        "train_samples": len(train),
        "original_seconds": round(original_seconds, 2),
        "class_name": str(ds.classes[budget.forget_class]) if ds.classes else str(budget.forget_class),
    }
    for name, (rows, forgotten_class) in sets.items():
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[rows] = False
        forget, retain = train.subset(rows), train.subset(torch.nonzero(keep).squeeze(1))
        if forgotten_class is None:
            scored_test, mia_test = test, None
        else:  # accuracy on the classes kept; the attack against unseen samples of the forgotten class
            in_class = test.y == forgotten_class
            scored_test = test.subset(torch.nonzero(~in_class).squeeze(1))
            mia_test = test.subset(torch.nonzero(in_class).squeeze(1))

        def check(model: torch.nn.Module) -> dict[str, Any]:
            return audit(model, forget, retain, scored_test, mia_test=mia_test)  # noqa: B023

        entry: dict[str, Any] = {"forget_samples": len(forget), "original": check(original)}
        gold, gold_seconds = _train_model(budget, retain, scored_test)
        entry["retrain"] = {**check(gold), "seconds": round(gold_seconds, 2)}
        for method, settings in (("neggrad+", budget.neggrad[name]), ("scrub", budget.scrub[name])):
            options = dict(settings)
            if options.pop("clip_at_test_loss", False):
                options["forget_clip"] = entry["original"]["test_loss"]
            model = copy.deepcopy(original)
            report = unlearn(
                model, forget, retain, method=method, batch_size=budget.unlearn_batch, seed=0, **options
            )
            entry[method] = {**check(model), "seconds": report["seconds"], "report": report}
        out[name] = entry
        for variant in ("original", "retrain", "neggrad+", "scrub"):
            e = entry[variant]
            log(
                f"{name} forget set, {variant}: MIA AUC {e['mia_auc']:.3f}, forget "
                f"{e['forget_accuracy']:.3f}, retain {e['retain_accuracy']:.3f}, test "
                f"{e['test_accuracy']:.3f}"
            )
    return out


def _train_model(budget: Budget, train: Split, test: Split) -> tuple[torch.nn.Module, float]:
    """An MLP trained on `train` with a fixed seed (the same recipe for the original and the retrains)."""
    import lifelong
    from lifelong.learner import Learner
    from lifelong.models import MLP

    classes = sorted(torch.unique(train.y).tolist())
    stream = Stream("fashion_mnist", [Experience(0, train, test, classes=classes)], "classification", 10,
                    (1, 28, 28))  # fmt: skip
    lifelong.seed(0)
    model = MLP(stream.input_shape, 10, hidden=budget.approx_hidden)
    learner = Learner(
        model, [], progress=False, epochs=budget.approx_epochs, batch_size=budget.batch, lr=budget.approx_lr,
        momentum=budget.approx_momentum, log_every=None,
    )  # fmt: skip
    began = time.perf_counter()
    learner.run(stream)
    return model, time.perf_counter() - began


# --------------------------------------------------------------------------------------------------- report


def exact_table(result: dict[str, Any]) -> str:
    lines = [
        "| shards S | forget 1 sample (worst case) | of which retraining | slices retrained | full retrain "
        "| forget / retrain | 1/S | forget − retrain/S | best case (last slice) | equal to retrain "
        "(max abs diff) | ensemble acc | mean shard acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in result["exact"]["rows"].items():
        shards = int(s)
        constant = r["forget_seconds"] - r["retrain_seconds"] / shards
        diff = max(r["max_weight_diff"], r["max_score_diff"])
        lines.append(
            f"| {shards} | {r['forget_seconds']:.1f} s | {r['forget_retraining_seconds']:.1f} s "
            f"| {len(r['forget_slices'])} of {result['budget']['experiences']} "
            f"| {r['retrain_seconds']:.1f} s "
            f"| {r['forget_seconds'] / r['retrain_seconds']:.2f} | {1 / shards:.2f} | {constant:+.1f} s "
            f"| {r['forget_best_seconds']:.1f} s | {'yes' if r['equal'] else 'no'} ({diff:.1g}) "
            f"| {r['ensemble_acc']:.3f} | {r['mean_shard_acc']:.3f} |"
        )
    return "\n".join(lines)


def approx_table(result: dict[str, Any], name: str) -> str:
    entry = result["approximate"][name]
    lines = [
        "| model | MIA AUC on forget | forget acc | retain acc | test acc | seconds |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "original": "original (trained on everything)",
        "retrain": "retrained without the forget set (gold standard)",
        "neggrad+": "NegGrad+",
        "scrub": "SCRUB",
    }
    for variant, label in labels.items():
        e = entry[variant]
        seconds = result["approximate"]["original_seconds"] if variant == "original" else e["seconds"]
        lines.append(
            f"| {label} | {e['mia_auc']:.3f} | {e['forget_accuracy']:.3f} | {e['retain_accuracy']:.3f} "
            f"| {e['test_accuracy']:.3f} | {seconds:.1f} |"
        )
    return "\n".join(lines)


def settings_line(result: dict[str, Any], name: str) -> str:
    """How NegGrad+ and SCRUB were run on forget set `name`, from their reports."""
    neg = result["approximate"][name]["neggrad+"]["report"]
    scrub = result["approximate"][name]["scrub"]["report"]
    return (
        f"NegGrad+: {neg['steps']} steps, lr {neg['lr']}, alpha {neg['alpha']}, forget loss clipped per "
        f"sample at {neg['forget_clip']:.3f}; SCRUB: {scrub['steps']} min steps of which the first "
        f"{scrub['max_steps']} also take a max step, lr {scrub['lr']}, alpha {scrub['alpha']}, gamma "
        f"{scrub['gamma']}, temperature {scrub['temperature']}, KL clipped per sample at "
        f"{scrub['forget_clip']:.3f}."
    )


def verdict(result: dict[str, Any]) -> list[str]:
    rows = result["exact"]["rows"]
    equal = all(r["equal"] for r in rows.values())
    constants = {s: r["forget_seconds"] - r["retrain_seconds"] / int(s) for s, r in rows.items()}
    ratio_ok = all(
        r["forget_retraining_seconds"] <= 1.25 * r["retrain_seconds"] / int(s) for s, r in rows.items()
    )
    lines = [
        f"- Exact deletion equals retraining without the sample: **{'yes' if equal else 'no'}** for every S "
        "(every shard's weights and the ensemble's probabilities on the test set, bit for bit).",
        "- Deleting costs at most 1/S of a full retrain plus a constant: "
        f"**{'met' if ratio_ok else 'not met'}** (the retraining part within 1.25/S of the full retrain; "
        "the rest, "
        + ", ".join(f"S={s}: {c:+.1f} s" for s, c in constants.items())
        + ", is the constant: reading the snapshot, copying the shard, recomputing the ensemble's matrix, "
        "committing).",
    ]
    share = f"{100 * result['budget']['forget_share']:.0f} %"
    for name, what in (("random", f"a random {share} forget set"), ("class", "a forgotten class")):
        entry = result["approximate"][name]
        original_retain = entry["original"]["retain_accuracy"]
        parts = []
        for method in ("neggrad+", "scrub"):
            e = entry[method]
            mia_ok = abs(e["mia_auc"] - 0.5) <= MIA_TOLERANCE
            retain_ok = e["retain_accuracy"] >= original_retain - RETAIN_TOLERANCE
            parts.append(
                f"{method} {'met' if mia_ok and retain_ok else 'not met'} (AUC {e['mia_auc']:.3f}, retain "
                f"{100 * (e['retain_accuracy'] - original_retain):+.1f} points)"
            )
        lines.append(
            f"- {what[0].upper() + what[1:]}: MIA AUC within {MIA_TOLERANCE} of 0.5 with retain accuracy "
            "at most 1 point below the original's (a rise is no loss): "
            + "; ".join(parts)
            + f". Original AUC {entry['original']['mia_auc']:.3f}, retrained "
            f"{entry['retrain']['mia_auc']:.3f}."
        )
    return lines


def doc_section(result: dict[str, Any]) -> str:
    b = result["budget"]
    ex, ap = result["exact"], result["approximate"]
    lines = [
        f"Generated {result['date']} by `{result['command']}` ({result['wall_seconds'] / 60:.1f} min; "
        f"{result['machine']}).",
        "",
        "### Exact deletion: sharded, sliced training (SISA / S3T)",
        "",
        f"Split Fashion-MNIST, class-incremental ({b['experiences']} experiences of 2 classes), "
        f"{ex['train_samples']} training and {ex['test_samples']} test images; each shard an MLP "
        f"784-{'-'.join(map(str, b['exact_hidden']))}-10 with a replay memory of {b['memory']} samples, SGD "
        f"lr {b['lr']}, batch {b['batch']}, epochs per experience: {b['exact_epochs']}. The ensemble "
        "averages the shards' softmax. One sample of the first experience is deleted (the worst case: its "
        "shard is retrained from scratch, every slice), against a full retrain of the S shards without it; "
        "then one sample of the last experience (the best case: one slice).",
        "",
        exact_table(result),
        "",
        "### Approximate unlearning against retraining",
        "",
        f"An MLP 784-{'-'.join(map(str, b['approx_hidden']))}-10 trained on {ap['train_samples']} "
        f"Fashion-MNIST images ({b['approx_epochs']} epochs, SGD lr {b['approx_lr']} momentum "
        f"{b['approx_momentum']}, batch {b['batch']}). Unlearning: SGD with momentum 0.9, batch "
        f"{b['unlearn_batch']}; the settings of each run are given under its table. MIA: a loss-threshold "
        "attack's AUC at telling the forget set from held-out samples of the same size (0.5: "
        "indistinguishable).",
        "",
        f"Random {100 * b['forget_share']:.0f} % of the training set ({ap['random']['forget_samples']} "
        "samples; test = the whole test set):",
        "",
        approx_table(result, "random"),
        "",
        settings_line(result, "random"),
        "",
        f"Class {b['forget_class']} ({ap['class_name']}), all {ap['class']['forget_samples']} of its "
        "training samples (test accuracy on the other classes; the attack against that class's test images):",
        "",
        approx_table(result, "class"),
        "",
        settings_line(result, "class"),
        "",
        "Verdict:",
        "",
        *verdict(result),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small subsets, S in {1, 2}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves cores to others)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the raw numbers")
    parser.add_argument("--no-write", action="store_true", help="leave docs/RESULTS.md alone")
    parser.add_argument("--results-md", type=Path, default=None, help="write the section to this page")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    out = args.out or (QUICK_JSON if args.quick else RESULTS_JSON)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="unlearn-bench-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # small subsets: rare-class warnings
            exact_result = exact(budget, work, log)
            approx_result = approximate(budget, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": date.today().isoformat(),
        "command": " ".join(["python bench/unlearn.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": (
            f"{os.cpu_count()}-core {platform.machine()} machine shared with other jobs (load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), {args.threads} torch "
            f"thread(s), torch {torch.__version__}"
        ),
        "budget": dataclasses.asdict(budget),
        "exact": exact_result,
        "approximate": approx_result,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    atomic_write_json(out, result)
    log(f"wrote {out}")
    print(exact_table(result))
    print(approx_table(result, "random"))
    print(approx_table(result, "class"))
    print("\n".join(verdict(result)))
    page = args.results_md or (None if args.quick or args.no_write else RESULTS_MD)
    if page is not None:
        write_section(
            page, SECTION, doc_section(result), HEADING,
            "Regenerate with `.venv/bin/python bench/unlearn.py` (about 10 minutes on one core); "
            "`--quick` is the smoke version the test suite runs.",
        )  # fmt: skip
        log(f"wrote the {SECTION} section of {page}")
    return result


if __name__ == "__main__":
    main()
