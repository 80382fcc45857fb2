"""Learning-rate schedules across experiences (`lifelong.schedules`) and the wsd "hot weights" option.

`lr_at` is checked against values computed by hand for every scheduler (warm-up, decay to `min_lr`, the
wsd cool-down), then against the LR the learner logs; `HotWeights` by a method that records the weights
the loop trains and evaluates; a run killed in the middle of a cool-down (wsd + hot, with and without
gradient accumulation) resumes to exactly the run that was never stopped.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.learner import Learner
from lifelong.methods.base import Context, Method
from lifelong.models.gpt import TinyGPT
from lifelong.objectives import LanguageModeling
from lifelong.schedules import HotWeights, cooldown_start, lr_at
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.training import TrainConfig

VOCAB, BLOCK = 32, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and bit-identical comparisons need the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lm_stream(experiences: int = 2, train_rows: int = 40, test_rows: int = 8, seed: int = 0) -> Stream:
    """Token blocks; experience i draws its tokens from its own slice of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    per = VOCAB // experiences

    def split(i: int, n: int) -> Split:
        spans = torch.randint(i * per, (i + 1) * per, (n, BLOCK + 1), generator=g)
        return Split(spans[:, :-1], spans[:, 1:])

    exps = [
        Experience(id=i, train=split(i, train_rows), test=split(i, test_rows), domain=f"d{i}")
        for i in range(experiences)
    ]
    return Stream("toy-lm", exps, "language_modeling", VOCAB, (BLOCK,))


def tiny_gpt(dropout: float = 0.0) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(VOCAB, BLOCK, n_layer=1, n_head=2, n_embd=16, dropout=dropout)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    out = [json.loads(line) for line in lines]
    return [{k: v for k, v in e.items() if k != "time"} for e in out if e["event"] == kind]


def final_checkpoint(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every safetensors file of the run's current checkpoint, by file name."""
    latest = json.loads((run_dir / "checkpoints" / "LATEST.json").read_text())
    folder = run_dir / "checkpoints" / latest["checkpoint"]
    return {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}


def lrs(train: TrainConfig, experience: int, total: int) -> list[float]:
    return [lr_at(train, experience, s, total) for s in range(total)]


# --- lr_at, by hand -----------------------------------------------------------------------------------------


def test_constant_holds_lr_and_warms_up_at_every_experience():
    assert lrs(TrainConfig(lr=0.3), 0, 3) == [0.3, 0.3, 0.3]
    warm = TrainConfig(lr=1.0, warmup_steps=2)
    assert lrs(warm, 0, 4) == [0.5, 1.0, 1.0, 1.0]
    assert lrs(warm, 3, 4) == [0.5, 1.0, 1.0, 1.0]


def test_cosine_decays_towards_min_lr_and_rewarms_at_every_experience():
    tr = TrainConfig(lr=1.0, min_lr=0.1, scheduler="cosine")
    # 0.1 + 0.45 * (1 + cos(pi * s / 5))
    assert lrs(tr, 0, 5) == pytest.approx([1.0, 0.914058, 0.689058, 0.410942, 0.185942], abs=1e-6)
    assert lr_at(tr, 0, 5, 5) == pytest.approx(0.1)  # the end of the decay is min_lr
    warm = TrainConfig(lr=1.0, min_lr=0.1, scheduler="cosine", warmup_steps=2)
    # warm-up (s + 1) / 2, then the cosine over the 4 steps after it
    expected = [0.5, 1.0, 1.0, 0.868198, 0.55, 0.231802]
    assert lrs(warm, 0, 6) == pytest.approx(expected, abs=1e-6)
    assert lrs(warm, 1, 6) == pytest.approx(expected, abs=1e-6)  # re-warm, re-decay
    assert lrs(warm, 2, 6) == pytest.approx(expected, abs=1e-6)


def test_linear_decays_in_equal_steps():
    tr = TrainConfig(lr=1.0, min_lr=0.2, scheduler="linear")
    assert lrs(tr, 0, 4) == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert lrs(tr, 1, 4) == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert lrs(TrainConfig(lr=1.0, scheduler="linear"), 0, 4) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    warm = TrainConfig(lr=1.0, min_lr=0.2, scheduler="linear", warmup_steps=1)
    assert lrs(warm, 2, 5) == pytest.approx([1.0, 1.0, 0.8, 0.6, 0.4])


def test_continue_warms_and_decays_once_then_stays_at_min_lr():
    tr = TrainConfig(lr=1.0, min_lr=0.1, scheduler="continue", warmup_steps=2)
    assert lrs(tr, 0, 6) == pytest.approx([0.5, 1.0, 1.0, 0.868198, 0.55, 0.231802], abs=1e-6)
    assert lrs(tr, 1, 6) == [0.1] * 6  # no re-warm-up, no second decay
    assert lrs(tr, 4, 3) == [0.1] * 3


def test_continue_with_min_lr_zero_is_refused():
    with pytest.raises(ValidationError, match="min_lr"):
        TrainConfig(lr=1.0, scheduler="continue")


def test_wsd_warms_once_holds_and_cools_down_over_the_last_share():
    tr = TrainConfig(lr=1.0, min_lr=0.1, scheduler="wsd", cooldown=0.5)
    assert lrs(tr, 0, 4) == pytest.approx([1.0, 1.0, 0.55, 0.1])
    warm = TrainConfig(lr=1.0, min_lr=0.1, scheduler="wsd", cooldown=0.25, warmup_steps=2)
    # ceil(0.25 * 10) = 3 cool-down steps, linear from lr to min_lr: 1 - 0.9 * k / 3
    cool = [0.7, 0.4, 0.1]
    assert lrs(warm, 0, 10) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, *cool])
    assert lrs(warm, 1, 10) == pytest.approx([1.0] * 7 + cool)  # warm up once, in the first experience
    assert lrs(warm, 5, 10) == pytest.approx([1.0] * 7 + cool)
    assert cooldown_start(warm, 10) == 7


def test_wsd_default_cooldown_is_a_tenth_and_at_least_one_step():
    tr = TrainConfig(lr=2.0, min_lr=0.5, scheduler="wsd")
    assert tr.cooldown_share == 0.1
    assert lrs(tr, 1, 20) == pytest.approx([2.0] * 18 + [1.25, 0.5])
    assert lrs(tr, 1, 3) == pytest.approx([2.0, 2.0, 0.5])  # ceil(0.3) = one step cools
    assert lrs(tr, 1, 1) == [0.5]


def test_wsd_cooldown_step_count_is_exact_for_decimal_shares():
    tr = TrainConfig(lr=1.0, scheduler="wsd", cooldown=0.07)
    assert cooldown_start(tr, 100) == 93


def test_lr_at_is_a_pure_function_of_the_position():
    configs = [
        TrainConfig(lr=1.0, min_lr=0.1, scheduler=kind, warmup_steps=w)
        for kind in ("constant", "cosine", "linear", "continue", "wsd")
        for w in (0, 3)
    ]
    positions = [
        (c, e, s, t) for c in range(len(configs)) for e in range(3) for t in (1, 7) for s in range(t)
    ]
    forward = {p: lr_at(configs[p[0]], *p[1:]) for p in positions}
    shuffled = positions[:]
    random.Random(0).shuffle(shuffled)
    backward = {p: lr_at(configs[p[0]], *p[1:]) for p in shuffled}
    assert forward == backward  # no hidden state: order of calls does not matter
    assert all(0.0 < v <= 1.0 for v in forward.values())
    with pytest.raises(ValidationError):  # the options cannot change under a running schedule
        configs[0].lr = 2.0  # type: ignore[misc]


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scheduler": "linear", "cooldown": 0.2}, "`cooldown` is an option of scheduler 'wsd', not 'lin"),
        ({"continue_from": "hot"}, "`continue_from` is an option of scheduler 'wsd', not 'constant'"),
        ({"lr": 0.01, "min_lr": 0.1, "scheduler": "cosine"}, r"`min_lr` \(0.1\) is above `lr` \(0.01\)"),
        ({"scheduler": "wsd", "cooldown": 1.5}, "less than or equal to 1"),
        ({"grad_accum": 0}, "greater than or equal to 1"),
    ],
)
def test_impossible_combinations_fail_with_the_key_named(options, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**options)
    with pytest.raises(ConfigError, match=f"invalid training option: .*{message}"):
        Learner(tiny_gpt(), **options)
    with pytest.raises(ConfigError, match=r"`train(\.\w+)?`: .*" + message):
        parse_config(
            {
                "data": {"name": "fortunes"},
                "scenario": {"type": "domains"},
                "model": {"name": "gpt"},
                "train": options,
            }
        )


@pytest.mark.skipif(bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), reason="this CPU has native bfloat16")
def test_bf16_on_a_cpu_without_bfloat16_names_the_fix():
    with pytest.raises(ValidationError) as err:
        TrainConfig(precision="bf16")
    message = str(err.value)
    assert "precision 'bf16' needs hardware with bfloat16 support" in message
    assert "use precision 'fp32'" in message and "device: cuda" in message
    with pytest.raises(ConfigError, match="precision 'bf16'.*use precision 'fp32'"):
        parse_config(
            {
                "data": {"name": "fortunes"},
                "scenario": {"type": "domains"},
                "model": {"name": "gpt"},
                "train": {"precision": "bf16"},
            }
        )
    assert TrainConfig(precision="fp32").precision == "fp32"


# --- the LR the learner uses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"scheduler": "cosine", "min_lr": 0.001, "warmup_steps": 3},
        {"scheduler": "linear", "min_lr": 0.002},
        {"scheduler": "continue", "min_lr": 0.001, "warmup_steps": 2},
        {"scheduler": "wsd", "min_lr": 0.0005, "warmup_steps": 2, "cooldown": 0.3},
        {"scheduler": "constant", "warmup_steps": 4},
    ],
    ids=lambda o: o["scheduler"],
)
def test_logged_lr_follows_lr_at(tmp_path, options):
    tr = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", log_every=1, **options)
    stream = lm_stream(experiences=3, train_rows=36)  # 5 steps per epoch (the last one short), 10 per exp
    results = Learner(tiny_gpt(), train=tr, run_dir=tmp_path / "run", progress=False).run(stream)
    assert results.experience_steps == [10, 10, 10]
    assert results.experience_start_steps == [0, 10, 20]
    assert results.schedule == options["scheduler"]
    logged = events(tmp_path / "run", "train")
    assert [e["step"] for e in logged] == list(range(1, 31))
    for e in logged:
        i = e["experience"]
        local = e["step"] - 1 - results.experience_start_steps[i]
        assert e["lr"] == lr_at(tr, i, local, results.experience_steps[i]), e
    assert len({e["lr"] for e in logged}) > 2  # the schedule moved


# --- wsd with continue_from: hot --------------------------------------------------------------------------


class Recorder(Method):
    """Copies of the weights at the first mini-batch of every step (after the experience's `start` hooks),
    and at every experience's end (what evaluation scores)."""

    name = "recorder"

    def __init__(self) -> None:
        self.at_step: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.at_end: dict[int, dict[str, torch.Tensor]] = {}

    def batch(self, ctx: Context, batch: Split) -> Split:
        self.at_step.setdefault((ctx.index, ctx.local_step), snapshot(ctx.model))
        return batch

    def end(self, ctx: Context) -> None:
        self.at_end[ctx.index] = snapshot(ctx.model)


def perplexities(weights: dict[str, torch.Tensor], stream: Stream) -> list[float]:
    model = tiny_gpt()
    model.load_state_dict(weights)
    model.eval()
    return [LanguageModeling(VOCAB).evaluate(model, s, 1000) for s in stream.test_sets]


def wsd_hot(**extra: Any) -> TrainConfig:
    options: dict[str, Any] = {
        "batch_size": 4,
        "lr": 0.02,
        "optimizer": "adamw",
        "scheduler": "wsd",
        "cooldown": 0.25,  # of 10 steps: steps 7, 8, 9 cool down
        "min_lr": 0.0,
        "continue_from": "hot",
        "log_every": 1,
        **extra,
    }
    return TrainConfig(**options)


def test_hot_weights_start_the_next_experience_and_the_cooled_ones_are_evaluated():
    stream = lm_stream(experiences=3)  # 40 rows / batch 4: 10 steps per experience
    recorder = Recorder()
    learner = Learner(tiny_gpt(), [recorder], wsd_hot(), progress=False)
    assert any(isinstance(m, HotWeights) for m in learner.methods)  # the loop adds it itself
    results = learner.run(stream)
    assert results.experience_steps == [10, 10, 10]
    assert results.method == "recorder"  # the loop's own method is not the user's
    for i in (0, 1):
        hot = recorder.at_step[(i, 7)]  # before step 7, the first of the cool-down
        cooled = recorder.at_end[i]
        assert not same(hot, cooled)
        assert not same(recorder.at_step[(i, 6)], hot)  # step 6 still trained the hot weights
        assert same(recorder.at_step[(i + 1, 0)], hot)  # experience i + 1 starts from the hot weights
        assert results.matrix[i] == pytest.approx(perplexities(cooled, stream), rel=1e-6)
        assert results.matrix[i] != pytest.approx(perplexities(hot, stream), rel=1e-6)
    assert same(snapshot(learner.model), recorder.at_end[2])  # the model served at the end: cooled


def test_without_hot_the_next_experience_starts_from_the_cooled_weights():
    stream = lm_stream(experiences=2)
    recorder = Recorder()
    learner = Learner(tiny_gpt(), [recorder], wsd_hot(continue_from="cooled"), progress=False)
    assert not any(isinstance(m, HotWeights) for m in learner.methods)
    learner.run(stream)
    assert same(recorder.at_step[(1, 0)], recorder.at_end[0])


def test_a_wsd_hot_run_loads_for_inference(tmp_path):
    import lifelong

    learner = Learner(tiny_gpt(), train=wsd_hot(), run_dir=tmp_path / "run", progress=False)
    learner.run(lm_stream())
    trained = lifelong.load(tmp_path / "run", model=tiny_gpt())
    assert same(snapshot(trained.model), snapshot(learner.model))


# --- killed in a cool-down, resumed -------------------------------------------------------------------------


def run_killed(
    make: Callable[[Path], Learner], stream: Stream, run_dir: Path, after: str, monkeypatch: Any
) -> Any:
    """Run into `run_dir`, stop it as a kill would right after checkpoint `after`, resume with new objects."""
    original = Learner._checkpoint

    def checkpoint_then_stop(self, p, began, name):
        original(self, p, began, name)
        if name == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Learner, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make(run_dir).run(stream)
    monkeypatch.undo()
    assert not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "checkpoints" / "LATEST.json").read_text())["checkpoint"] == after
    return make(run_dir).run(stream, resume=True)


@pytest.mark.parametrize("accum", [1, 3])
def test_killed_during_a_cool_down_resumes_bit_identical(tmp_path, monkeypatch, accum):
    # 10 steps per experience whatever `accum` (a step takes `accum` mini-batches of 4); checkpoints every
    # 3 steps: step 9 is inside experience 1's cool-down (steps 8..10), after the hot weights were kept
    stream = lm_stream(experiences=2, train_rows=40 * accum)
    tr = wsd_hot(grad_accum=accum, checkpoint_every=3, eval_every=4)

    def make(run_dir: Path) -> Learner:
        return Learner(tiny_gpt(dropout=0.1), train=tr, run_dir=run_dir, progress=False)

    unbroken = make(tmp_path / "unbroken").run(stream)
    resumed = run_killed(make, stream, tmp_path / "killed", "step-000000009", monkeypatch)

    assert unbroken.experience_steps == [10, 10]
    for key in ("matrix", "initial", "stability_gap", "tokens_seen", "experience_steps", "summary"):
        assert getattr(resumed, key) == getattr(unbroken, key), key
    a, b = final_checkpoint(tmp_path / "unbroken"), final_checkpoint(tmp_path / "killed")
    assert a.keys() == b.keys()
    hot = next(name for name in a if "wsd_hot_weights" in name)
    assert any(k.startswith("hot.") for k in a[hot])  # the kept weights are part of the checkpoint
    for name in a:
        assert same(a[name], b[name]), name
    for kind in ("train", "eval", "experience_end"):
        assert events(tmp_path / "killed", kind) == events(tmp_path / "unbroken", kind), kind
    assert math.isfinite(resumed.matrix[-1][-1])
