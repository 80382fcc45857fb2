"""Language models that learn from their own outputs: self-improvement with a verifier, and collapse.

Two loops on a causal LM (the tiny GPT, or a Hugging Face model wrapped in `lifelong.lm.causal_lm.CausalLM`):

- `self_improve`: ReST/STaR-style. Sample `k` answers per prompt, keep those a verifier accepts, fine-tune on
  them (loss on the answer tokens only), repeat; each round reports greedy accuracy on held-out prompts and
  how many samples were accepted. `arithmetic_task` and `verify_arithmetic` give a task whose answers are
  checked exactly; any callable `(prompt, completion) -> bool` serves as a verifier.
- `collapse`: a model trained round after round on its own generations, with a share of real data kept; each
  round reports perplexity on held-out real text and the token entropy and distinct-n of its generations.

Everything runs on CPU in seconds at the sizes of the tests, and is seeded: same seed, same numbers.

Example:
    >>> from lifelong.models import TinyGPT
    >>> from lifelong.streams.text import ByteTokenizer
    >>> problems = arithmetic_task(digits=2, n=4, seed=0)
    >>> problems[0].prompt, verify_arithmetic(problems[0].prompt, problems[0].answer)
    ('63+43=', True)
    >>> _ = torch.manual_seed(0)
    >>> model, tok = TinyGPT(256, 16, n_layer=1, n_head=2, n_embd=16), ByteTokenizer()
    >>> rounds = self_improve(model, tok, [p.prompt for p in problems], verify_arithmetic, rounds=1, k=2,
    ...                       eval_prompts=[p.prompt for p in problems], max_new_tokens=4)
    >>> [r["round"] for r in rounds], rounds[1]["sampled"]
    ([0, 1], 8)
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError, DataError
from lifelong.objectives import LanguageModeling, logits_of
from lifelong.streams.experience import Split
from lifelong.streams.text import vocab_size

IGNORE = -100  # target id that the loss skips (prompt tokens, padding)
_PROBLEM = re.compile(r"^\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*$")

Verifier = Callable[[str, str], bool]


# ------------------------------------------------------------------------------------------------ the task


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: `prompt` such as "12+345=" and its exact `answer` ("357")."""

    prompt: str
    answer: str


def arithmetic_task(
    digits: int | tuple[int, int], n: int, seed: int = 0, operations: str = "+"
) -> list[Problem]:
    """`n` distinct problems "a+b=" (and "a-b=" when `operations` holds "-") with their exact answers.

    `digits`: each operand's number of digits, or a range (lo, hi) from which each operand's is drawn
    uniformly. Subtraction puts the larger operand first, so every answer is a non-negative integer.

    Example:
        >>> [(p.prompt, p.answer) for p in arithmetic_task((2, 3), 3, seed=1, operations="+-")]
        [('82+42=', '124'), ('879-583=', '296'), ('129-22=', '107')]
    """
    lo, hi = (digits, digits) if isinstance(digits, int) else digits
    if isinstance(lo, bool) or isinstance(hi, bool) or not 1 <= lo <= hi:
        raise ConfigError(
            f"digits must be an integer >= 1 or a range (lo, hi) with 1 <= lo <= hi, got {digits}"
        )
    if not operations or set(operations) - {"+", "-"}:
        raise ConfigError(f"operations must be made of '+' and '-', got {operations!r}")
    ops = sorted(set(operations))
    widths = range(lo, hi + 1)
    # operands of d digits: 10^(d-1) .. 10^d - 1 (one-digit operands include 0)
    count = sum(10**d - (10 ** (d - 1) if d > 1 else 0) for d in widths)
    possible = count * count * len(ops)
    if n < 1 or n > possible // 2:
        raise ConfigError(
            f"n must be between 1 and {possible // 2} (half of the {possible} distinct problems with "
            f"digits={digits}), got {n}; use more digits for more problems"
        )
    rng = random.Random(seed)

    def operand() -> int:
        d = rng.choice(widths)
        return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)

    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        a, b, op = operand(), operand(), rng.choice(ops)
        if op == "-" and b > a:
            a, b = b, a
        prompt = f"{a}{op}{b}="
        if prompt in seen:
            continue
        seen.add(prompt)
        problems.append(Problem(prompt, str(a + b if op == "+" else a - b)))
    return problems


def verify_arithmetic(prompt: str, completion: str) -> bool:
    """True when the completion's first line is exactly the answer of `prompt` ("12+345=" -> "357").

    Example:
        >>> verify_arithmetic("12+345=", "357\\n"), verify_arithmetic("12+345=", "358")
        (True, False)
        >>> verify_arithmetic("9-3=", " 6")  # exact: no stray spaces
        False
    """
    match = _PROBLEM.match(prompt)
    if match is None:
        raise DataError(f"prompt {prompt!r} is not an arithmetic problem such as '12+345='")
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    answer = a + b if op == "+" else a - b
    return completion.split("\n", 1)[0] == str(answer)


# -------------------------------------------------------------------------------------------- the metrics


def distinct_n(sequences: Sequence[Sequence[Any]], n: int) -> float:
    """Distinct n-grams over all n-grams of `sequences` (n-grams do not cross from one sequence to the next):
    1.0 when no n-gram repeats, near 0 when the same few repeat.

    Example:
        >>> distinct_n([[1, 2, 3], [1, 2, 4]], 1), distinct_n([[1, 2, 3], [1, 2, 4]], 2)
        (0.6666666666666666, 0.75)
    """
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    grams: Counter[tuple[Any, ...]] = Counter()
    for seq in sequences:
        items = list(seq)
        grams.update(tuple(items[i : i + n]) for i in range(len(items) - n + 1))
    total = sum(grams.values())
    if total == 0:
        raise DataError(f"no sequence has {n} or more tokens: distinct-{n} is undefined; pass longer ones")
    return len(grams) / total


def token_entropy(sequences: Sequence[Sequence[Any]]) -> float:
    """Entropy in bits of the token distribution over all of `sequences` (0 when one token is all there is;
    log2(V) when V tokens are equally frequent).

    Example:
        >>> token_entropy([[1, 1], [1]]), token_entropy([[1, 2], [3, 4]])
        (0.0, 2.0)
    """
    counts = Counter(t for seq in sequences for t in seq)
    total = sum(counts.values())
    if total == 0:
        raise DataError("no tokens: the entropy of nothing is undefined; pass non-empty sequences")
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts.values()))


# ------------------------------------------------------------------------------------------------ sampling


def sample(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    k: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    *,
    stop: str | None = "\n",
    batch_size: int = 256,
) -> list[list[str]]:
    """`k` completions of each prompt (text after the prompt, cut before `stop`); `temperature` 0 is greedy.

    Prompts of the same token length are batched together (no padding, so models without an attention mask,
    such as the tiny GPT, see exactly what they would alone). The j-th completion of the i-th prompt draws its
    tokens from uniforms seeded by (`seed`, i, j): the same call gives the same completions whatever the
    global RNG and the batch size. The model is put in eval mode for the call and back afterwards.

    Example:
        >>> from lifelong.models import TinyGPT
        >>> from lifelong.streams.text import ByteTokenizer
        >>> _ = torch.manual_seed(0)
        >>> gpt = TinyGPT(256, 16, n_layer=1, n_head=2, n_embd=16)
        >>> out = sample(gpt, ByteTokenizer(), ["1+1=", "22+3="], k=3, max_new_tokens=4, seed=7)
        >>> again = sample(gpt, ByteTokenizer(), ["1+1=", "22+3="], k=3, max_new_tokens=4, seed=7)
        >>> len(out), len(out[0]), out == again
        (2, 3, True)
    """
    prompts = _check_prompts(prompts, "prompts")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (completions per prompt) must be an integer >= 1, got {k}")
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    device = _device(model)
    vocab = vocab_size(tokenizer)
    stop_ids = _encode(tokenizer, stop) if stop else []
    stop_id = stop_ids[0] if len(stop_ids) == 1 else None  # a one-token stop ends rows early
    encoded = [_encode(tokenizer, p) for p in prompts]
    if any(not ids for ids in encoded):
        raise DataError("a prompt encodes to no tokens; a causal LM needs at least one token to start from")
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    out: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for length in sorted(by_length):
            rows = [(i, j) for i in by_length[length] for j in range(k)]  # each prompt k times
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = torch.tensor([encoded[i] for i, _ in chunk], dtype=torch.long, device=device)
                noise = None if temperature == 0 else _row_noise(seed, chunk, max_new_tokens).to(device)
                new = _generate(model, batch, max_new_tokens, temperature, noise, vocab, stop_id)
                for (i, _), tokens in zip(chunk, new.tolist(), strict=True):
                    text = tokenizer.decode(tokens)
                    out[i].append(text.split(stop, 1)[0] if stop else text)
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def _generate(
    model: nn.Module,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    noise: torch.Tensor | None,
    vocab: int,
    stop_id: int | None = None,
) -> torch.Tensor:
    """[B, T] token ids -> [B, new] generated ids (rows that produced `stop_id` repeat it to the end).

    Sampling at step s takes the token where the cumulative probability passes `noise[:, s]` (uniforms in
    [0, 1), one per row and step: inverse-CDF sampling); `temperature` 0 is greedy and needs no noise."""
    context = _context(model)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    new = []
    for step in range(max_new_tokens):
        x = ids if context is None else ids[:, -context:]
        # a model's output layer may be wider than the tokenizer's vocabulary (padded embeddings)
        logits = logits_of(model(x), model)[:, -1, :vocab].float()
        if temperature == 0 or noise is None:
            nxt = logits.argmax(dim=-1)
        else:
            cdf = F.softmax(logits / temperature, dim=-1).cumsum(dim=-1)
            u = noise[:, step : step + 1] * cdf[:, -1:]  # scaled by the total: float sums may miss 1
            nxt = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
        if stop_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
            done |= nxt == stop_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        new.append(nxt)
        if stop_id is not None and bool(done.all()):
            break
    return torch.stack(new, dim=1)


def _row_noise(seed: int, rows: Sequence[tuple[int, int]], steps: int) -> torch.Tensor:
    """Uniforms [len(rows), steps]: row (i, j) from its own generator, seeded by (seed, i, j)."""
    out = torch.empty(len(rows), steps)
    for r, (i, j) in enumerate(rows):
        out[r] = torch.rand(steps, generator=_seeded(seed, i, j))
    return out


# ---------------------------------------------------------------------------------------------- training


def finetune(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    stop: str | None = "\n",
    weight_decay: float = 0.0,
) -> float:
    """Supervised fine-tuning on (prompt, completion) pairs: next-token loss on the completion and `stop`
    tokens only (the prompt is given, not learnt). AdamW, a fresh optimizer per call, a seeded order.
    Returns the mean loss of the last epoch.

    Example:
        >>> from lifelong.models import TinyGPT
        >>> from lifelong.streams.text import ByteTokenizer
        >>> _ = torch.manual_seed(0)
        >>> gpt = TinyGPT(256, 16, n_layer=1, n_head=2, n_embd=16)
        >>> first = finetune(gpt, ByteTokenizer(), [("1+1=", "2")], epochs=1, lr=1e-2)
        >>> finetune(gpt, ByteTokenizer(), [("1+1=", "2")], epochs=20, lr=1e-2) < first
        True
    """
    if not pairs:
        raise DataError("no (prompt, completion) pairs to fine-tune on")
    end = stop or ""
    rows, targets = [], []
    for prompt, completion in pairs:
        p, c = _encode(tokenizer, prompt), _encode(tokenizer, completion + end)
        if not p or not c:
            raise DataError(f"pair {(prompt, completion)!r} has an empty prompt or an empty completion")
        ids = p + c
        rows.append(ids[:-1])
        # position j predicts ids[j + 1]: learnt only where that token belongs to the completion
        targets.append([IGNORE] * (len(p) - 1) + c)
    longest = max(len(r) for r in rows)
    context = _context(model)
    if context is not None and longest > context:
        raise DataError(
            f"a prompt + completion is {longest + 1} tokens; the model sees {context}: shorten them or use a "
            "model with a longer context (block_size)"
        )
    # right padding: a causal model's earlier positions never see it, and its targets are ignored
    x = torch.tensor([r + [0] * (longest - len(r)) for r in rows], dtype=torch.long)
    y = torch.tensor([t + [IGNORE] * (longest - len(t)) for t in targets], dtype=torch.long)
    return _fit(
        model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, weight_decay=weight_decay
    )


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
) -> float:
    """A plain training loop on token blocks: next-token cross-entropy over targets other than IGNORE (the
    language-modelling objective's loss with a mask, which `LanguageModeling.loss` has no place for)."""
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    device = _device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    mean = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total, count = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            logits = logits_of(model(xb), model)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        mean = total / count
        if not math.isfinite(mean):
            raise DataError(f"fine-tuning diverged (loss {mean}) in epoch {epoch + 1}; lower lr")
    model.train(was_training)
    return mean


# -------------------------------------------------------------------------------------- self-improvement


def self_improve(
    model: nn.Module,
    tokenizer: Any,
    task_prompts: Sequence[str],
    verifier: Verifier,
    rounds: int = 3,
    k: int = 4,
    *,
    eval_prompts: Sequence[str],
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    stop: str | None = "\n",
    unique: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Rounds of: sample `k` completions per task prompt, keep those `verifier(prompt, completion)` accepts,
    fine-tune `model` (in place) on the kept pairs. With `unique` a pair accepted several times in a round is
    trained on once (otherwise easy prompts, solved by every sample, weigh k times more).

    Returns one entry per round, round 0 being the model before any: `accuracy` (greedy completions of
    `eval_prompts` the verifier accepts), `accepted` of `sampled` completions, `solved` (task prompts with at
    least one accepted completion), `trained` (pairs fine-tuned on) and `train_loss`. `on_round` receives each
    entry as it is made (progress output). The verifier must return a bool; anything else raises DataError,
    and the first verifications (round 0's evaluation, round 1's samples) come before any training.

    Example: see the module docstring.
    """
    if not callable(verifier):
        raise ConfigError(
            f"verifier must be a callable (prompt, completion) -> bool, got a {type(verifier).__name__}; "
            "pass a function such as lifelong.selftrain.lm.verify_arithmetic"
        )
    task_prompts = _check_prompts(task_prompts, "task_prompts")
    eval_prompts = _check_prompts(eval_prompts, "eval_prompts")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0 to sample {k} different answers, got {temperature}")
    context = _context(model)
    longest = max(len(_encode(tokenizer, p)) for p in task_prompts)
    if context is not None and longest + max_new_tokens > context:
        # else fine-tuning on a long accepted answer would fail after rounds of work
        raise ConfigError(
            f"the longest task prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) passes the "
            f"model's context of {context}: lower max_new_tokens or use a model with a longer context"
        )

    def accuracy() -> float:
        greedy = sample(model, tokenizer, eval_prompts, 1, 0.0, max_new_tokens, seed, stop=stop)
        right = sum(_verify(verifier, p, c[0]) for p, c in zip(eval_prompts, greedy, strict=True))
        return right / len(greedy)

    history: list[dict[str, Any]] = []

    def record(entry: dict[str, Any]) -> None:
        history.append(entry)
        if on_round is not None:
            on_round(entry)

    record({"round": 0, "accuracy": accuracy(), "accepted": 0, "sampled": 0, "solved": 0, "trained": 0,
            "train_loss": None})  # fmt: skip
    for r in range(1, rounds + 1):
        completions = sample(
            model, tokenizer, task_prompts, k, temperature, max_new_tokens, seed=seed * 1_000 + r, stop=stop
        )
        kept: list[tuple[str, str]] = []
        solved = accepted = 0
        for prompt, answers in zip(task_prompts, completions, strict=True):
            good = [c for c in answers if _verify(verifier, prompt, c)]
            solved, accepted = solved + bool(good), accepted + len(good)
            kept += [(prompt, c) for c in (dict.fromkeys(good) if unique else good)]
        loss = None
        if kept:
            loss = finetune(
                model, tokenizer, kept, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed * 1_000 + r,
                stop=stop,
            )  # fmt: skip
        record({"round": r, "accuracy": accuracy(), "accepted": accepted, "sampled": len(task_prompts) * k,
                "solved": solved, "trained": len(kept), "train_loss": loss})  # fmt: skip
    return history


def _verify(verifier: Verifier, prompt: str, completion: str) -> bool:
    verdict = verifier(prompt, completion)
    if not isinstance(verdict, bool | np.bool_):
        raise DataError(
            f"the verifier returned {verdict!r} (a {type(verdict).__name__}) for prompt {prompt!r} and "
            f"completion {completion!r}; a verifier must return True or False (wrap its result in bool())"
        )
    return bool(verdict)


# ---------------------------------------------------------------------------------------------- collapse


def collapse(
    model_factory: Callable[[], nn.Module],
    real_text_tokens: torch.Tensor | Sequence[int],
    rounds: int,
    real_fraction: float,
    *,
    block_size: int = 64,
    blocks_per_round: int | None = None,
    test_fraction: float = 0.1,
    pretrain_epochs: int = 1,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 16,
    temperature: float = 1.0,
    prefix_tokens: int = 1,
    eval_samples: int = 32,
    fresh: bool = False,
    vocab: int | None = None,
    seed: int = 0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """A model trained round after round on its own generations, with `real_fraction` real data kept.

    `real_text_tokens` (1-D token ids) are cut into blocks of `block_size + 1`; a random `test_fraction` of
    them (seeded) is held out. The model comes from `model_factory()` and is first trained `pretrain_epochs`
    on the real training blocks (0: it comes pre-trained). Each round r = 1..R then trains `epochs` on
    `blocks_per_round` blocks (default: as many as the real training blocks): a `real_fraction` share drawn
    from the real training blocks, the rest generated by the model of round r - 1 (each block starts from the
    first `prefix_tokens` of a real block and is sampled at `temperature`). With `fresh` each round trains a
    new model from `model_factory()` instead of going on with the last one (generation g learns only from
    generation g - 1, as in Shumailov et al. 2024).

    Returns one entry per round (0: after pre-training): `perplexity` on the held-out real blocks, and over
    `eval_samples` of the round's generated blocks (prefix excluded; the same count every round, as distinct-n
    falls with the amount of text) `entropy` (bits per token, unigram), `distinct_1`, `distinct_2`,
    `distinct_3`; plus `real_blocks` and `synthetic_blocks` trained on in the round.
    """
    if not 0.0 <= real_fraction <= 1.0:
        raise ConfigError(f"real_fraction must be between 0 and 1, got {real_fraction}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds}")
    if not callable(model_factory):
        raise ConfigError(
            f"model_factory must be a callable returning a model, got a {type(model_factory).__name__}"
        )
    if not 0 < prefix_tokens <= block_size or eval_samples < 1 or not temperature > 0:
        raise ConfigError(
            f"need 0 < prefix_tokens <= block_size, eval_samples >= 1, temperature > 0; got {prefix_tokens}, "
            f"{block_size}, {eval_samples}, {temperature}"
        )
    train, test = real_blocks(real_text_tokens, block_size, test_fraction, seed)
    held_out = Split(test[:, :-1].contiguous(), test[:, 1:].contiguous())
    per_round = blocks_per_round or len(train)
    n_real = round(per_round * real_fraction)
    n_synthetic = per_round - n_real
    n_generate = max(n_synthetic, eval_samples)

    model = model_factory()
    # sampling draws from the tokenizer's vocabulary (`vocab`), else from every output of the model
    width = vocab or int(logits_of(model(train[:1, :1].to(_device(model))), model).shape[-1])
    if pretrain_epochs:
        train_blocks(model, train, epochs=pretrain_epochs, lr=lr, batch_size=batch_size, seed=seed)

    def measure(r: int, real: int, synthetic: int) -> tuple[dict[str, Any], torch.Tensor]:
        # the round's generations: scored here and, but for the last round, the next round's training data.
        # The scored blocks come first, from their own generator: the same for every real share
        parts = []
        for part, count in enumerate((eval_samples, n_generate - eval_samples)):
            if count == 0:
                continue
            g = _seeded(seed, r, part)
            prefixes = train[torch.randint(len(train), (count,), generator=g)][:, :prefix_tokens]
            parts.append(_generate_blocks(model, prefixes, block_size + 1, temperature, g, width))
        generated = torch.cat(parts)
        text = generated[:eval_samples, prefix_tokens:].tolist()  # a fixed count: distinct-n depends on it
        entry = {
            "round": r,
            "perplexity": LanguageModeling(width).evaluate(model, held_out),
            "entropy": token_entropy(text),
            **{f"distinct_{n}": distinct_n(text, n) for n in (1, 2, 3)},
            "real_blocks": real,
            "synthetic_blocks": synthetic,
        }
        if on_round is not None:
            on_round(entry)
        return entry, generated[:n_synthetic]

    rng = torch.Generator().manual_seed(seed + 1)  # the real blocks of each round
    entry, synthetic = measure(0, len(train) * pretrain_epochs, 0)
    history = [entry]
    for r in range(1, rounds + 1):
        real = train[torch.randperm(len(train), generator=rng)[:n_real]] if n_real <= len(train) else (
            train[torch.randint(len(train), (n_real,), generator=rng)]
        )  # fmt: skip
        if fresh:
            model = model_factory()
        mixed = torch.cat([real, synthetic])
        train_blocks(model, mixed, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + r)
        entry, synthetic = measure(r, n_real, n_synthetic)
        history.append(entry)
    return history


def real_blocks(
    tokens: torch.Tensor | Sequence[int], block_size: int, test_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) blocks of `block_size + 1` tokens cut from 1-D `tokens`, as `collapse` cuts them
    (same arguments, same blocks): a random `test_fraction` (at least one block) is held out.

    Example:
        >>> train, test = real_blocks(torch.arange(100), block_size=9, test_fraction=0.2)
        >>> tuple(train.shape), tuple(test.shape)
        ((8, 10), (2, 10))
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be an integer >= 1, got {block_size}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    flat = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    span = block_size + 1
    n_blocks = len(flat) // span
    if n_blocks < 2:
        raise DataError(
            f"{len(flat)} real tokens make {n_blocks} block(s) of {span}; need at least 2 (one to train "
            "on, one to hold out): pass more text or a smaller block_size"
        )
    blocks = flat[: n_blocks * span].view(n_blocks, span)
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(round(n_blocks * test_fraction), 1), n_blocks - 1)
    return blocks[order[n_test:]], blocks[order[:n_test]]


def train_blocks(
    model: nn.Module,
    blocks: torch.Tensor,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> float:
    """Next-token training on every position of token blocks [N, T + 1] (AdamW, a seeded order); returns the
    mean loss of the last epoch. `collapse` pre-trains and trains each round with it."""
    return _fit(model, blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous(), epochs=epochs, lr=lr,
                batch_size=batch_size, seed=seed)  # fmt: skip


def _generate_blocks(
    model: nn.Module, prefixes: torch.Tensor, span: int, temperature: float, rng: torch.Generator, width: int
) -> torch.Tensor:
    """Blocks of `span` tokens: each prefix continued by sampling (on CPU generator `rng`)."""
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        steps = span - prefixes.shape[1]
        noise = torch.rand(len(prefixes), steps, generator=rng)
        chunks = []
        for start in range(0, len(prefixes), 64):
            ids = prefixes[start : start + 64].to(device)
            new = _generate(model, ids, steps, temperature, noise[start : start + 64].to(device), width)
            chunks.append(torch.cat([ids, new], dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------- helpers


def _seeded(*values: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of integers (well mixed: nearby tuples give unrelated streams)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(values)).generate_state(1)[0]))


def _check_prompts(prompts: Sequence[str], name: str) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise DataError(f"{name} must be a list of strings, got a {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise DataError(f"{name} is empty; pass at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise DataError(f"{name} must hold strings; got {type(bad[0]).__name__} {bad[0]!r}")
    return prompts


def _encode(tokenizer: Any, text: str) -> list[int]:
    out = tokenizer.encode(text)
    return list(getattr(out, "ids", out))  # `tokenizers.Tokenizer.encode` returns an Encoding


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _context(model: nn.Module) -> int | None:
    """The longest input the model takes: the tiny GPT's block_size, a wrapped HF model's max_positions."""
    for name in ("block_size", "max_positions"):
        value = getattr(model, name, None)
        if isinstance(value, int):
            return value
    return None
