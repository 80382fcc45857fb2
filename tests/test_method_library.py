"""Every method of the library, through the same checks: its config matches its constructor, it has a docs
page, it runs (or refuses cleanly, before anything trains) on every kind of stream, and a run killed in the
middle and resumed ends bit-identical to an unbroken one. Each method's own claims are tested in its own
test file (tests/test_method_*.py)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml

from lifelong import datasets
from lifelong.config import _TAGGED, parse_config
from lifelong.errors import ConfigError
from lifelong.learner import Learner
from lifelong.methods import METHODS, build_method
from lifelong.methods.base import check_composition
from lifelong.models import MLP, TinyGPT
from lifelong.streams import class_incremental, permuted, subsample, task_incremental
from lifelong.streams.labels import hold_back_labels
from lifelong.streams.text import text_domains

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(METHODS)
# small memories and sample counts, so each run takes a second
SMALL: dict[str, dict] = {
    "replay": {"memory": 40},
    "er_ace": {"memory": 40},
    "der": {"memory": 40},
    "derpp": {"memory": 40},
    "gdumb": {"memory": 60},
    "icarl": {"memory": 40},
    "ewc": {"samples": 64},
    "online_ewc": {"samples": 64},
    "mas": {"samples": 64},
    "agem": {"memory": 40, "sample_size": 16},
    "gem": {"memory_per_experience": 16},
    "lora": {"rank": 2},
    "analytic": {"buffer": 64},
}
TRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.05, "checkpoint_every": 4}
# self-training methods learn from unlabeled data: their classification streams hold half the labels back
SELF_TRAINING = {"pseudo_label", "fixmatch", "mean_teacher"}


def make(name: str):
    return build_method(name, **SMALL.get(name, {}))


def methods_for(name: str) -> list:
    # WA aligns the head of a replaying learner: it is meant to run beside a memory
    return (
        [build_method("replay", memory=40, policy="class_balanced"), make("wa")]
        if name == "wa"
        else [make(name)]
    )


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="module")
def streams(digits):
    small = subsample(digits, 60, 20, seed=0)
    corpus = datasets.load("fortunes")
    return {
        "class_il": class_incremental(digits, 3),
        "task_il": task_incremental(digits, 3),
        "domain_il": permuted(small, 2),
        "language": text_domains(
            corpus, domains=list(corpus.domains)[:2], block_size=16, max_blocks_per_domain=24
        ),
    }


def stream_for(name: str, stream):
    if name in SELF_TRAINING and stream.kind == "classification":
        return hold_back_labels(stream, label_fraction=0.5)
    return stream


def model_for(stream):
    torch.manual_seed(0)
    if stream.kind == "language_modeling":
        return TinyGPT(stream.num_classes, stream.input_shape[0], n_layer=1, n_head=2, n_embd=16)
    return MLP(stream.input_shape, stream.num_classes, [32])


# --- config, registry, docs ---------------------------------------------------------------------------------


def test_every_config_name_is_a_registered_method_with_the_same_options_and_defaults():
    assert sorted(_TAGGED["method"]) == NAMES
    for name in NAMES:
        cls = METHODS[name]
        assert cls.name == name
        options = {p.name: p.default for p in inspect.signature(cls).parameters.values() if p.name != "seed"}
        fields = {k: f.default for k, f in _TAGGED["method"][name].model_fields.items() if k != "name"}
        assert options == fields, name


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("naive", "joint", "cumulative")])
def test_every_method_has_a_docs_page_with_its_paper_options_and_scenarios(name):
    page = ROOT / "docs" / "methods" / f"{name}.md"
    assert page.exists(), f"missing docs/methods/{name}.md"
    text = page.read_text()
    for option in _TAGGED["method"][name].model_fields:
        if option != "name":
            assert f"`{option}`" in text, f"{name}: option {option} undocumented"
    assert f"name: {name}" in text  # a config snippet
    assert "class-IL" in text or "class-incremental" in text.lower()


def test_every_method_is_in_the_methods_table_of_the_docs():
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in NAMES:
        assert f"`{{name: {name}" in text, name


# --- composition ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names, problem",
    [
        (["der", "replay"], "both feed stored samples into training"),
        (["icarl", "er_ace"], "both feed stored samples into training"),
        (["lora", "hft"], "both decide which weights train"),
        (["gdumb", "ewc"], "'gdumb' trains in its own way and cannot be combined with ewc"),
        (["ewc", "ncm"], "'ncm' trains in its own way"),
        (["analytic", "lwf"], "'analytic' trains in its own way"),
        (["ewc", "ewc"], "'ewc' is given twice"),
    ],
)
def test_combinations_that_cannot_work_fail_when_the_learner_is_built_and_when_the_config_is_read(
    names, problem, streams
):
    with pytest.raises(ConfigError, match=problem):
        Learner(model_for(streams["class_il"]), [make(n) for n in names], progress=False)
    raw = {
        "data": {"name": "digits"},
        "scenario": {"type": "class_incremental", "experiences": 3},
        "model": {"name": "mlp"},
        "method": [{"name": n} for n in names],
    }
    with pytest.raises(ConfigError, match=problem):
        parse_config(raw)


@pytest.mark.parametrize(
    "names", [["replay", "lwf"], ["lora", "replay"], ["derpp", "ewc"], ["agem", "hft"], ["icarl", "merge"]]
)
def test_combinations_that_make_sense_compose(names, streams):
    check_composition([METHODS[n] for n in names])
    results = Learner(model_for(streams["class_il"]), [make(n) for n in names], progress=False, **TRAIN).run(
        streams["class_il"]
    )
    assert len(results.matrix) == 3


# --- every stream kind: runs, or refuses before anything trains ---------------------------------------------


@pytest.mark.parametrize("kind", ["class_il", "task_il", "domain_il", "language"])
@pytest.mark.parametrize("name", NAMES)
def test_each_method_runs_or_refuses_cleanly_on_each_kind_of_stream(name, kind, streams, tmp_path):
    stream = stream_for(name, streams[kind])
    model = model_for(stream)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = tmp_path / "run"
    try:
        learner = Learner(model, methods_for(name), progress=False, run_dir=run_dir, **TRAIN)
        results = learner.run(stream)
    except ConfigError as e:
        assert str(e)  # a message that names the problem
        assert not run_dir.exists(), "refused after writing"
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "refused after training"
        return
    assert len(results.matrix) == len(stream)
    assert all(v == v for row in results.matrix for v in row)  # no NaN


# --- bit-identical resume ------------------------------------------------------------------------------


class Killed(Exception):
    pass


def kill_at_training_forward(model: torch.nn.Module, n: int):
    count = {"calls": 0}

    def hook(module, args):
        if module.training:
            count["calls"] += 1
            if count["calls"] == n:
                raise Killed

    return model.register_forward_pre_hook(hook)


@pytest.mark.parametrize("kill_at", [7, 21])  # in the first experience; in the second
@pytest.mark.parametrize("name", NAMES)
def test_a_killed_and_resumed_run_ends_bit_identical(name, kill_at, streams, tmp_path):
    stream = stream_for(name, streams["class_il"])
    unbroken_model = model_for(stream)
    unbroken = Learner(unbroken_model, methods_for(name), progress=False, **TRAIN).run(stream)

    model = model_for(stream)
    handle = kill_at_training_forward(model, kill_at)
    try:
        Learner(model, methods_for(name), progress=False, run_dir=tmp_path / "r", **TRAIN).run(stream)
        killed = False
    except Killed:
        killed = True
    handle.remove()
    if killed:
        model = model_for(stream)  # fresh objects, as `lifelong resume` builds them
        resumed = Learner(model, methods_for(name), progress=False, run_dir=tmp_path / "r", **TRAIN).run(
            stream, resume=True
        )
        assert resumed.matrix == unbroken.matrix
    expected = unbroken_model.state_dict()
    got = model.state_dict()
    assert list(got) == list(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), f"{name}: {k} differs after resume"


# --- the docs pages' snippets run as written -----------------------------------------------------------

PAGES = sorted((ROOT / "docs" / "methods").glob("*.md"))


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_the_config_snippets_of_each_docs_page_are_valid_configs(page):
    blocks = _blocks(page.read_text(), "yaml")
    assert blocks, f"{page.name} has no YAML config snippet"
    for block in blocks:
        raw = yaml.safe_load(block)
        if "scenario" in raw:  # a whole config
            parse_config(raw)
        else:  # a method entry alone
            parse_config({**BASE_CONFIG, **raw})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_the_python_snippets_of_each_docs_page_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for block in _blocks(page.read_text(), "python"):
        exec(compile(block, str(page), "exec"), {"__name__": "__docs__"})


BASE_CONFIG = {
    "data": {"name": "digits"},
    "scenario": {"type": "class_incremental", "experiences": 5},
    "model": {"name": "mlp"},
}


def test_the_config_reference_lists_every_method_with_its_keys_and_defaults():
    text = (ROOT / "docs" / "config.md").read_text()
    for name, cls in _TAGGED["method"].items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        for key, field in cls.model_fields.items():
            if key != "name":
                assert f"`{key}` ({str(field.default).replace(chr(39), '')})" in row, (name, key)
