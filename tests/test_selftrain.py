"""Confidence scores, selection policies and pseudo-label diagnostics (`lifelong.selftrain`), each on
hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.selftrain import (
    HeadEnsemble,
    agreement,
    class_balanced,
    class_distribution,
    confidence_of,
    coverage,
    ece,
    flexmatch,
    precision,
    reliability,
    select,
    threshold,
    top_share,
)
from lifelong.selftrain.confidence import check_dropout, mc_dropout_confidence
from lifelong.selftrain.diagnostics import summary
from lifelong.selftrain.selection import curriculum_share, flexmatch_thresholds

# --- confidence --------------------------------------------------------------------------------------------


def test_softmax_margin_and_entropy_confidence_on_known_distributions():
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    logits = probs.clamp_min(1e-30).log()
    assert torch.allclose(confidence_of("softmax", logits), torch.tensor([0.7, 1 / 3, 1.0]), atol=1e-6)
    assert torch.allclose(confidence_of("margin", logits), torch.tensor([0.5, 0.0, 1.0]), atol=1e-6)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    expected = torch.tensor([1 - h / math.log(3), 0.0, 1.0])
    assert torch.allclose(confidence_of("entropy", logits), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="mc_dropout and tsimilarity need the model"):
        confidence_of("tsimilarity", logits)


def test_tsimilarity_is_the_mean_pairwise_agreement_of_the_heads():
    p = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]], [[0.2, 0.8]]])  # 3 heads, 1 sample
    # pairs: (0,1) 0.5, (0,2) 0.5, (1,2) 0.2 -> mean 0.4
    assert torch.allclose(agreement(p), torch.tensor([0.4]))
    heads = HeadEnsemble(6, 4, heads=4, seed=3)
    features = torch.randn(5, 6)
    probs = F.softmax(heads(features), dim=-1)  # [4, 5, 4]
    by_hand = torch.stack(
        [
            torch.stack([probs[i, n] @ probs[j, n] for i in range(4) for j in range(4) if i != j]).mean()
            for n in range(5)
        ]
    )
    assert torch.allclose(heads.confidence(features), by_hand, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 2 heads"):
        HeadEnsemble(6, 4, heads=1)


def test_the_diversity_term_makes_heads_disagree_on_unlabeled_data():
    g = torch.Generator().manual_seed(0)
    labelled, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    far = torch.randn(32, 4, generator=g) * 5 + 10  # unlabeled data far from the labelled data
    plain, diverse = HeadEnsemble(4, 3, heads=4, seed=1), HeadEnsemble(4, 3, heads=4, seed=1)
    for _ in range(50):
        plain.fit_step(labelled, y, far, lr=0.1, diversity=0.0)
        diverse.fit_step(labelled, y, far, lr=0.1, diversity=1.0)
    assert diverse.confidence(far).mean() < plain.confidence(far).mean()


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_mc_dropout_averages_stochastic_passes_leaves_the_global_rng_alone_and_needs_dropout():
    torch.manual_seed(0)
    model = WithDropout().eval()
    x = torch.randn(8, 4)
    state = torch.get_rng_state()
    conf, probs = mc_dropout_confidence(model, x, passes=6, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    again, _ = mc_dropout_confidence(model, x, passes=6, seed=1)
    assert torch.equal(conf, again)
    assert not model.training and not model.features[2].training  # modes restored
    torch.manual_seed(1)  # the same passes by hand
    model.features[2].train()
    by_hand = torch.stack([F.softmax(model(x), -1) for _ in range(6)])
    model.features[2].eval()
    assert torch.allclose(conf, by_hand.max(-1).values.mean(0)) and torch.allclose(probs, by_hand.mean(0))
    deterministic = mc_dropout_confidence(model, x, passes=1, seed=2)[0]
    assert not torch.equal(deterministic, confidence_of("softmax", model(x)))  # dropout was active
    with pytest.raises(ConfigError, match="needs a model with a Dropout module"):
        check_dropout(nn.Linear(4, 3), "pseudo_label")


# --- selection ---------------------------------------------------------------------------------------------


def test_threshold_selects_exactly_the_samples_at_or_above_it():
    conf = torch.tensor([0.95, 0.94, 1.0, 0.0])
    assert threshold(conf, 0.95).tolist() == [True, False, True, False]


def test_topk_and_curriculum_select_the_most_confident_share_growing_with_the_round():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0])
    assert top_share(conf, 0.3).nonzero().squeeze(1).tolist() == [1, 3, 5]
    pred = torch.zeros(10, dtype=torch.long)
    assert curriculum_share(1, 0.2) == 0.2 and curriculum_share(7, 0.2) == 1.0
    for r, expected in [(1, [1, 5]), (2, [1, 3, 5, 7]), (5, list(range(10)))]:
        mask = select("curriculum", conf, pred, t=0.0, share=0.2, round=r)
        assert mask.nonzero().squeeze(1).tolist() == expected
    ties = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert top_share(ties, 0.5).tolist() == [True, True, False, False]  # ties: earlier first


def test_class_balanced_takes_the_same_count_from_every_predicted_class():
    conf = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.5, 0.995, 0.97, 0.99])
    pred = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    mask = class_balanced(conf, pred, 0.9)
    # above 0.9: class 0 has 4, class 1 has 2, class 2 has 1 -> one each, the most confident
    assert mask.nonzero().squeeze(1).tolist() == [0, 5, 7]
    assert torch.bincount(pred[mask]).tolist() == [1, 1, 1]
    assert not class_balanced(conf, pred, 0.999).any()


def test_flexmatch_lowers_the_threshold_of_classes_with_few_confident_predictions():
    counts = torch.tensor([8.0, 4.0, 0.0])
    sigma = torch.tensor([1.0, 0.5, 0.0])
    assert torch.allclose(flexmatch_thresholds(0.9, counts), 0.9 * sigma / (2 - sigma))
    # warm-up: many samples without a confident prediction yet scale sigma down
    assert torch.allclose(flexmatch_thresholds(0.9, counts, unused=16), 0.9 * (sigma / 2) / (2 - sigma / 2))
    conf = torch.tensor([0.85, 0.85, 0.85, 0.05])
    pred = torch.tensor([0, 1, 2, 2])
    # thresholds 0.9, 0.3, 0.0
    assert flexmatch(conf, pred, 0.9, counts).tolist() == [False, True, True, True]
    assert select("flexmatch", conf, pred, t=0.9, counts=counts).tolist() == [False, True, True, True]
    with pytest.raises(ConfigError, match="unknown selection"):
        select("best", conf, pred, t=0.9)


# --- diagnostics -------------------------------------------------------------------------------------------


def test_precision_and_coverage_against_truth_leave_out_samples_without_truth():
    pseudo = torch.tensor([0, 1, 2, 2, 1, 0])
    truth = torch.tensor([0, 1, 1, -1, 1, 2])
    selected = torch.tensor([True, True, True, True, False, False])
    # selected with truth: 0, 1, 2 -> right: 0, 1 -> 2/3; truth known for 5 samples, 3 of them selected
    assert precision(pseudo, truth, selected) == pytest.approx(2 / 3)
    assert coverage(selected, truth) == pytest.approx(3 / 5)
    assert precision(pseudo, truth, torch.zeros(6, dtype=torch.bool)) is None
    assert coverage(selected, torch.full((6,), -1)) is None


def test_class_distributions_of_pseudo_labels_and_truth():
    assert class_distribution(torch.tensor([0, 0, 2, -1]), 3) == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert class_distribution(torch.tensor([-1]), 2) == [0.0, 0.0]


def test_ece_and_the_reliability_diagram_on_a_hand_made_case():
    conf = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55, 0.55, 1.0])
    correct = torch.tensor([True, True, True, False, True, False, True])
    bins = reliability(conf, correct)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 7
    top = bins[14]  # [14/15, 1]: the four 0.95 and the 1.0
    assert top["count"] == 5 and top["accuracy"] == pytest.approx(0.8)
    assert top["confidence"] == pytest.approx((4 * 0.95 + 1.0) / 5, abs=1e-6)
    middle = bins[8]  # [8/15, 9/15) holds 0.55
    assert middle["count"] == 2 and middle["accuracy"] == 0.5
    assert bins[0]["count"] == 0 and bins[0]["accuracy"] is None
    expected = 5 / 7 * abs(0.8 - 0.96) + 2 / 7 * abs(0.5 - 0.55)
    assert ece(conf, correct) == pytest.approx(expected, abs=1e-6)
    assert ece(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) is None


def test_summary_without_truth_gives_none_for_what_needs_it():
    conf, pseudo = torch.tensor([0.9, 0.2]), torch.tensor([1, 0])
    selected = conf >= 0.5
    out = summary(conf, pseudo, selected, None, 2)
    assert out["precision"] is None and out["coverage"] is None and out["ece"] is None
    assert out["class_distribution"] == {"pseudo": [0.0, 1.0], "true": None} and out["selected"] == 1
    out = summary(conf, pseudo, selected, torch.tensor([1, 1]), 2)
    assert out["precision"] == 1.0 and out["coverage"] == 0.5 and out["class_distribution"]["true"] == [0, 1]
