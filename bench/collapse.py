"""Collapse: a tiny GPT trained round after round on its own generations, with 0 / 10 / 50 % real data kept.

The claim under test (issue 10; Shumailov et al. 2024, "AI models collapse when trained on recursively
generated data"; Gerstgrasser et al. 2024 on keeping real data): a language model trained on its own samples
drifts away from the real distribution (perplexity on real text rises, generations lose diversity), and
keeping a share of real data in every round keeps it stable.

Set-up: TinyGPT on bytes, pre-trained on real text (Jane Austen's novels, `lifelong.datasets` "austen"; the
Debian fortunes when Austen is not installed). From the same pre-trained weights, one run per real share
(0, 0.1, 0.5): R rounds, each training one epoch on as many blocks as before, the real share drawn from the
real training text and the rest sampled by the model of the previous round (temperature 1, from the first
byte of a real block). Per round: perplexity on held-out real text, and over a fixed number of generated
blocks the token entropy (bits per byte, unigram) and distinct-1/2/3 (`lifelong.selftrain.lm.collapse`).

    python bench/collapse.py            # full: about 10 minutes on one core; JSON + docs/RESULTS.md
    python bench/collapse.py --quick    # smoke: tiny model and text, seconds; writes no doc section

Raw numbers go to bench/results/collapse.json (`--out`); `--no-write` leaves docs/RESULTS.md alone and
`--results-md PAGE` writes the section to another page.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
RESULTS_JSON = ROOT / "bench" / "results" / "collapse.json"
QUICK_JSON = ROOT / "bench" / "results" / "collapse_quick.json"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
SECTION = "collapse"
HEADING = "## Collapse: a tiny GPT trained on its own generations, with and without real data"
FRACTIONS = (0.0, 0.1, 0.5)
STABLE = 0.05  # "stable": perplexity on real text within 5 % of its value after pre-training


@dataclass(frozen=True)
class Budget:
    chars: int  # real text taken from the corpus (bytes, near enough: Austen is ASCII)
    pretrain_epochs: int
    rounds: int
    blocks_per_round: int
    eval_samples: int  # generated blocks scored per round
    block: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    lr: float = 1e-3
    batch: int = 16
    temperature: float = 1.0


# Sized for one core (measured 2026-11 under load: ~5k training tokens/s, 64 generated blocks of 64 bytes in
# ~5 s, as the tiny GPT has no KV cache): pre-training 0.3M bytes x 2 epochs (~2 min), then 3 shares x 5
# rounds of generating and training 256 blocks (~6 min), plus perplexity evaluations: about 10 minutes.
FULL = Budget(chars=300_000, pretrain_epochs=2, rounds=5, blocks_per_round=256, eval_samples=128)
QUICK = Budget(
    chars=12_000, pretrain_epochs=1, rounds=2, blocks_per_round=16, eval_samples=8, block=32, n_layer=1,
    n_head=2, n_embd=32,
)  # fmt: skip


def real_text(chars: int) -> tuple[str, str]:
    """The first `chars` characters of Austen's novels (else of the fortunes) and the corpus's name."""
    from lifelong import datasets

    name = "austen" if datasets.info("austen").locate() is not None else "fortunes"
    corpus = datasets.load(name)
    text, total = [], 0
    for documents in corpus.domains.values():
        for doc in documents:
            text.append(doc)
            total += len(doc)
            if total >= chars:
                return "\n\n".join(text)[:chars], name
    return "\n\n".join(text)[:chars], name


def run(budget: Budget, seed: int, log: Any) -> dict[str, Any]:
    import lifelong
    from lifelong.models import TinyGPT
    from lifelong.selftrain.lm import collapse, distinct_n, real_blocks, token_entropy, train_blocks
    from lifelong.streams.text import ByteTokenizer

    text, corpus = real_text(budget.chars)
    tokens = torch.tensor(ByteTokenizer().encode(text), dtype=torch.long)
    lifelong.seed(seed)
    base = TinyGPT(256, budget.block, n_layer=budget.n_layer, n_head=budget.n_head, n_embd=budget.n_embd)
    common = {
        "block_size": budget.block, "blocks_per_round": budget.blocks_per_round, "epochs": 1, "lr": budget.lr,
        "batch_size": budget.batch, "temperature": budget.temperature, "eval_samples": budget.eval_samples,
        "vocab": 256, "seed": seed,
    }  # fmt: skip
    began = time.perf_counter()
    # pre-trained once, on the training blocks `collapse` will cut (same block size and seed), so the
    # held-out text stays unseen; every share then starts from these weights
    train, _ = real_blocks(tokens, budget.block, seed=seed)
    train_blocks(base, train, epochs=budget.pretrain_epochs, lr=budget.lr, batch_size=budget.batch, seed=seed)
    pretrained = {k: v.detach().clone() for k, v in base.state_dict().items()}
    pretrain_seconds = time.perf_counter() - began
    log(f"pre-trained on {len(train) * budget.block:,} bytes of {corpus} ({pretrain_seconds:.0f} s)")

    runs: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for fraction in FRACTIONS:

        def factory() -> torch.nn.Module:
            model = copy.deepcopy(base)
            model.load_state_dict(pretrained)
            return model

        began = time.perf_counter()
        runs[str(fraction)] = collapse(
            factory, tokens, rounds=budget.rounds, real_fraction=fraction, pretrain_epochs=0, **common,
            on_round=lambda e, f=fraction: log(
                f"real {f:.0%} round {e['round']}: perplexity {e['perplexity']:.2f}, entropy "
                f"{e['entropy']:.2f} bits, distinct-1/2/3 {e['distinct_1']:.3f}/{e['distinct_2']:.3f}/"
                f"{e['distinct_3']:.3f}"
            ),
        )  # fmt: skip
        seconds[str(fraction)] = round(time.perf_counter() - began, 1)

    # the real text's own entropy and distinct-n over as many blocks of the same length: the target
    span = budget.block + 1
    blocks = tokens[: len(tokens) // span * span].view(-1, span)
    pick = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[: budget.eval_samples]
    real = blocks[pick, 1:].tolist()
    reference = {"entropy": token_entropy(real), **{f"distinct_{n}": distinct_n(real, n) for n in (1, 2, 3)}}
    return {
        "corpus": corpus,
        "real_tokens": len(tokens),
        "pretrain_seconds": round(pretrain_seconds, 1),
        "runs": runs,
        "seconds": seconds,
        "real_reference": reference,
    }


# ------------------------------------------------------------------------------------------------ report


def final(result: dict[str, Any], fraction: float) -> dict[str, Any]:
    return result["run"]["runs"][str(fraction)][-1]


def start(result: dict[str, Any]) -> dict[str, Any]:
    return result["run"]["runs"][str(FRACTIONS[0])][0]  # round 0 is the pre-trained model for every share


def verdict(result: dict[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers."""
    base = start(result)["perplexity"]
    change = {f: final(result, f)["perplexity"] / base - 1 for f in FRACTIONS}
    rounds = len(result["run"]["runs"][str(FRACTIONS[0])]) - 1

    def holds(ok: bool) -> str:
        return "**holds**" if ok else "**does not hold**"

    ordered = all(change[a] >= change[b] for a, b in zip(FRACTIONS, FRACTIONS[1:], strict=False))
    d0, d_start = final(result, 0.0), start(result)
    return [
        f"- Training on its own generations alone degrades the model (0 % real: perplexity on real text up "
        f"by more than {STABLE:.0%} after {rounds} rounds): {holds(change[0.0] > STABLE)} "
        f"({base:.2f} -> {final(result, 0.0)['perplexity']:.2f}, {change[0.0]:+.1%}).",
        f"- Keeping real data keeps the model stable (50 % real: perplexity within {STABLE:.0%} of the start "
        f"or better): {holds(change[0.5] <= STABLE)} ({change[0.5]:+.1%}; 10 % real: {change[0.1]:+.1%}).",
        f"- More real data, less drift (perplexity change ordered 0 % >= 10 % >= 50 %): {holds(ordered)}.",
        f"- Generations lose diversity without real data (0 % real: distinct-3 and entropy fall): "
        f"{holds(d0['distinct_3'] < d_start['distinct_3'] and d0['entropy'] < d_start['entropy'])} "
        f"(distinct-3 {d_start['distinct_3']:.3f} -> {d0['distinct_3']:.3f}, entropy "
        f"{d_start['entropy']:.2f} -> {d0['entropy']:.2f} bits).",
    ]


def table(result: dict[str, Any]) -> str:
    rows = [
        "| real share | round | perplexity (real text) | entropy (bits/byte) | distinct-1 | distinct-2 "
        "| distinct-3 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in FRACTIONS:
        for e in result["run"]["runs"][str(f)]:
            rows.append(
                f"| {f:.0%} | {e['round']} | {e['perplexity']:.2f} | {e['entropy']:.2f} | "
                f"{e['distinct_1']:.3f} | {e['distinct_2']:.3f} | {e['distinct_3']:.3f} |"
            )
    ref = result["run"]["real_reference"]
    rows.append(
        f"| real text | – | – | {ref['entropy']:.2f} | {ref['distinct_1']:.3f} | {ref['distinct_2']:.3f} "
        f"| {ref['distinct_3']:.3f} |"
    )
    return "\n".join(rows)


def doc_section(result: dict[str, Any]) -> str:
    b, r = result["budget"], result["run"]
    lines = [
        f"Generated {result['date']} by `{result['command']}` ({result['wall_seconds'] / 60:.1f} min; "
        f"{result['machine']}).",
        "",
        f"Set-up: TinyGPT ({b['n_layer']} layers, width {b['n_embd']}, {b['n_head']} heads, context "
        f"{b['block']}) on bytes, pre-trained (epochs: {b['pretrain_epochs']}) on {r['real_tokens']:,} bytes "
        f"of {r['corpus']} (10 % of the blocks held out for perplexity). Then, from those weights, for each "
        f"real share: {b['rounds']} rounds of one epoch on {b['blocks_per_round']} blocks of {b['block']} "
        f"bytes, the share drawn from the real training text and the rest generated by the previous round's "
        f"model (temperature {b['temperature']:g}, from a real block's first byte); AdamW, LR {b['lr']:g}, "
        f"batch {b['batch']}. Entropy and distinct-n over {b['eval_samples']} generated blocks per round; "
        f"the last row is the real text over as many blocks. Round 0 is the pre-trained model. Seed "
        f"{result['seed']}.",
        "",
        table(result),
        "",
        "Verdict:",
        "",
        *verdict(result),
        "",
        "How to read this: one seed, a tiny byte-level model and few rounds; a change of a few per cent is "
        "within what another seed would move.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model and text, no doc section")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, data split and sampling")
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
        "command": " ".join(["python bench/collapse.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": (
            f"{os.cpu_count()}-core {platform.machine()} machine shared with other jobs (load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), {args.threads} torch "
            f"thread(s), torch {torch.__version__}"
        ),
        "seed": args.seed,
        "fractions": list(FRACTIONS),
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
            "Regenerate with `.venv/bin/python bench/collapse.py` (about 10 minutes on one core); `--quick` "
            "is the smoke version the test suite runs.",
        )  # fmt: skip
        log(f"wrote the {SECTION} section of {page}")
    return result


if __name__ == "__main__":
    main()
