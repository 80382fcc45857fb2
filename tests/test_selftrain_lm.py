"""Language-model self-training (lifelong.selftrain.lm): the arithmetic task and its verifier, seeded
sampling, the self-improvement loop against hand counts, the collapse loop, and distinct-n / entropy on hand
cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.errors import ConfigError, DataError
from lifelong.models import TinyGPT
from lifelong.selftrain.lm import (
    arithmetic_task,
    collapse,
    distinct_n,
    finetune,
    sample,
    self_improve,
    token_entropy,
    verify_arithmetic,
)
from lifelong.streams.text import ByteTokenizer

TOK = ByteTokenizer()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: more threads only add contention on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(seed: int = 0, block: int = 16) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(256, block, n_layer=1, n_head=2, n_embd=32)


class Constant(nn.Module):
    """Logits that do not depend on the input: byte `token` by a wide margin, whatever came before."""

    def __init__(self, token: str) -> None:
        super().__init__()
        bias = torch.zeros(256)
        bias[ord(token)] = 50.0
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*x.shape, 256)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------------------------------ the task


def test_arithmetic_task_answers_are_exact_and_distinct():
    problems = arithmetic_task((2, 3), 300, seed=3, operations="+-")
    assert len({p.prompt for p in problems}) == 300
    for p in problems:
        a, op, b = p.prompt[:-1].partition("+") if "+" in p.prompt else p.prompt[:-1].partition("-")
        assert 2 <= len(a) <= 3 and 2 <= len(b) <= 3 and p.prompt.endswith("=")
        assert int(p.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    assert {"+", "-"} <= {c for p in problems for c in p.prompt}
    assert arithmetic_task((2, 3), 300, seed=3, operations="+-") == problems  # seeded
    assert arithmetic_task((2, 3), 300, seed=4, operations="+-") != problems
    assert all("-" not in p.prompt for p in arithmetic_task(1, 20, seed=0))  # addition only by default


@pytest.mark.parametrize(
    "kwargs",
    [{"digits": 0, "n": 5}, {"digits": (3, 2), "n": 5}, {"digits": 1, "n": 51}, {"digits": 2, "n": 0},
     {"digits": 2, "n": 5, "operations": "*"}],
)  # fmt: skip
def test_arithmetic_task_refuses_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        arithmetic_task(**kwargs)


def test_verify_arithmetic_is_exact():
    assert verify_arithmetic("12+345=", "357")
    assert verify_arithmetic("12+345=", "357\nanything after the line")
    assert verify_arithmetic("900-12=", "888")
    assert not verify_arithmetic("12+345=", "358")
    assert not verify_arithmetic("12+345=", "3570")
    assert not verify_arithmetic("12+345=", " 357")
    assert not verify_arithmetic("12+345=", "")
    with pytest.raises(DataError, match="not an arithmetic problem"):
        verify_arithmetic("hello", "1")


# ---------------------------------------------------------------------------------------------- the metrics


def test_distinct_n_and_entropy_on_hand_cases():
    seqs = [[1, 2, 1, 2], [1, 2]]
    # unigrams 1,2,1,2,1,2: 2 distinct of 6; bigrams (1,2),(2,1),(1,2),(1,2): 2 of 4; trigrams 2 of 2
    assert distinct_n(seqs, 1) == pytest.approx(2 / 6)
    assert distinct_n(seqs, 2) == pytest.approx(2 / 4)
    assert distinct_n(seqs, 3) == pytest.approx(1.0)
    assert distinct_n(["abcd"], 2) == 1.0  # any sequences of hashable tokens, characters too
    assert token_entropy([[7, 7, 7]]) == 0.0
    assert token_entropy([[0, 1, 2, 3, 4, 5, 6, 7]]) == pytest.approx(3.0)
    # p = (1/2, 1/4, 1/4): 1/2 * 1 + 2 * 1/4 * 2 = 1.5 bits
    assert token_entropy([[1, 1], [2, 3]]) == pytest.approx(1.5)
    with pytest.raises(DataError, match="distinct-3"):
        distinct_n([[1, 2], [3]], 3)
    with pytest.raises(DataError):
        token_entropy([[], []])


# ------------------------------------------------------------------------------------------------ sampling


def test_sampling_is_seeded_and_batched_by_length():
    model = tiny_gpt()
    prompts = ["1+1=", "22+33=", "4+5=", "x"]
    a = sample(model, TOK, prompts, k=3, temperature=1.5, max_new_tokens=5, seed=11, stop=None)
    torch.manual_seed(123)  # the global RNG plays no part
    b = sample(model, TOK, prompts, k=3, temperature=1.5, max_new_tokens=5, seed=11, stop=None, batch_size=2)
    assert a == b
    assert [len(c) for c in a] == [3, 3, 3, 3]
    assert sample(model, TOK, prompts, k=3, temperature=1.5, max_new_tokens=5, seed=12, stop=None) != a
    # each prompt sampled alone equals sampling it in a batch of the same length under greedy decoding
    greedy = sample(model, TOK, prompts, k=1, temperature=0.0, max_new_tokens=4, stop=None)
    assert greedy[1] == sample(model, TOK, ["22+33="], k=1, temperature=0.0, max_new_tokens=4, stop=None)[0]
    assert model.training  # put back as it was


def test_sampling_greedy_matches_argmax_and_cuts_at_stop():
    model = tiny_gpt(1)
    model.eval()
    ids = torch.tensor([TOK.encode("12+3=")])
    for _ in range(4):  # greedy by hand
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    by_hand = TOK.decode(ids[0, 5:])
    assert sample(model, TOK, ["12+3="], k=1, temperature=0.0, max_new_tokens=4, stop=None) == [[by_hand]]
    assert sample(Constant("7"), TOK, ["a", "bb"], k=2, max_new_tokens=3) == [["777"] * 2, ["777"] * 2]
    newline = Constant("\n")
    assert sample(newline, TOK, ["a"], k=1, max_new_tokens=3) == [[""]]  # stop first: empty completion


def test_sampling_refuses_bad_arguments():
    model = tiny_gpt()
    with pytest.raises(DataError):
        sample(model, TOK, "1+1=", k=1)
    with pytest.raises(DataError):
        sample(model, TOK, [], k=1)
    with pytest.raises(ConfigError):
        sample(model, TOK, ["1+1="], k=0)
    with pytest.raises(ConfigError):
        sample(model, TOK, ["1+1="], k=1, temperature=-1.0)


# -------------------------------------------------------------------------------------- self-improvement


def test_bad_verifiers_are_refused_before_any_training():
    model = tiny_gpt()
    before = weights(model)
    prompts = ["1+1=", "2+2="]
    with pytest.raises(ConfigError, match="verifier must be a callable"):
        self_improve(model, TOK, prompts, "exact", rounds=1, k=2, eval_prompts=prompts)
    with pytest.raises(DataError, match=r"returned 'yes' \(a str\).*True or False"):
        self_improve(model, TOK, prompts, lambda p, c: "yes", rounds=1, k=2, eval_prompts=prompts)
    with pytest.raises(DataError, match="returned 1 "):
        self_improve(model, TOK, prompts, lambda p, c: 1, rounds=1, k=2, eval_prompts=prompts)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    # NumPy booleans are booleans
    rounds = self_improve(Constant("1"), TOK, prompts, lambda p, c: np.bool_(True), rounds=1, k=1,
                          eval_prompts=prompts, max_new_tokens=1)  # fmt: skip
    assert rounds[1]["accepted"] == 2


def test_self_improve_counts_match_a_hand_check():
    # the model always writes "5555": a verifier that accepts it for prompts starting with "a" accepts every
    # one of the k samples of those prompts and none of the others
    prompts = ["a1", "b2", "a3", "c4", "a5"]
    accept_a = lambda p, c: p.startswith("a") and c == "5555"  # noqa: E731
    rounds = self_improve(Constant("5"), TOK, prompts, accept_a, rounds=2, k=3, eval_prompts=["a9", "z9"],
                          max_new_tokens=4, lr=1e-6, epochs=1)  # fmt: skip
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0] == {"round": 0, "accuracy": 0.5, "accepted": 0, "sampled": 0, "solved": 0, "trained": 0,
                         "train_loss": None}  # fmt: skip
    for r in rounds[1:]:
        assert r["sampled"] == 5 * 3 and r["accepted"] == 3 * 3 and r["solved"] == 3
        assert r["trained"] == 3  # the same pair k times is trained on once
        assert r["accuracy"] == 0.5 and math.isfinite(r["train_loss"])
    not_unique = self_improve(Constant("5"), TOK, prompts, accept_a, rounds=1, k=3, eval_prompts=["a9"],
                              max_new_tokens=4, lr=1e-6, unique=False)  # fmt: skip
    assert not_unique[1]["trained"] == 9
    nothing = self_improve(Constant("5"), TOK, prompts, lambda p, c: False, rounds=1, k=2, eval_prompts=["a"],
                           max_new_tokens=2)  # fmt: skip
    assert nothing[1]["accepted"] == 0 and nothing[1]["trained"] == 0 and nothing[1]["train_loss"] is None


def test_self_improve_raises_accuracy_on_a_tiny_task():
    # task: answer with a digit. A random byte model rarely does (10 of 256 bytes); the samples that do are
    # kept and trained on, so greedy answers become digits
    model = tiny_gpt(2)
    prompts = [f"q{i}=" for i in range(16)]
    is_digit = lambda p, c: len(c) >= 1 and c[0].isdigit()  # noqa: E731
    seen = []
    held_out = [f"t{i}=" for i in range(8)]
    rounds = self_improve(model, TOK, prompts, is_digit, rounds=3, k=16, eval_prompts=held_out,
                          max_new_tokens=1, epochs=4, lr=1e-2, on_round=seen.append, seed=1)  # fmt: skip
    assert seen == rounds
    assert rounds[0]["accuracy"] == 0.0 and rounds[1]["accepted"] > 0
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"]
    assert rounds[3]["accepted"] > rounds[2]["accepted"] > rounds[1]["accepted"]  # more digits sampled


def test_finetune_learns_the_answer_tokens_only_and_checks_length():
    model = tiny_gpt(3)
    pairs = [("7+1=", "8"), ("2+2=", "4")]
    first = finetune(model, TOK, pairs, epochs=1, lr=1e-2)
    last = finetune(model, TOK, pairs, epochs=30, lr=1e-2)
    assert last < first / 4
    assert sample(model, TOK, ["7+1=", "2+2="], k=1, temperature=0.0, max_new_tokens=3) == [["8"], ["4"]]
    with pytest.raises(DataError, match="block_size"):
        finetune(model, TOK, [("1" * 20, "2")])
    with pytest.raises(DataError):
        finetune(model, TOK, [])


# ---------------------------------------------------------------------------------------------- collapse


def real_tokens() -> torch.Tensor:
    text = "the cat sat on the mat. a dog ran in the park. " * 12
    return torch.tensor(TOK.encode(text))


def test_collapse_reports_every_round_with_the_real_share():
    tokens = real_tokens()  # 576 tokens: 33 blocks of 17, 3 held out, 30 to train on
    kwargs = dict(block_size=16, blocks_per_round=10, pretrain_epochs=2, lr=3e-3, batch_size=8,
                  eval_samples=6, seed=0)  # fmt: skip
    history = collapse(lambda: tiny_gpt(4), tokens, rounds=2, real_fraction=0.3, **kwargs)
    assert [h["round"] for h in history] == [0, 1, 2]
    assert history[0]["real_blocks"] == 60 and history[0]["synthetic_blocks"] == 0  # 30 blocks, 2 epochs
    for h in history[1:]:
        assert h["real_blocks"] == 3 and h["synthetic_blocks"] == 7
    for h in history:
        assert math.isfinite(h["perplexity"]) and 1.0 < h["perplexity"] < 300
        assert 0.0 < h["entropy"] <= 8.0
        assert all(0.0 < h[f"distinct_{n}"] <= 1.0 for n in (1, 2, 3))
        assert h["distinct_1"] <= h["distinct_2"] <= h["distinct_3"]
    again = collapse(lambda: tiny_gpt(4), tokens, rounds=1, real_fraction=0.3, **kwargs)
    assert again == history[:2]  # seeded
    only_real = collapse(lambda: tiny_gpt(4), tokens, rounds=1, real_fraction=1.0, fresh=True, **kwargs)
    assert only_real[1]["real_blocks"] == 10 and only_real[1]["synthetic_blocks"] == 0


def test_collapse_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="real_fraction"):
        collapse(tiny_gpt, real_tokens(), rounds=1, real_fraction=1.5, block_size=16)
    with pytest.raises(ConfigError, match="rounds"):
        collapse(tiny_gpt, real_tokens(), rounds=0, real_fraction=0.5, block_size=16)
    with pytest.raises(DataError, match="need at least 2"):
        collapse(tiny_gpt, real_tokens()[:20], rounds=1, real_fraction=0.5, block_size=16)


def test_a_wrapped_hugging_face_model_samples_and_fine_tunes():
    transformers = pytest.importorskip("transformers")
    from lifelong.lm.causal_lm import CausalLM

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16,
    )  # fmt: skip
    model = CausalLM(transformers.LlamaForCausalLM(cfg))
    prompts = ["1+2=", "30+4="]
    out = sample(model, TOK, prompts, k=2, temperature=1.0, max_new_tokens=3, seed=5)
    assert out == sample(model, TOK, prompts, k=2, temperature=1.0, max_new_tokens=3, seed=5)
    assert [len(c) for c in out] == [2, 2]
    finetune(model, TOK, [("1+2=", "3"), ("30+4=", "34")], epochs=40, lr=1e-2)
    assert sample(model, TOK, prompts, k=1, temperature=0.0, max_new_tokens=3) == [["3"], ["34"]]
    with pytest.raises(DataError, match="the model sees 16"):
        finetune(model, TOK, [("1" * 16, "2")])


def test_self_improve_refuses_answers_longer_than_the_context():
    with pytest.raises(ConfigError, match="context of 16"):
        self_improve(tiny_gpt(), TOK, ["123+456="], verify_arithmetic, eval_prompts=["1"], max_new_tokens=9)
