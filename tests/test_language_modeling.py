"""The tiny causal transformer trains through the same Learner loop as the classifiers, on a stream of text
domains, and the run produces a perplexity matrix whose summary reads in the perplexity direction."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lifelong.config import parse_config
from lifelong.datasets.text import load_fortunes
from lifelong.evaluation import metrics
from lifelong.experiment import run_config
from lifelong.learner import Learner
from lifelong.methods import Naive, Replay
from lifelong.models import TinyGPT
from lifelong.objectives import LanguageModeling
from lifelong.streams.text import group_domains, text_domains

VOCAB = 256  # byte tokens
BLOCK = 32
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 3e-3, "optimizer": "adam"}


@pytest.fixture(scope="module")
def stream():
    """Three fortune domains, two of them merged from small categories: English quips about logic, about
    animals and magic, then ASCII art (mostly spaces and punctuation, so training on it hurts the others)."""
    corpus = load_fortunes(categories=["goedel", "paradoxum", "pets", "magic", "ascii-art"])
    corpus = group_domains(corpus, {"logic": ["goedel", "paradoxum"], "creatures": ["pets", "magic"]})
    return text_domains(
        corpus, domains=["logic", "creatures", "ascii-art"], block_size=BLOCK, max_blocks_per_domain=120
    )


def train(stream, methods):
    torch.manual_seed(0)
    model = TinyGPT(VOCAB, BLOCK, n_layer=1, n_embd=32)
    return Learner(model, methods, progress=False, **TRAIN).run(stream)


@pytest.fixture(scope="module")
def naive(stream):
    return train(stream, [Naive()])


@pytest.fixture(scope="module")
def replay(stream):
    return train(stream, [Replay(memory=200, seed=0)])


def test_stream_is_language_modelling(stream):
    assert stream.kind == "language_modeling" and stream.num_classes == VOCAB
    assert stream.input_shape == (BLOCK,) and len(stream) == 3
    assert [e.domain for e in stream] == ["logic", "creatures", "ascii-art"]
    assert all(len(e.train) == 120 and len(e.test) >= 10 for e in stream)
    assert stream[0].train.x.dtype == torch.int64 and stream[0].train.y.shape == (120, BLOCK)


@pytest.mark.parametrize("which", ["naive", "replay"])
def test_perplexity_matrix(request, stream, which):
    results = request.getfixturevalue(which)
    assert results.metric == "perplexity"
    t = len(stream)
    assert len(results.matrix) == t and all(len(row) == t for row in results.matrix)
    for row in results.matrix:
        for value in row:
            assert isinstance(value, float) and math.isfinite(value) and value > 1.0
    # untrained: close to uniform over the 256 byte values
    assert all(128 < v < 512 for v in results.initial)
    # after training on experience 0 its perplexity is far below the untrained one
    assert results.matrix[0][0] < results.initial[0] / 3
    # every domain is learnt when it is current
    assert all(results.matrix[i][i] < results.initial[i] / 3 for i in range(t))
    assert results.method == which
    assert results.experience_names == ["logic", "creatures", "ascii-art"]


def test_summary_uses_the_perplexity_direction(naive):
    r, t = naive.matrix, len(naive.matrix)
    s = naive.summary
    # forgetting for a lower-is-better metric: how far each old domain got worse than its best
    expected = sum(r[-1][j] - min(r[i][j] for i in range(t - 1)) for j in range(t - 1)) / (t - 1)
    assert s["forgetting"] == pytest.approx(expected)
    assert s["bwt"] == pytest.approx(sum(r[-1][j] - r[j][j] for j in range(t - 1)) / (t - 1))
    assert s["acc"] == pytest.approx(sum(r[-1]) / t)
    assert s["plasticity"] == pytest.approx(sum(r[i][i] for i in range(t)) / t)
    assert s == metrics.summary(r, naive.initial, higher_is_better=False)
    # ASCII art makes plain fine-tuning worse on the English domains: perplexity up, forgetting positive
    assert r[2][0] > r[1][0] and r[2][1] > r[1][1]
    assert s["forgetting"] > 0 and s["bwt"] > 0
    # under the accuracy convention the same matrix would read as "no forgetting": the direction matters
    assert metrics.forgetting(r, higher_is_better=True) < 0
    assert s["fwt"] is not None and s["fwt"] < 0  # any training beats the untrained model on unseen text


def test_forgetting_is_zero_or_more_whenever_old_domains_got_worse():
    for matrix in (
        [[40.0, 90.0], [55.0, 30.0]],
        [[40.0, 90.0, 99.0], [41.0, 30.0, 95.0], [60.0, 33.0, 20.0]],
    ):
        assert metrics.forgetting(matrix, higher_is_better=False) > 0
    assert metrics.forgetting([[40.0, 90.0], [38.0, 30.0]], higher_is_better=False) < 0  # it improved


def test_replay_forgets_less_than_naive(naive, replay):
    assert replay.summary["forgetting"] < naive.summary["forgetting"]
    assert replay.summary["acc"] < naive.summary["acc"]  # lower mean perplexity after the last domain


def test_objective_is_language_modelling(stream):
    torch.manual_seed(0)
    model = TinyGPT(VOCAB, BLOCK, n_layer=1, n_embd=32)
    learner = Learner(model, [Naive()], progress=False, **{**TRAIN, "epochs": 1})
    config = learner.config(stream)
    assert config["stream"]["kind"] == "language_modeling"
    objective = LanguageModeling(VOCAB)
    split = stream[0].test
    ppl = objective.evaluate(model, split)
    with torch.no_grad():
        logits = model(split.x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), split.y.reshape(-1))
    assert ppl == pytest.approx(math.exp(float(loss)), rel=1e-4)  # exp of the mean token loss


def test_default_model_has_a_few_hundred_thousand_parameters():
    model = TinyGPT(VOCAB, 64)
    n = sum(p.numel() for p in model.parameters())
    assert 1e5 < n < 1e6
    assert model.head.weight is model.tok.weight  # tied, counted once
    assert model(torch.zeros(2, 64, dtype=torch.long)).shape == (2, 64, VOCAB)
    with pytest.raises(ValueError, match="exceeds the model's block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_yaml_config_runs_a_text_stream(tmp_path):
    cfg = parse_config(
        {
            "data": {"name": "fortunes"},
            "scenario": {
                "type": "domains",
                "domains": ["pets", "magic"],
                "block_size": BLOCK,
                "max_blocks_per_domain": 128,
            },
            "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32},
            "method": [{"name": "replay", "memory": 64}],
            "train": {**TRAIN, "eval_every": 4},
            "seed": 0,
        }
    )
    out = tmp_path / "run"
    results = run_config(cfg, out, progress=False)
    assert results.metric == "perplexity"
    assert len(results.matrix) == 2 and all(len(row) == 2 for row in results.matrix)
    assert all(math.isfinite(v) and v > 1.0 for row in results.matrix for v in row)
    assert results.matrix[0][0] < results.initial[0] / 2
    assert results.experience_names == ["pets", "magic"]
    assert results.summary == metrics.summary(results.matrix, results.initial, higher_is_better=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved["metric"] == "perplexity" and saved["matrix"] == results.matrix
    assert saved["config"]["model"] == {
        "name": "gpt",
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 32,
        "dropout": 0.0,
        "tokenizer": "bytes",
        "vocab_size": None,
    }
    # the stability gap follows the old domain while the new one trains; for perplexity "worse" is higher
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    during = [e["values"][0] for e in events if e["event"] == "eval" and e["experience"] == 1]
    assert during
    (gap,) = results.stability_gap
    assert gap["experience"] == 1 and gap["min"] == max(during) and gap["depth"] >= 0.0
    assert gap["depth"] == pytest.approx(max(0.0, gap["min"] - gap["before"]))
