"""Self-improvement with a verifier (ReST/STaR) on a tiny GPT, against fine-tuning on real answers.

The claim under test (issue 10): a model that samples several answers, keeps those a verifier accepts and
fine-tunes on them improves its task accuracy round after round; how close does it come to fine-tuning on
real, labelled examples of the same prompts?

Set-up: TinyGPT on bytes (the `ByteTokenizer`), problems of 2-3 digit addition "12+345=" with answers checked
exactly (`lifelong.selftrain.lm.arithmetic_task`, `verify_arithmetic`). The model is first trained (SFT) on a
small set of real solved examples. Then, from those same SFT weights, two arms run R rounds:

    self_improve   sample k answers to each prompt of an unlabelled pool, keep the verified ones, fine-tune
    sft_real       fine-tune on the same pool's prompts with their real answers (the labelled reference)

Both fine-tune with the same epochs and learning rate per round; task accuracy is greedy decoding on held-out
problems the model never trained on.

    python bench/self_improve.py            # full: about 10 minutes on one core; JSON + docs/RESULTS.md
    python bench/self_improve.py --quick    # smoke: tiny model and data, seconds; writes no doc section

Raw numbers go to bench/results/self_improve.json (`--out`); `--no-write` leaves docs/RESULTS.md alone and
`--results-md PAGE` writes the section to another page.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from docsection import write_section

from lifelong.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results" / "self_improve.json"
QUICK_JSON = ROOT / "bench" / "results" / "self_improve_quick.json"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
SECTION = "self_improve"
HEADING = "## Self-improvement with a verifier (ReST/STaR): tiny GPT on 2-3 digit addition"
CLOSE = 0.02  # "matches SFT on real answers": within 2 points of accuracy


@dataclass(frozen=True)
class Budget:
    sft_examples: int  # real solved examples of the first SFT
    pool: int  # prompts of the self-improvement pool (the real arm gets their answers)
    eval_problems: int  # held-out problems for the accuracy
    rounds: int
    k: int  # samples per prompt and round
    sft_epochs: int
    round_epochs: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block: int = 16  # "999+999=1998\n" is 13 bytes
    lr: float = 2e-3
    round_lr: float = 1e-3
    batch: int = 32
    temperature: float = 1.0
    digits: tuple[int, int] = (2, 3)


# Sized for one core (measured 2026-11 under load: ~550 training sequences/s for this model, 8000 samples in
# ~11 s): SFT 1000 x 40 epochs (~1.5 min), then 5 rounds of 4 x 3000 samples and fine-tuning for each arm
# (~5 min): 7-10 minutes. (A probe: 4000 real examples x 25 epochs reach only ~6 % greedy accuracy, so the
# SFT start is low and the question is whether sampling + verification lifts it.)
FULL = Budget(sft_examples=1000, pool=3000, eval_problems=500, rounds=5, k=4, sft_epochs=40, round_epochs=3)
QUICK = Budget(
    sft_examples=60, pool=40, eval_problems=30, rounds=2, k=2, sft_epochs=2, round_epochs=1, n_layer=1,
    n_head=2, n_embd=32,
)  # fmt: skip


def run(budget: Budget, seed: int, log: Any) -> dict[str, Any]:
    """SFT, then both arms from the SFT weights: {"sft": ..., "self_improve": rounds, "sft_real": rounds}."""
    import lifelong
    from lifelong.models import TinyGPT
    from lifelong.selftrain.lm import arithmetic_task, finetune, sample, self_improve, verify_arithmetic
    from lifelong.streams.text import ByteTokenizer

    tok = ByteTokenizer()
    n = budget.sft_examples + budget.pool + budget.eval_problems
    problems = arithmetic_task(budget.digits, n, seed=seed)
    sft = problems[: budget.sft_examples]
    pool = problems[budget.sft_examples : budget.sft_examples + budget.pool]
    held_out = problems[budget.sft_examples + budget.pool :]
    eval_prompts = [p.prompt for p in held_out]
    max_new = len(str(2 * 10 ** budget.digits[1])) + 1  # the longest answer and the stop

    def accuracy(model: torch.nn.Module) -> float:
        out = sample(model, tok, eval_prompts, k=1, temperature=0.0, max_new_tokens=max_new)
        return sum(verify_arithmetic(p, c[0]) for p, c in zip(eval_prompts, out, strict=True)) / len(out)

    lifelong.seed(seed)
    model = TinyGPT(256, budget.block, n_layer=budget.n_layer, n_head=budget.n_head, n_embd=budget.n_embd)
    began = time.perf_counter()
    loss = finetune(
        model, tok, [(p.prompt, p.answer) for p in sft], epochs=budget.sft_epochs, lr=budget.lr,
        batch_size=budget.batch, seed=seed,
    )  # fmt: skip
    sft_accuracy = accuracy(model)
    sft_seconds = time.perf_counter() - began
    log(f"SFT on {len(sft)} real examples: loss {loss:.3f}, held-out accuracy {sft_accuracy:.3f}")

    began = time.perf_counter()
    improving = copy.deepcopy(model)
    rounds = self_improve(
        improving, tok, [p.prompt for p in pool], verify_arithmetic, rounds=budget.rounds, k=budget.k,
        eval_prompts=eval_prompts, temperature=budget.temperature, max_new_tokens=max_new,
        epochs=budget.round_epochs, lr=budget.round_lr, batch_size=budget.batch, seed=seed,
        on_round=lambda e: log(
            f"self-improve round {e['round']}: accuracy {e['accuracy']:.3f}, accepted {e['accepted']}/"
            f"{e['sampled']}, prompts solved {e['solved']}"
        ),
    )  # fmt: skip
    improve_seconds = time.perf_counter() - began

    began = time.perf_counter()
    real = copy.deepcopy(model)
    real_pairs = [(p.prompt, p.answer) for p in pool]
    real_rounds: list[dict[str, Any]] = [
        {"round": 0, "accuracy": sft_accuracy, "trained": 0, "train_loss": None}
    ]
    for r in range(1, budget.rounds + 1):
        real_loss = finetune(
            real, tok, real_pairs, epochs=budget.round_epochs, lr=budget.round_lr, batch_size=budget.batch,
            seed=seed * 1_000 + r,
        )  # fmt: skip
        entry = {"round": r, "accuracy": accuracy(real), "trained": len(real_pairs), "train_loss": real_loss}
        real_rounds.append(entry)
        log(f"SFT on real answers round {r}: accuracy {real_rounds[-1]['accuracy']:.3f}")
    real_seconds = time.perf_counter() - began
    sft_entry = {"examples": len(sft), "loss": loss, "accuracy": sft_accuracy}
    return {
        "sft": {**sft_entry, "seconds": round(sft_seconds, 1)},
        "self_improve": rounds,
        "sft_real": real_rounds,
        "seconds": {"self_improve": round(improve_seconds, 1), "sft_real": round(real_seconds, 1)},
    }


def verdict(result: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers."""
    si, real = result["run"]["self_improve"], result["run"]["sft_real"]
    start, end, ref = si[0]["accuracy"], si[-1]["accuracy"], real[-1]["accuracy"]
    rounds = len(si) - 1

    def holds(ok: bool) -> str:
        return "**holds**" if ok else "**does not hold**"

    accepted = [e["accepted"] for e in si[1:]]
    # a difference of two accuracies on n held-out problems is a finding only beyond ~2 standard errors
    n = result["budget"]["eval_problems"]
    noise = 2 * math.sqrt(max(start * (1 - start), end * (1 - end), 1e-9) * 2 / n)

    def verdict_of(gain: float) -> str:
        return "**within noise**" if abs(gain) < noise else holds(gain > 0)

    return [
        f"- Self-improvement raises held-out accuracy above the SFT start: {verdict_of(end - start)} "
        f"({start:.1%} after SFT, {end:.1%} after {rounds} rounds; two standard errors of the difference on "
        f"{n} problems: {noise:.1%}).",
        f"- Self-improvement matches SFT on the same {result['budget']['pool']} prompts with real answers "
        f"(within {CLOSE:.0%}): {holds(end >= ref - CLOSE)} ({end:.1%} against {ref:.1%}).",
        f"- The verifier accepts more samples round after round: "
        f"{holds(accepted == sorted(accepted) and accepted[-1] > accepted[0])} "
        f"(accepted per round: {', '.join(map(str, accepted))} of {si[1]['sampled']}).",
    ]


def table(result: dict[str, Any]) -> str:
    si, real = result["run"]["self_improve"], result["run"]["sft_real"]
    rows = [
        "| round | self-improvement accuracy | accepted / sampled | prompts solved | pairs trained on "
        "| SFT on real answers accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for e, r in zip(si, real, strict=True):
        sampled = f"{e['accepted']} / {e['sampled']}" if e["round"] else "–"
        solved = e["solved"] if e["round"] else "–"
        trained = e["trained"] if e["round"] else "–"
        rows.append(
            f"| {e['round']} | {e['accuracy']:.1%} | {sampled} | {solved} | {trained} | {r['accuracy']:.1%} |"
        )
    return "\n".join(rows)


def doc_section(result: dict[str, Any]) -> str:
    b = result["budget"]
    lines = [
        f"Generated {result['date']} by `{result['command']}` ({result['wall_seconds'] / 60:.1f} min; "
        f"{result['machine']}).",
        "",
        f"Set-up: TinyGPT ({b['n_layer']} layers, width {b['n_embd']}, {b['n_head']} heads) on bytes; "
        f"problems 'a+b=' with {b['digits'][0]}-{b['digits'][1]} digit operands, answers checked exactly. "
        f"SFT on {b['sft_examples']} real solved examples ({b['sft_epochs']} epochs, LR {b['lr']:g}); then "
        f"{b['rounds']} rounds from the SFT weights, each fine-tuning {b['round_epochs']} epochs at LR "
        f"{b['round_lr']:g} (loss on the answer only): self-improvement samples {b['k']} answers per "
        f"prompt of a pool of {b['pool']} unlabelled prompts at temperature {b['temperature']:g} and trains "
        f"on the verified ones (each distinct pair once); the reference trains on the same {b['pool']} "
        f"prompts with their real answers. Accuracy: greedy decoding on {b['eval_problems']} held-out "
        f"problems. Seed {result['seed']}.",
        "",
        table(result),
        "",
        "Verdict:",
        "",
        *verdict(result),
        "",
        "How to read this: one seed and a tiny model far from mastering addition; the real-answer arm is an "
        "upper reference (it is told every answer), not a competitor.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, no doc section")
    parser.add_argument("--seed", type=int, default=0, help="data, initial weights and sampling")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves cores to others)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the raw numbers")
    parser.add_argument("--no-write", action="store_true", help="leave docs/RESULTS.md alone")
    parser.add_argument("--results-md", type=Path, default=None, help="write the doc section to this page")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    out = args.out or (QUICK_JSON if args.quick else RESULTS_JSON)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    outcome = run(budget, args.seed, log)
    result = {
        "date": date.today().isoformat(),
        "command": " ".join(["python bench/self_improve.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": (
            f"{os.cpu_count()}-core {platform.machine()} machine shared with other jobs (load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), {args.threads} torch "
            f"thread(s), torch {torch.__version__}"
        ),
        "seed": args.seed,
        "budget": dataclasses.asdict(budget),
        "run": outcome,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    atomic_write_json(out, result)
    log(f"wrote {out}")
    print(table(result))
    print("\n".join(verdict(result)))
    page = args.results_md or (None if args.quick or args.no_write else RESULTS_MD)
    if page is not None:
        write_section(
            page, SECTION, doc_section(result), HEADING,
            "Regenerate with `.venv/bin/python bench/self_improve.py` (about 10 minutes on one core); "
            "`--quick` is the smoke version the test suite runs.",
        )  # fmt: skip
        log(f"wrote the {SECTION} section of {page}")
    return result


if __name__ == "__main__":
    main()
