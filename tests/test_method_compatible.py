"""The compatibility-aware method `compatible` (focal distillation, Positive-Congruent Training): the previous
version is the model as each experience began (also when a finished run is continued), the term weights each
sample by whether that version got it right (each class, each task head, each token), it is zero where the
old version is not right (class-incremental without replay), with replay it lowers negative flips for every
seed on class- and domain-incremental streams, and a run killed mid-experience resumes to bit-identical
weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn.utils import parameters_to_vector as flat

from lifelong import datasets
from lifelong.errors import ConfigError
from lifelong.evaluation.flips import flip_report, predictions
from lifelong.learner import Learner
from lifelong.methods import METHODS, Replay, build_method
from lifelong.methods.base import Context, Method
from lifelong.methods.compatible import Compatible, focal_terms
from lifelong.methods.lwf import distillation
from lifelong.models import MLP, TinyGPT
from lifelong.objectives import objective_for
from lifelong.state import split_state
from lifelong.streams import class_incremental, permuted, subsample, task_incremental
from lifelong.streams.experience import Split, Stream


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on a shared 2-core machine: a second torch thread only waits for the other core
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="module")
def class_stream(digits) -> Stream:
    return class_incremental(digits, experiences=3)


def new_model(stream: Stream, seed: int = 0, hidden: int = 32) -> MLP:
    torch.manual_seed(seed)
    return MLP(stream.input_shape, stream.num_classes, hidden=[hidden])


def ctx_at(model, stream: Stream, i: int) -> Context:
    return Context(model, objective_for(stream), None, stream[i], i, list(stream.experiences[: i + 1]))


def moved(model, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher/T) || softmax(student/T)) per row (the textbook form)."""
    return temperature**2 * F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="none",
    ).sum(dim=-1)


def mixed_batch(stream: Stream, i: int, n: int = 30) -> Split:
    """Current samples and earlier experiences' samples, as a replaying batch holds them."""
    parts = [stream[j].train.subset(torch.arange(n // (i + 1))) for j in range(i + 1)]
    return Split.concat(parts)


# --- the term -----------------------------------------------------------------------------------------------


def test_focal_terms_are_lwf_distillation_per_sample():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    for temperature in (1.0, 2.0):
        torch.testing.assert_close(focal_terms(s, t, temperature).mean(), distillation(s, t, temperature))
        torch.testing.assert_close(focal_terms(s, t, temperature), kl_rows(s, t, temperature))
    torch.testing.assert_close(focal_terms(s, t, 1.0, "logit"), 0.5 * ((s - t) ** 2).sum(dim=1))


@pytest.mark.parametrize("mode, temperature", [("kl", 1.0), ("kl", 2.0), ("logit", 1.0)])
def test_single_head_weights_each_sample_by_whether_the_old_version_was_right(
    class_stream, mode, temperature
):
    stream = class_stream
    model = new_model(stream)
    method = Compatible(strength=1.5, alpha=0.2, beta=2.0, temperature=temperature, mode=mode)
    ctx = ctx_at(model, stream, 2)
    method.start(ctx)
    batch = mixed_batch(stream, 2)
    with torch.no_grad():
        old = model(batch.x)
    moved(model)
    out = model(batch.x)
    loss = method.loss(ctx, batch, out)
    assert loss is not None
    right = (old.argmax(dim=1) == batch.y).float()
    assert 0 < right.sum() < len(batch)  # both kinds of sample are in the batch
    per = kl_rows(out, old, temperature) if mode == "kl" else 0.5 * ((out - old) ** 2).sum(dim=1)
    torch.testing.assert_close(loss, 1.5 * ((0.2 + 2.0 * right) * per).mean())


def test_with_alpha_zero_only_samples_the_old_version_got_right_pull(class_stream):
    stream = class_stream
    model = new_model(stream)
    method = Compatible()
    ctx = ctx_at(model, stream, 1)
    method.start(ctx)
    batch = mixed_batch(stream, 1)
    with torch.no_grad():
        right = model(batch.x).argmax(dim=1) == batch.y
    moved(model)
    out = model(batch.x).detach().requires_grad_(True)
    loss = method.loss(ctx, batch, out)
    assert loss is not None
    loss.backward()
    pulled = out.grad.abs().sum(dim=1) > 0  # type: ignore[union-attr]
    assert torch.equal(pulled, right)


def test_class_incremental_without_replay_the_old_version_is_never_right_so_nothing_changes(class_stream):
    # the term needs old samples: the old version would have to predict a class it never trained on, so on
    # new classes alone it is zero here, and training equals naive fine-tuning
    train = {"epochs": 1, "batch_size": 32, "lr": 0.05}
    naive = new_model(class_stream)
    Learner(naive, [], progress=False, **train).run(class_stream)
    compatible = new_model(class_stream)
    Learner(compatible, [Compatible()], progress=False, **train).run(class_stream)
    assert torch.equal(flat(naive.parameters()), flat(compatible.parameters()))


def test_task_incremental_compares_each_samples_own_head(digits):
    stream = task_incremental(digits, 3)
    model = new_model(stream)
    method = Compatible(alpha=0.5)
    ctx = ctx_at(model, stream, 2)
    method.start(ctx)
    batch = mixed_batch(stream, 2)
    objective = ctx.objective
    with torch.no_grad():
        raw_old = model(batch.x)
    moved(model)
    raw = model(batch.x)
    raw.retain_grad()
    out = raw + objective._mask[batch.t]  # the loop's masked outputs
    loss = method.loss(ctx, batch, out)
    assert loss is not None and torch.isfinite(loss)
    expected = []
    for i in range(len(batch)):
        head = stream.task_classes[int(batch.t[i])]  # type: ignore[index]
        old_i, new_i = raw_old[i, head], raw[i, head]
        right = float(head[int(old_i.argmax())] == int(batch.y[i]))
        expected.append((0.5 + right) * kl_rows(new_i.detach(), old_i, 1.0))
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    loss.backward()
    grad = raw.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    for i in range(len(batch)):  # no pull outside a sample's own head
        others = [c for c in range(10) if c not in stream.task_classes[int(batch.t[i])]]  # type: ignore[index]
        assert bool((grad[i, others] == 0).all())


def test_language_modelling_weights_each_token_by_the_old_top_token():
    from lifelong.datasets.base import TextCorpus
    from lifelong.streams.text import text_domains

    text = text_domains(TextCorpus("toy", {"a": ["abcd " * 60], "b": ["wxyz " * 60]}), block_size=8)
    torch.manual_seed(0)
    gpt = TinyGPT(256, 8, n_layer=1, n_head=2, n_embd=16)
    # train a little on "a", so that the old version is right on some tokens
    Learner(gpt, [], progress=False, epochs=3, lr=0.05, optimizer="adam", batch_size=8).run(
        Stream(text.name, [text[0]], text.kind, text.num_classes, text.input_shape)
    )
    method = Compatible(beta=3.0, temperature=2.0)
    ctx = ctx_at(gpt, text, 1)
    method.start(ctx)
    batch = Split.concat([text[0].train.subset(torch.arange(4)), text[1].train.subset(torch.arange(4))])
    with torch.no_grad():
        old = gpt(batch.x)
    moved(gpt, 0.05)
    out = gpt(batch.x)
    right = (old.argmax(dim=-1) == batch.y).float()  # [B, T]
    assert 0 < right.sum() < right.numel()
    expected = (3.0 * right * kl_rows(out, old, 2.0)).mean()  # mean over sequences and positions
    torch.testing.assert_close(method.loss(ctx, batch, out), expected)


def test_no_previous_version_during_the_first_experience(class_stream):
    model = new_model(class_stream)
    method = Compatible()
    ctx = ctx_at(model, class_stream, 0)
    method.start(ctx)
    assert method.previous is None and method.state_dict() == {}
    assert method.loss(ctx, class_stream[0].train, model(class_stream[0].train.x)) is None


def test_the_previous_version_is_frozen_and_costs_one_copy_of_the_weights(class_stream):
    model = new_model(class_stream)
    method = Compatible()
    ctx = ctx_at(model, class_stream, 1)
    method.start(ctx)
    moved(model)
    model.train()
    x = class_stream[1].train.x[:8]
    old = method.previous_outputs(ctx, x, None)
    assert not old.requires_grad and model.training
    assert not torch.equal(old, model(x))
    frozen = method._previous_model
    assert frozen is not None
    stored = {t.data_ptr() for t in method.previous.values()}  # type: ignore[union-attr]
    assert all(p.data_ptr() in stored for p in frozen.parameters())  # shares the state's tensors


# --- it lowers negative flips -------------------------------------------------------------------------------


def mean_flips(stream: Stream, compatible: bool) -> tuple[list[float], float]:
    """Per seed (3), the mean negative flip rate over the updates (the model after k-1 against the model
    after k, on test sets 0..k-1: the previous version's users), and the mean final accuracy, with replay."""
    nfr, acc = [], []
    for seed in range(3):
        versions = Versions()
        methods = [Replay(60, seed=seed), *([Compatible()] if compatible else []), versions]
        model = new_model(stream, seed, hidden=100)
        results = Learner(model, methods, progress=False, seed=seed, epochs=3, lr=0.05).run(stream)
        rates = []
        for k in range(1, len(stream)):
            users = Split.concat(stream.test_sets[:k])
            old, new = versions.after[k - 1], versions.after[k][: len(users)]
            rates.append(flip_report(old, new, users.y)["negative_flip_rate"])
        nfr.append(sum(rates) / len(rates))
        acc.append(results.summary["acc"])
    return nfr, sum(acc) / len(acc)


class Versions(Method):
    """Predictions on the test sets seen so far, after each experience."""

    name = "test_versions"

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def end(self, ctx: Context) -> None:
        tests = Split.concat([e.test for e in ctx.seen])  # tests 0..k: the first ones are tests 0..k-1
        self.after.append(predictions(ctx.model, tests, objective=ctx.objective))


@pytest.mark.parametrize("scenario", ["class_incremental", "permuted"])
def test_with_replay_it_lowers_negative_flips_for_every_seed(digits, scenario):
    ds = subsample(digits, 1000, 50)
    stream = class_incremental(ds, 3) if scenario == "class_incremental" else permuted(ds, 3)
    replay, replay_acc = mean_flips(stream, compatible=False)
    compatible, compatible_acc = mean_flips(stream, compatible=True)
    assert min(replay) > 0.1  # replay alone still flips many predictions here
    assert all(c < r for c, r in zip(compatible, replay, strict=True))
    assert sum(compatible) < 0.85 * sum(replay)  # measured: -49 % (class-IL), -27 % (permuted)
    assert compatible_acc > replay_acc  # and it does not pay for it with accuracy


def test_it_composes_with_replay_and_is_registered(class_stream):
    results = Learner(
        new_model(class_stream), [Replay(60, seed=0), Compatible()], progress=False, epochs=1, lr=0.05
    ).run(class_stream)
    assert results.method == "replay+compatible"
    assert results.config["method"][1] == {
        "name": "compatible", "strength": 1.0, "alpha": 0.0, "beta": 1.0, "temperature": 1.0, "mode": "kl",
    }  # fmt: skip
    assert METHODS["compatible"] is Compatible
    assert build_method("compatible", beta=2.0).beta == 2.0


# --- options, state and resume ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        ({"strength": -1.0}, "strength must be at least 0"),
        ({"alpha": -0.1}, "alpha must be at least 0"),
        ({"beta": -1.0}, "beta must be at least 0"),
        ({"alpha": 0.0, "beta": 0.0}, "both 0"),
        ({"temperature": 0.0}, "temperature must be greater than 0"),
        ({"mode": "l2"}, "mode must be 'kl' or 'logit'"),
        ({"mode": "logit", "temperature": 2.0}, "applies to mode 'kl' only"),
    ],
)
def test_options_are_checked(options, match):
    with pytest.raises(ConfigError, match=match):
        Compatible(**options)
    assert not (Compatible.alone or Compatible.rehearsal or Compatible.selects_trainable)


def test_hot_restarts_are_refused_before_anything_is_written(class_stream, tmp_path):
    model = new_model(class_stream)
    learner = Learner(
        model, [Compatible()], progress=False, run_dir=tmp_path / "run", scheduler="wsd", continue_from="hot"
    )
    with pytest.raises(ConfigError, match="continue_from 'cooled'"):
        learner.run(class_stream)
    assert not (tmp_path / "run").exists()


def test_state_round_trip(class_stream):
    model = new_model(class_stream)
    method = Compatible(alpha=0.1)
    ctx = ctx_at(model, class_stream, 1)
    method.start(ctx)
    tensors, meta = split_state(method.state_dict())
    restored = Compatible(alpha=0.1)
    restored.load_state_dict({**meta, **st_load(st_save(tensors))})
    assert restored.previous is not None and method.previous is not None
    assert all(torch.equal(restored.previous[k], v) for k, v in method.previous.items())
    moved(model)
    batch = mixed_batch(class_stream, 1)
    out = model(batch.x)
    assert torch.equal(method.loss(ctx, batch, out), restored.loss(ctx, batch, out))  # type: ignore[arg-type]


def crashing(after: int, base: type[Compatible] = Compatible) -> type[Compatible]:
    class Crashing(base):  # type: ignore[valid-type, misc]
        def start(self, ctx):
            super().start(ctx)
            self.began = ctx.step

        def batch(self, ctx, batch):
            if ctx.index == 2 and ctx.step == self.began + after:
                raise KeyboardInterrupt("killed")
            return batch

    return Crashing


def test_killed_mid_experience_resumes_bit_exactly(digits, tmp_path: Path):
    stream = class_incremental(subsample(digits, 40, 10), 3)
    train = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "checkpoint_every": 4}
    unbroken = new_model(stream, hidden=16)
    Learner(unbroken, [Replay(30, seed=0), Compatible(alpha=0.1)], progress=False, **train).run(stream)
    with pytest.raises(KeyboardInterrupt):
        Learner(
            new_model(stream, hidden=16), [Replay(30, seed=0), crashing(6)(alpha=0.1)], run_dir=tmp_path,
            progress=False, **train,
        ).run(stream)  # fmt: skip
    resumed = new_model(stream, seed=99, hidden=16)
    Learner(
        resumed, [Replay(30, seed=0), Compatible(alpha=0.1)], run_dir=tmp_path, progress=False, **train
    ).run(stream, resume=True)
    assert torch.equal(flat(resumed.parameters()), flat(unbroken.parameters()))

    # the previous version lives in the state: a method that forgets it resumes to other weights
    class Forgetful(Compatible):
        def state_dict(self):
            return {}

    run_dir = tmp_path / "forgetful"
    with pytest.raises(KeyboardInterrupt):
        Learner(
            new_model(stream, hidden=16), [Replay(30, seed=0), crashing(6, Forgetful)(alpha=0.1)],
            run_dir=run_dir, progress=False, **train,
        ).run(stream)  # fmt: skip
    again = new_model(stream, seed=99, hidden=16)
    Learner(
        again, [Replay(30, seed=0), Forgetful(alpha=0.1)], run_dir=run_dir, progress=False, **train
    ).run(stream, resume=True)
    assert not torch.equal(flat(again.parameters()), flat(unbroken.parameters()))


def test_a_continued_run_distils_from_the_model_the_finished_run_ended_with(digits, tmp_path: Path):
    # `lifelong continue` / a store update: the previous version is the model users had, the final one
    full = class_incremental(subsample(digits, 40, 10), 3)
    first = dataclasses.replace(full, experiences=full.experiences[:2])
    train = {"epochs": 1, "batch_size": 16, "lr": 0.05}

    class Seen(Compatible):
        snapshots: list[dict[str, torch.Tensor]] = []

        def start(self, ctx):
            super().start(ctx)
            if self.previous is not None:
                Seen.snapshots.append({k: v.clone() for k, v in self.previous.items()})

    model = new_model(full, hidden=16)
    Learner(model, [Replay(30, seed=0), Seen()], run_dir=tmp_path, progress=False, **train).run(first)
    finished = {k: v.clone() for k, v in model.state_dict().items()}
    Seen.snapshots.clear()
    fresh = new_model(full, seed=5, hidden=16)  # as `lifelong continue` builds it: weights come from the run
    learner = Learner(fresh, [Replay(30, seed=0), Seen()], run_dir=tmp_path, progress=False, **train)
    learner.run(full, extend=True)
    assert len(Seen.snapshots) == 1
    assert all(torch.equal(Seen.snapshots[0][k], finished[k]) for k in finished)
