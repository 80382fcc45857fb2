"""The self-training methods (pseudo_label, fixmatch, mean_teacher): they refuse streams without unlabeled
data and bad options before anything is written, their loss is what their papers say on a hand-made batch,
they report pseudo-label diagnostics per experience (and round) into results.json, compose with replay, and
a run killed mid-experience resumes bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong import datasets
from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.learner import Learner
from lifelong.methods import FixMatch, MeanTeacher, PseudoLabel, build_method
from lifelong.methods.base import Context
from lifelong.methods.fixmatch import strong_view, weak_view
from lifelong.methods.pseudo_label import mix
from lifelong.models import MLP
from lifelong.objectives import objective_for
from lifelong.selftrain import diagnostics
from lifelong.streams import class_incremental, subsample
from lifelong.streams.labels import hold_back_labels

TRAIN = {"epochs": 2, "batch_size": 16, "lr": 0.1, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def digits():
    return subsample(datasets.load("digits"), 24, 8, seed=0)


@pytest.fixture(scope="module")
def stream(digits):
    return hold_back_labels(class_incremental(digits, 2), label_fraction=0.3, seed=0)


def mlp(stream, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(stream.input_shape, stream.num_classes, [16])


class DropoutMLP(nn.Module):
    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(16, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Plain(nn.Module):  # no `features` / `head`, no dropout
    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pseudo_label", "fixmatch", "mean_teacher"])
def test_a_stream_without_unlabeled_data_is_refused_before_anything_is_written(name, digits, tmp_path):
    stream = class_incremental(digits, 2)
    with pytest.raises(ConfigError, match="label_fraction or labels_per_class, or give files with empty"):
        Learner(mlp(stream), [build_method(name)], run_dir=tmp_path / "r", progress=False).run(stream)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["pseudo_label", "fixmatch"])
def test_a_threshold_outside_0_1_is_refused_in_python_and_in_configs(name):
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\], got 1.5"):
        build_method(name, threshold=1.5)
    raw = {
        "data": {"name": "digits"},
        "scenario": {"type": "class_incremental", "experiences": 2, "label_fraction": 0.2},
        "model": {"name": "mlp"},
        "method": [{"name": name, "threshold": -0.1}],
    }
    with pytest.raises(ConfigError, match="threshold"):
        parse_config(raw)


def test_unfit_models_and_options_are_refused_with_the_fix(stream, tmp_path):
    d = int(torch.tensor(stream.input_shape).prod())
    model = Plain(d, stream.num_classes)
    with pytest.raises(ConfigError, match="give your model a `features` module and a linear `head`"):
        Learner(model, [PseudoLabel(confidence="tsimilarity")], run_dir=tmp_path / "a", progress=False).run(
            stream
        )
    with pytest.raises(ConfigError, match="add dropout to the model"):
        Learner(
            mlp(stream), [PseudoLabel(confidence="mc_dropout")], run_dir=tmp_path / "b", progress=False
        ).run(stream)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="teacher 'iterative' only"):
        PseudoLabel(teacher="fixed", round_every=1)
    with pytest.raises(ConfigError, match="unknown confidence"):
        PseudoLabel(confidence="vibes")
    with pytest.raises(ConfigError, match="options of pseudo_label"):
        FixMatch(confidence="tsimilarity")


# --- the losses on a hand-made batch -----------------------------------------------------------------------


def context(stream, model) -> Context:
    objective = objective_for(stream)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Context(model, objective, optimizer, stream[0], 0, [stream[0]])


def test_pseudo_label_trains_on_the_teachers_confident_labels_of_a_seeded_draw(stream):
    model = mlp(stream)
    ctx = context(stream, model)
    batch = stream[0].train.subset(torch.arange(8))
    unlabeled = stream[0].unlabeled
    g = torch.Generator().manual_seed(mix(3, 0))  # the first draw
    x = unlabeled.x[torch.randint(len(unlabeled), (8,), generator=g)]
    with torch.no_grad():
        probs = F.softmax(model(x), -1)  # the fixed teacher is the model as the experience began
    conf, pred = probs.max(-1)
    t = float(conf.median())
    keep = conf >= t
    assert 0 < int(keep.sum()) < 8  # a case where the threshold matters
    for soft in (False, True):
        method = PseudoLabel(threshold=t, soft=soft, seed=3)
        method.check(stream, ctx.objective, [method])
        method.start(ctx)
        got = method.loss(ctx, batch, model(batch.x))
        if soft:
            expected = -(probs[keep] * F.log_softmax(model(x[keep]), -1)).sum() / 8
        else:
            expected = F.cross_entropy(model(x[keep]), pred[keep], reduction="sum") / 8
        assert got is not None and torch.allclose(got, expected)
        assert method.draws == 1


def test_fixmatch_labels_the_weak_view_and_trains_the_strong_view(stream):
    model = mlp(stream)
    ctx = context(stream, model)
    method = FixMatch(threshold=0.15, unlabeled_ratio=0.5, seed=1)
    method.check(stream, ctx.objective, [method])
    method.start(ctx)
    batch = stream[0].train.subset(torch.arange(8))
    unlabeled = stream[0].unlabeled
    x = unlabeled.x[torch.randint(len(unlabeled), (4,), generator=torch.Generator().manual_seed(mix(1, 0)))]
    g = torch.Generator().manual_seed(mix(1, 5, 1))
    weak, strong = weak_view(x, g), strong_view(x, g)
    with torch.no_grad():
        p = F.softmax(model(weak), -1)
    keep = p.max(-1).values >= 0.15
    expected = (F.cross_entropy(model(strong), p.argmax(-1), reduction="none") * keep).sum() / 4
    got = method.loss(ctx, batch, model(batch.x))
    assert got is not None and torch.allclose(got, expected, atol=1e-6)


def test_augmentations_keep_shapes_and_token_ids_and_are_seeded():
    images = torch.rand(4, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(strong_view(images, g1), strong_view(images, g2))
    assert weak_view(images, g1).shape == images.shape
    strong = strong_view(images, g1)
    assert (strong == 0).any()  # cutout
    tokens = torch.randint(100, 120, (4, 16))
    for view in (weak_view, strong_view):
        out = view(tokens, g1)
        assert out.dtype == tokens.dtype and set(out.unique().tolist()) <= set(tokens.unique().tolist())
    flat = torch.randn(16, 5)
    assert not torch.equal(weak_view(flat, g1), flat)


def test_mean_teacher_is_an_ema_of_the_student_and_pulls_softmax_toward_it(stream):
    model = mlp(stream)
    ctx = context(stream, model)
    method = MeanTeacher(decay=0.5, seed=2)
    method.check(stream, ctx.objective, [method])
    method.start(ctx)
    teacher0 = {k: v.clone() for k, v in method.teacher.items()}
    batch = stream[0].train.subset(torch.arange(8))
    method.loss(ctx, batch, model(batch.x))
    assert all(torch.equal(method.teacher[k], teacher0[k]) for k in teacher0)  # no step taken yet
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ctx.step = 1
    term = method.loss(ctx, batch, model(batch.x))
    for name, p in model.named_parameters():
        assert torch.allclose(method.teacher[name], 0.5 * teacher0[name] + 0.5 * p.detach())
    assert term is not None and term.item() > 0


# --- runs: reports, composition, rounds ---------------------------------------------------------------------


def test_fixmatch_reports_precision_coverage_and_ece_of_its_final_labels_into_results_json(stream, tmp_path):
    model = mlp(stream)
    results = Learner(model, [FixMatch(threshold=0.3)], run_dir=tmp_path, progress=False, **TRAIN).run(stream)
    entries = json.loads((tmp_path / "results.json").read_text())["pseudo_labels"]
    assert [e["experience"] for e in entries] == [0, 1]
    assert entries == results.to_dict()["pseudo_labels"]
    last = entries[-1]
    assert {"round", "precision", "coverage", "ece", "class_distribution", "reliability"} <= set(last)
    # recompute by hand: the final model labels the last experience's unlabeled data
    e = stream[-1]
    model.eval()
    with torch.no_grad():
        p = F.softmax(model(e.unlabeled.x), -1)
    conf, pred = p.max(-1)
    selected = conf >= 0.3
    assert last["precision"] == pytest.approx(diagnostics.precision(pred, e.unlabeled_truth, selected))
    assert last["coverage"] == pytest.approx(diagnostics.coverage(selected, e.unlabeled_truth))
    assert last["ece"] == pytest.approx(diagnostics.ece(conf, pred == e.unlabeled_truth), abs=1e-6)
    assert last["class_distribution"]["true"] == diagnostics.class_distribution(e.unlabeled_truth, 10)
    assert len(last["reliability"]) == 15 and last["round"] == 2


def test_iterative_rounds_are_reported_per_round_and_compose_with_replay(stream):
    method = PseudoLabel(teacher="iterative", round_every=1, selection="curriculum", share=0.5)
    results = Learner(mlp(stream), [build_method("replay", memory=20), method], progress=False, **TRAIN).run(
        stream
    )
    entries = results.to_dict()["pseudo_labels"]
    # 2 epochs, a refresh after the first: 2 rounds per experience, numbered over the run
    assert [[r["round"] for r in e["rounds"]] for e in entries] == [[1, 2], [3, 4]]
    assert all(e["round"] == e["rounds"][-1]["round"] and e["ece"] == e["rounds"][-1]["ece"] for e in entries)
    # curriculum: share min(1, round * 0.5) of the unlabeled samples
    for e in entries:
        for r in e["rounds"]:
            assert r["selected"] == pytest.approx(min(1.0, r["round"] * 0.5) * r["unlabeled"], abs=1)


def test_a_config_with_held_back_labels_and_self_training_parses():
    raw = {
        "data": {"name": "digits"},
        "scenario": {"type": "class_incremental", "experiences": 5, "label_fraction": 0.1},
        "model": {"name": "mlp"},
        "method": [
            {"name": "replay"},
            {"name": "pseudo_label", "confidence": "tsimilarity", "threshold": 0.9},
        ],
    }
    cfg = parse_config(raw)
    assert [m.name for m in cfg.methods] == ["replay", "pseudo_label"]
    with pytest.raises(ConfigError, match="round_every"):
        parse_config({**raw, "method": [{"name": "pseudo_label", "round_every": 2}]})


# --- kill and resume ---------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def kill_at(model: nn.Module, n: int):
    count = {"calls": 0}

    def hook(module, args):
        if module.training:
            count["calls"] += 1
            if count["calls"] == n:
                raise Killed

    return model.register_forward_pre_hook(hook)


CASES = {
    "tsimilarity_flexmatch_iterative": lambda: [
        PseudoLabel(confidence="tsimilarity", selection="flexmatch", teacher="iterative", round_every=1)
    ],
    "ema_soft_mc_dropout_floor": lambda: [
        PseudoLabel(
            teacher="ema", soft=True, confidence="mc_dropout", threshold=0.2, passes=2, labelled_floor=20
        )
    ],
    "fixmatch_flexmatch": lambda: [FixMatch(selection="flexmatch")],
    "mean_teacher_replay": lambda: [build_method("replay", memory=20), MeanTeacher(decay=0.9)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_killed_and_resumed_run_ends_bit_identical_with_the_same_reports(case, stream, tmp_path: Path):
    def model(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        d = int(torch.tensor(stream.input_shape).prod())
        return DropoutMLP(d, stream.num_classes) if "mc_dropout" in case else mlp(stream, seed)

    unbroken_model = model()
    unbroken = Learner(unbroken_model, CASES[case](), progress=False, **TRAIN).run(stream)
    broken = model()
    handle = kill_at(broken, 9)  # in the second experience, mid-epoch
    with pytest.raises(Killed):
        Learner(broken, CASES[case](), run_dir=tmp_path, progress=False, **TRAIN).run(stream)
    handle.remove()
    resumed_model = model(seed=99)
    resumed = Learner(resumed_model, CASES[case](), run_dir=tmp_path, progress=False, **TRAIN).run(
        stream, resume=True
    )
    assert resumed.matrix == unbroken.matrix
    assert resumed.to_dict()["pseudo_labels"] == unbroken.to_dict()["pseudo_labels"]
    for (name, a), (_, b) in zip(
        resumed_model.state_dict().items(), unbroken_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
