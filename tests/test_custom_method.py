"""A user-written method, taken verbatim from docs/methods.md, joins the loop and does what the page says:
it keeps the weights near the previous experience's, composes with other methods, resumes exactly from its
state_dict, and refuses a combination in `check` before anything is written."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn.utils import parameters_to_vector as flat

from lifelong import datasets
from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.experiment import run_config
from lifelong.learner import Learner
from lifelong.methods import METHODS, Cumulative, Joint, Method, Replay
from lifelong.methods.base import Context, overrides
from lifelong.models import MLP
from lifelong.state import split_state
from lifelong.streams import class_incremental
from lifelong.streams.experience import Split, Stream

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.1, "optimizer": "sgd"}


def python_block(heading: str) -> str:
    """The first ```python block after the line `heading` of docs/methods.md."""
    text = DOC.read_text()
    match = re.search(rf"^{re.escape(heading)}$", text, flags=re.M)
    assert match, f"docs/methods.md has no heading {heading!r}"
    block = re.search(r"^```python\n(.*?)^```$", text[match.end() :], flags=re.S | re.M)
    assert block, f"no python block after {heading!r}"
    return block.group(1)


def run_block(code: str, namespace: dict) -> dict:
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def doc() -> dict:
    namespace = run_block(python_block("## A complete method: L2 to the previous weights"), {})
    return run_block(python_block("### Refusing a combination"), namespace)


@pytest.fixture(scope="module")
def stream() -> Stream:
    return class_incremental(datasets.load("digits"), experiences=3)


class Snapshots(Method):
    """Records the weights at the end of every experience (a method that only reads)."""

    name = "snapshots"

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def end(self, ctx: Context) -> None:
        self.after.append(flat(ctx.model.parameters()).detach().clone())


def new_model(stream: Stream, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(stream.input_shape, stream.num_classes, hidden=[32])


def weights_after_each(stream: Stream, methods: list[Method]) -> tuple[list[torch.Tensor], list[list[float]]]:
    """The weights after each experience, and the accuracy matrix."""
    snapshots = Snapshots()
    results = Learner(new_model(stream), [*methods, snapshots], progress=False, **TRAIN).run(stream)
    return snapshots.after, results.matrix


# --- the page -----------------------------------------------------------------------------------------------


def test_the_method_is_under_30_lines():
    code = python_block("## A complete method: L2 to the previous weights")
    assert len(code.rstrip("\n").splitlines()) < 30


def test_the_page_documents_every_hook_and_context_field():
    text = DOC.read_text()
    for hook in ("check", "start", "data", "batch", "loss", "after_backward", "end", "state_dict"):
        assert f"| `{hook}(" in text, hook
        assert hasattr(Method, hook)
    for field in dataclasses.fields(Context):
        assert f"| `{field.name}` |" in text, field.name


def test_the_built_in_methods_table_lists_the_hooks_each_uses():
    rows = re.findall(r"^\| .*? \| `\{name: (\w+)\}` \| (.*?) \| .*\|$", DOC.read_text(), flags=re.M)
    assert [name for name, _ in rows] == list(METHODS)
    hooks = (
        "check", "setup", "start", "data", "batch", "main_loss", "loss", "after_backward", "end", "predict",
        "state_dict",
    )  # fmt: skip
    for name, cell in rows:
        assert re.findall(r"`(\w+)`", cell) == [h for h in hooks if overrides(METHODS[name], h)], name


def test_the_method_overrides_only_what_it_needs(doc):
    method = doc["L2ToPrevious"](lam=1.0)
    hooks = ("start", "data", "batch", "loss", "after_backward", "end")
    assert [h for h in hooks if overrides(method, h)] == ["start", "loss"]
    assert repr(method) == "L2ToPrevious(lam=1.0)"


# --- it does what it claims ---------------------------------------------------------------------------------


def test_large_lambda_keeps_the_weights_near_the_previous_experience(doc, stream):
    naive, naive_matrix = weights_after_each(stream, [])
    l2, l2_matrix = weights_after_each(stream, [doc["L2ToPrevious"](lam=5.0)])
    assert torch.equal(naive[0], l2[0])  # no penalty during the first experience
    for i in (1, 2):
        moved_naive = float((naive[i] - naive[i - 1]).norm())
        moved_l2 = float((l2[i] - l2[i - 1]).norm())
        assert moved_l2 < 0.5 * moved_naive, (i, moved_l2, moved_naive)
    # staying close is what keeps the first experience: plain fine-tuning forgets it entirely here
    assert naive_matrix[1][0] < 0.1 and l2_matrix[1][0] > naive_matrix[1][0] + 0.3


def test_zero_lambda_trains_like_naive(doc, stream):
    naive, _ = weights_after_each(stream, [])
    l2, _ = weights_after_each(stream, [doc["L2ToPrevious"](lam=0.0)])
    for a, b in zip(naive, l2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_it_composes_with_replay(doc, stream):
    results = Learner(
        new_model(stream), [Replay(100, seed=0), doc["L2ToPrevious"](lam=0.5)], progress=False, **TRAIN
    ).run(stream)
    assert results.method == "replay+l2_previous"
    assert results.config["method"][1] == {"name": "l2_previous", "lam": 0.5}
    assert len(results.matrix) == 3 and results.matrix[0][0] > 0.5


# --- state_dict ---------------------------------------------------------------------------------------------


def test_state_dict_round_trip(doc, stream):
    L2 = doc["L2ToPrevious"]
    model = new_model(stream)
    method = L2(lam=2.0)
    assert method.state_dict() == {}  # nothing to remember yet
    ctx = Context(model, None, None, stream[1], 1, list(stream.experiences[:2]))
    method.start(ctx)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    # through the same path as a checkpoint: tensors to safetensors bytes, the rest as JSON
    tensors, meta = split_state(method.state_dict())
    restored = L2(lam=2.0)
    restored.load_state_dict({**meta, **st_load(st_save(tensors))})
    assert torch.equal(restored.old, method.old)
    batch = stream[1].train.subset(torch.arange(4))
    penalty = float(method.loss(ctx, batch, None).detach())
    assert float(restored.loss(ctx, batch, None).detach()) == pytest.approx(penalty)
    assert penalty == pytest.approx(2.0 * 0.01**2 * method.old.numel(), rel=1e-3)
    empty = L2()
    empty.load_state_dict({})
    assert empty.old is None and empty.loss(ctx, batch, None) is None


def crashing(cls: type[Method], after: int) -> type[Method]:
    """`cls`, but the run dies `after` steps into its second experience (same name, same params)."""

    class Crashing(cls):  # type: ignore[misc, valid-type]
        def start(self, ctx):
            super().start(ctx)
            self.began = ctx.step

        def batch(self, ctx, batch):
            if ctx.index == 1 and ctx.step == self.began + after:
                raise KeyboardInterrupt("killed")
            return batch

    return Crashing


def killed_and_resumed(stream: Stream, cls: type[Method], run_dir: Path) -> torch.Tensor:
    train = {**TRAIN, "checkpoint_every": 4}
    with pytest.raises(KeyboardInterrupt):
        Learner(new_model(stream), [crashing(cls, 6)(lam=5.0)], run_dir=run_dir, progress=False, **train).run(
            stream
        )
    assert not (run_dir / "results.json").exists()
    model = new_model(stream, seed=123)  # fresh objects; everything comes from the checkpoint
    Learner(model, [cls(lam=5.0)], run_dir=run_dir, progress=False, **train).run(stream, resume=True)
    assert (run_dir / "results.json").exists()
    return flat(model.parameters()).detach()


def test_killed_mid_experience_resumes_to_the_same_weights(doc, stream, tmp_path):
    L2 = doc["L2ToPrevious"]
    model = new_model(stream)
    Learner(model, [L2(lam=5.0)], progress=False, **{**TRAIN, "checkpoint_every": 4}).run(stream)
    unbroken = flat(model.parameters()).detach()
    assert torch.equal(killed_and_resumed(stream, L2, tmp_path / "l2"), unbroken)

    # the snapshot is what makes this work: a method that forgets it resumes to other weights
    class Forgetful(L2):
        def state_dict(self):
            return {}

    assert not torch.allclose(killed_and_resumed(stream, Forgetful, tmp_path / "forgetful"), unbroken)


# --- check --------------------------------------------------------------------------------------------------


def test_refused_combination_fails_in_check_before_anything_is_written(doc, stream, tmp_path):
    careful = doc["CarefulL2ToPrevious"]
    model = new_model(stream)
    before = flat(model.parameters()).detach().clone()
    run_dir = tmp_path / "x"
    with pytest.raises(ConfigError, match="l2_previous cannot be combined with joint"):
        careful().check(stream, None, [careful(), Joint()])
    # the learner refuses the pair when it is built: Joint must run alone
    for order in ([careful(), Joint()], [Joint(), careful()]):
        with pytest.raises(ConfigError, match="'joint'.*cannot be combined with l2_previous"):
            Learner(model, order, run_dir=run_dir, progress=False, **TRAIN).run(stream)
    assert not run_dir.exists()
    assert torch.equal(flat(model.parameters()), before)  # nothing trained
    # alone, or beside Replay, it is accepted
    careful().check(stream, None, [careful(), Replay(10)])


def test_check_sees_the_stream_the_objective_and_every_method(stream, tmp_path):
    seen = {}

    class Spy(Method):
        name = "spy"

        def check(self, stream, objective, methods):
            seen.update(stream=stream, objective=objective, methods=list(methods))
            raise ConfigError("spy refuses")

    replay, spy = Replay(10), Spy()
    with pytest.raises(ConfigError, match="spy refuses"):
        Learner(new_model(stream), [replay, spy], run_dir=tmp_path / "spy", progress=False).run(stream)
    assert seen["stream"] is stream and seen["methods"] == [replay, spy]
    assert seen["objective"].metric == "accuracy"
    assert not (tmp_path / "spy").exists()


def test_built_in_methods_refuse_impossible_combinations_before_writing(stream, tmp_path):
    with pytest.raises(ConfigError, match="cumulative.*cannot be combined with replay"):
        Learner(new_model(stream), [Cumulative(), Replay(10)], run_dir=tmp_path / "a", progress=False).run(
            stream
        )
    assert not (tmp_path / "a").exists()

    from lifelong.datasets.base import TextCorpus
    from lifelong.models import TinyGPT
    from lifelong.streams.text import text_domains

    text = text_domains(TextCorpus("toy", {"a": ["abc " * 100], "b": ["xyz " * 100]}), block_size=8)
    with pytest.raises(ConfigError, match="class_balanced.*needs class labels"):
        Learner(
            TinyGPT(256, 8, n_layer=1, n_embd=16),
            [Replay(10, policy="class_balanced")],
            run_dir=tmp_path / "b",
            progress=False,
        ).run(text)
    assert not (tmp_path / "b").exists()


# --- the page's example run ---------------------------------------------------------------------------


def test_running_it_as_the_page_shows(doc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = run_block(python_block("## Running it"), {"L2ToPrevious": doc["L2ToPrevious"]})
    results = namespace["results"]
    assert results.method == "replay+l2_previous" and len(results.matrix) == 5
    assert (tmp_path / "runs" / "l2" / "results.json").exists()
    assert (tmp_path / "runs" / "l2" / "events.jsonl").exists()
    printed = capsys.readouterr().out.split()
    assert [float(v) for v in printed] == [results.summary["acc"], results.summary["forgetting"]]


def test_context_tells_start_where_the_run_is(stream):
    seen = []

    class Where(Method):
        name = "where"

        def start(self, ctx):
            seen.append((ctx.index, ctx.step, ctx.epoch, [e.id for e in ctx.seen], ctx.experience.id))

        def data(self, ctx, train: Split) -> Split:
            assert ctx.step == seen[-1][1]
            return train

    results = Learner(new_model(stream), [Where()], progress=False, **TRAIN).run(stream)
    starts = results.experience_start_steps
    assert starts[0] == 0 and starts[1] > 0
    assert seen == [(i, starts[i], 0, list(range(i + 1)), i) for i in range(3)]


def test_the_page_config_runs_the_method_by_import_path(tmp_path, monkeypatch):
    # the page's class, saved as the page says (my_methods.py on the path), run from the page's YAML
    (tmp_path / "my_methods.py").write_text(python_block("## A complete method: L2 to the previous weights"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_methods", raising=False)
    text = DOC.read_text()
    section = text[text.index("### From a config") :]
    raw = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1))
    try:
        results = run_config(parse_config(raw), tmp_path / "run", progress=False)
    finally:
        sys.modules.pop("my_methods", None)
    assert results.method == "replay+l2_previous" and len(results.matrix) == 5
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method"][1] == {"name": "my_methods:L2ToPrevious", "lam": 0.5}
