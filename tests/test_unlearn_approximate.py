"""Approximate unlearning (NegGrad+, SCRUB) and the audit (accuracies, membership-inference AUC).

A small classifier memorises a forget set whose labels are noise (only memorisation can fit them), so what it
"knows" of that set is visible: unlearning must bring the forget accuracy down while the retain accuracy
stays. Also: determinism, language models, the AUC against scikit-learn's, bad input, divergence, and the
Python examples of docs/unlearning.md.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.errors import ConfigError, DataError, TrainingDivergedError
from lifelong.models import MLP
from lifelong.streams.experience import Split
from lifelong.unlearn import audit, rank_auc, unlearn
from lifelong.unlearn.audit import mia_auc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: a second thread only adds contention on the shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data() -> tuple[Split, Split, Split]:
    """(forget, retain, test): 4 Gaussian classes in 10 dimensions; the forget set's labels are shuffled."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 10, generator=g)

    def draw(n: int) -> Split:
        y = torch.randint(0, 4, (n,), generator=g)
        return Split(centers[y] + torch.randn(n, 10, generator=g), y)

    forget = draw(40)
    forget = Split(forget.x, (forget.y + 1 + torch.randint(0, 3, (40,), generator=g)) % 4)  # wrong labels
    return forget, draw(400), draw(400)


@pytest.fixture(scope="module")
def memorised() -> tuple[nn.Module, Split, Split, Split]:
    forget, retain, test = data()
    torch.manual_seed(0)
    model = MLP((10,), 4, hidden=(64, 64))
    everything = Split.concat([forget, retain])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):  # full batch
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(everything.x), everything.y).backward()
        optimizer.step()
    return model, forget, retain, test


def test_the_model_memorised_the_forget_set(memorised):
    model, forget, retain, test = memorised
    before = audit(model, forget, retain, test)
    assert before["forget_accuracy"] == 1.0 and before["retain_accuracy"] > 0.95  # wrong labels fitted
    assert before["forget_loss"] < 0.01 < before["test_loss"]
    assert before["forget_size"] == 40 and before["mia_samples"] == 40
    assert audit(model, forget, retain, test) == before  # deterministic


@pytest.mark.parametrize("method", ["neggrad+", "scrub"])
def test_unlearning_forgets_and_keeps_the_rest(memorised, method):
    model, forget, retain, test = memorised
    model = copy.deepcopy(model)
    before = audit(model, forget, retain, test)
    report = unlearn(model, forget, retain, method=method, steps=150, lr=0.02, batch_size=32, seed=0)
    after = audit(model, forget, retain, test)
    assert report["method"] == method and report["steps"] == 150 and report["seconds"] > 0
    assert after["forget_accuracy"] < 0.35, after  # no better than the wrong labels' chance
    assert after["retain_accuracy"] > before["retain_accuracy"] - 0.05, after
    assert after["test_accuracy"] > before["test_accuracy"] - 0.05, after
    assert after["forget_loss"] > 1.0, after


def test_the_same_seed_gives_the_same_model(memorised):
    model, forget, retain, _ = memorised
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = unlearn(a, forget, retain, method="scrub", steps=20, seed=3)
    rb = unlearn(b, forget, retain, method="scrub", steps=20, seed=3)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}


def test_neggrad_plus_forget_term_is_clipped(memorised):
    model, forget, retain, _ = memorised
    model = copy.deepcopy(model)
    # a large weight on the ascent: without the clip the loss would run away
    report = unlearn(model, forget, retain, steps=100, lr=0.05, alpha=20.0, forget_clip=1.5)
    assert report["forget_clip"] == 1.5
    assert all(torch.isfinite(p).all() for p in model.parameters())


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.head = nn.Linear(32, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(x)))


def test_language_models(memorised):
    g = torch.Generator().manual_seed(0)

    def blocks(n: int) -> Split:
        x = torch.randint(0, 16, (n, 8), generator=g)
        return Split(x, (x + 1) % 16)  # next token: a learnable rule

    retain, test = blocks(64), blocks(32)
    forget = Split(retain.x[:8], torch.randint(0, 16, (8, 8), generator=g))  # noise targets: memorised
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    both = Split.concat([forget, retain])
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(both.x).flatten(0, 1), both.y.flatten()).backward()
        optimizer.step()
    before = audit(model, forget, retain, test, kind="language_modeling")
    report = unlearn(model, forget, retain, steps=60, lr=0.05, batch_size=8, kind="language_modeling")
    after = audit(model, forget, retain, test, kind="language_modeling")
    assert report["forget_loss_last"] > report["forget_loss_first"]
    assert after["forget_loss"] > before["forget_loss"]
    assert after["retain_accuracy"] > 0.9 and 0.0 <= after["mia_auc"] <= 1.0


def test_rank_auc_equals_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 50).astype(float), rng.integers(0, 4, 70).astype(float)  # many ties
    labels = np.concatenate([np.ones(50), np.zeros(70)])
    expected = sklearn_metrics.roc_auc_score(labels, np.concatenate([pos, neg]))
    assert rank_auc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert rank_auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    same = torch.linspace(0, 1, 30)
    assert mia_auc(same, same.clone())[0] == pytest.approx(0.5)
    assert mia_auc(torch.zeros(10), torch.ones(100)) == (1.0, 10)  # members: lower loss


def test_bad_input(memorised):
    model, forget, retain, test = memorised
    model = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="unknown unlearning method 'gradient'"):
        unlearn(model, forget, retain, method="gradient")
    with pytest.raises(DataError, match="`forget` must be a non-empty Split"):
        unlearn(model, forget.subset(torch.arange(0)), retain)
    with pytest.raises(ConfigError, match="steps must be a whole number"):
        unlearn(model, forget, retain, steps=0)
    with pytest.raises(ConfigError, match="kind must be one of"):
        audit(model, forget, retain, test, kind="regression")
    with pytest.raises(DataError, match="`test` must be a non-empty Split"):
        audit(model, forget, retain, torch.zeros(3))  # type: ignore[arg-type]


def test_divergence_restores_the_model(memorised):
    model, forget, retain, _ = memorised
    model = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TrainingDivergedError, match="restored to its state before unlearning"):
        unlearn(model, forget, retain, steps=5, lr=1e30)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_guide_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "unlearning.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/unlearning.md", "exec"), namespace)
