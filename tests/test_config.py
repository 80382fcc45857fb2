"""The YAML config: the first config means what the docs say, and every mistake fails with a `ConfigError`
that names the key, what it got and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lifelong.config import (
    MLPConfig,
    NaiveConfig,
    ReplayConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_config,
)
from lifelong.datasets import names as dataset_names
from lifelong.errors import ConfigError
from lifelong.methods import METHODS

FIRST = Path(__file__).resolve().parents[1] / "examples" / "first.yaml"


@pytest.fixture
def first() -> dict:
    return yaml.safe_load(FIRST.read_text())


def changed(raw: dict, **sections) -> dict:
    out = copy.deepcopy(raw)
    for key, value in sections.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def error(raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


# --- the first config -----------------------------------------------------------------------------------


def test_first_config_has_the_documented_meaning(first):
    cfg = load_config(FIRST)
    assert isinstance(cfg, RunConfig)
    assert cfg.data.name == "fashion_mnist"
    assert cfg.data.train_per_class is None and cfg.data.test_per_class is None  # the full data set
    assert (cfg.scenario.type, cfg.scenario.experiences, cfg.scenario.seed) == ("class_incremental", 5, 0)
    assert cfg.scenario.class_order is None  # classes 0..9 in order, two per experience
    assert cfg.model == MLPConfig(name="mlp", hidden=[400, 400])
    assert cfg.method == ReplayConfig(name="replay", memory=500, batch_size=None, policy="reservoir")
    assert cfg.methods == [cfg.method]
    assert cfg.train == TrainConfig(epochs=1, batch_size=32, lr=0.01, optimizer="sgd")
    # what the first config leaves out takes the documented defaults
    assert cfg.train.momentum == 0.0 and cfg.train.scheduler == "constant" and cfg.train.reset_optimizer
    assert cfg.train.eval_every is None and cfg.train.checkpoint_every is None and cfg.train.device == "cpu"
    assert cfg.seed == 0
    assert parse_config(first) == cfg


def test_config_round_trips_through_its_json_dump(first):
    # results.json / config.json store `model_dump(mode="json")`; `lifelong resume` parses it back
    cfg = parse_config(first)
    assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_minimal_config_defaults_to_naive():
    cfg = parse_config(
        {"data": {"name": "digits"}, "scenario": {"type": "class_incremental"}, "model": {"name": "mlp"}}
    )
    assert cfg.method == NaiveConfig(name="naive") and cfg.train == TrainConfig() and cfg.seed == 0


def test_text_config_parses():
    cfg = parse_config(
        {
            "data": {"name": "fortunes"},
            "scenario": {"type": "domains", "domains": ["tao", "pets"], "block_size": 32},
            "model": {"name": "gpt", "n_layer": 1, "n_embd": 32},
            "train": {"optimizer": "adam", "lr": 3e-3},
        }
    )
    assert cfg.scenario.domains == ["tao", "pets"] and cfg.model.n_head == 4


def test_files_config_needs_no_data_section():
    cfg = parse_config({"scenario": {"type": "files", "path": "some/folder"}, "model": {"name": "mlp"}})
    assert cfg.data is None and cfg.scenario.path == "some/folder"


# --- unknown keys -----------------------------------------------------------------------------------------


def test_unknown_top_level_key_lists_the_sections(first):
    msg = error(changed(first, trainer={"epochs": 2}))
    assert "unknown key `trainer`" in msg
    assert "allowed here: data, scenario, model, method, train, seed" in msg


def test_unknown_train_key_lists_train_options(first):
    msg = error(changed(first, train={"lr": 0.1, "epoch": 3}))
    assert "unknown key `train.epoch`" in msg
    for key in TrainConfig.model_fields:
        assert key in msg.split("allowed here:")[1]


def test_unknown_method_key_lists_that_methods_options(first):
    msg = error(changed(first, method={"name": "replay", "memroy": 200}))
    assert msg == (
        "invalid config:\n  unknown key `method.memroy`; allowed here: "
        "name, memory, batch_size, policy, ratio, memory_tokens, source"
    )  # one problem, not a second one about lists of methods


def test_unknown_key_in_a_composed_method(first):
    msg = error(changed(first, method=[{"name": "naive"}, {"name": "replay", "size": 5}]))
    assert msg == (
        "invalid config:\n  unknown key `method[1].size`; allowed here: "
        "name, memory, batch_size, policy, ratio, memory_tokens, source"
    )


def test_unknown_model_and_scenario_keys(first):
    msg = error(changed(first, model={"name": "cnn", "layers": 3}))
    assert "unknown key `model.layers`; allowed here: name, channels, hidden" in msg
    msg = error(changed(first, scenario={"type": "class_incremental", "tasks": 5}))
    assert "unknown key `scenario.tasks`" in msg and "experiences" in msg and "class_order" in msg


def test_every_problem_is_reported_at_once(first):
    raw = changed(first, train={"lr": "fast", "epochz": 1}, seed="x")
    msg = error(raw)
    assert "`train.lr`" in msg and "`train.epochz`" in msg and "`seed`" in msg


# --- wrong types and values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "value", "key", "got"),
    [
        ("train", {"lr": "fast"}, "train.lr", "'fast'"),
        ("train", {"epochs": 1.5}, "train.epochs", "1.5"),
        ("train", {"reset_optimizer": "maybe"}, "train.reset_optimizer", "'maybe'"),
        ("train", {"lr": -1}, "train.lr", "-1"),
        ("model", {"name": "mlp", "hidden": "big"}, "model.hidden", "'big'"),
        ("seed", "abc", "seed", "'abc'"),
    ],
)
def test_wrong_type_names_the_key_and_the_value(first, section, value, key, got):
    msg = error(changed(first, **{section: value}))
    assert f"`{key}`" in msg and f"(got {got})" in msg


def test_wrong_value_in_a_method_names_its_key(first):
    assert "`method.memory`: input should be greater than or equal to 1 (got 0)" in error(
        changed(first, method={"name": "replay", "memory": 0})
    )
    assert "`method[0].memory`" in error(changed(first, method=[{"name": "replay", "memory": 0}]))


def test_unknown_method_lists_the_methods(first):
    msg = error(changed(first, method={"name": "ewq", "lambda": 100}))
    assert msg == (
        f"invalid config:\n  `method.name`: 'ewq' is not a known method; choose one of {', '.join(METHODS)}"
    )
    assert "`method[1].name`: 'ewq'" in error(changed(first, method=[{"name": "naive"}, {"name": "ewq"}]))


def test_method_without_a_name(first):
    assert "`method` needs a `name` key" in error(changed(first, method={"memory": 500}))


def test_unknown_model_lists_the_models(first):
    msg = error(changed(first, model={"name": "resnet"}))
    assert "'resnet' is not a known model; choose one of mlp, cnn, gpt" in msg


def test_unknown_dataset_lists_the_datasets(first):
    msg = error(changed(first, data={"name": "cifar10"}))
    assert "`data.name`: unknown data set 'cifar10'" in msg
    assert "available: " + ", ".join(dataset_names()) in msg
    for name in ("digits", "fashion_mnist", "fortunes", "mnist1d", "mnist5k"):
        assert name in msg


@pytest.mark.parametrize(
    ("section", "value", "key", "allowed"),
    [
        ("train", {"optimizer": "rmsprop"}, "train.optimizer", "'sgd', 'adam' or 'adamw'"),
        (
            "train",
            {"scheduler": "step"},
            "train.scheduler",
            "'constant', 'cosine', 'linear', 'continue' or 'wsd'",
        ),
        ("scenario", {"type": "incremental"}, "scenario.type", "'class_incremental', 'task_incremental'"),
        ("method", {"name": "replay", "policy": "fifo"}, "method.policy", "'reservoir' or 'class_balanced'"),
    ],
)
def test_invalid_enum_lists_the_choices(first, section, value, key, allowed):
    msg = error(changed(first, **{section: value}))
    assert f"`{key}`:" in msg and "is not allowed" in msg and allowed in msg


# --- composition ------------------------------------------------------------------------------------------


def test_method_as_a_list_composes(first):
    cfg = parse_config(changed(first, method=[{"name": "replay", "memory": 200}, {"name": "naive"}]))
    assert [m.name for m in cfg.methods] == ["replay", "naive"]
    assert cfg.methods[0] == ReplayConfig(name="replay", memory=200)


def test_composition_builds_methods_in_order(first):
    from lifelong.experiment import build_methods

    cfg = parse_config(changed(first, method=[{"name": "naive"}, {"name": "replay", "memory": 7}], seed=3))
    methods = build_methods(cfg)
    assert [m.name for m in methods] == ["naive", "replay"]
    assert methods[1].memory_size == 7 and methods[1].seed == 3  # replay draws with the run's seed


# --- impossible combinations ------------------------------------------------------------------------------


def test_online_with_several_epochs(first):
    msg = error(changed(first, scenario={"type": "online"}, train={"epochs": 2}))
    assert "scenario 'online' is a single pass" in msg and "train.epochs to 1" in msg


def test_files_without_path():
    msg = error({"scenario": {"type": "files"}, "model": {"name": "mlp"}})
    assert "`scenario`: scenario type 'files' needs `path`" in msg


def test_files_with_a_data_section(first):
    msg = error(changed(first, scenario={"type": "files", "path": "x"}))
    assert "remove the `data` section" in msg


def test_path_on_another_scenario(first):
    msg = error(changed(first, scenario={"type": "class_incremental", "path": "x"}))
    assert "`path` is only for scenario type 'files'" in msg


def test_missing_data_section(first):
    assert "missing section `data`" in error(changed(first, data=None))


@pytest.mark.parametrize("data", ["mnist1d", "fortunes"])
def test_cnn_on_non_images(first, data):
    scenario = {"type": "domains"} if data == "fortunes" else {"type": "class_incremental"}
    msg = error(changed(first, data={"name": data}, scenario=scenario, model={"name": "cnn"}))
    assert "model 'cnn'" in msg


def test_cnn_on_sequences_says_use_mlp(first):
    msg = error(changed(first, data={"name": "mnist1d"}, model={"name": "cnn"}))
    assert "model 'cnn' needs images but 'mnist1d' is sequences; use model 'mlp'" in msg


def test_gpt_on_images(first):
    msg = error(changed(first, model={"name": "gpt"}))
    assert "model 'gpt' is a language model: it goes with text (scenario 'domains'" in msg


def test_mlp_on_text(first):
    msg = error(changed(first, data={"name": "fortunes"}, scenario={"type": "domains"}))
    assert "model 'mlp' cannot model text: use model 'gpt'" in msg


def test_text_data_needs_the_domains_scenario(first):
    msg = error(changed(first, data={"name": "fortunes"}, model={"name": "gpt"}))
    assert "data set 'fortunes' is text: use scenario type 'domains'" in msg


def test_domains_scenario_needs_text(first):
    msg = error(changed(first, scenario={"type": "domains"}, model={"name": "gpt"}))
    assert "scenario type 'domains' needs a text data set, not 'fashion_mnist'" in msg


def test_blurry_on_non_online(first):
    msg = error(changed(first, scenario={"type": "class_incremental", "blurry": 0.2}))
    assert "`blurry` is only for scenario type 'online', not 'class_incremental'" in msg
    assert parse_config(changed(first, scenario={"type": "online", "blurry": 0.2})).scenario.blurry == 0.2


def test_momentum_with_adam(first):
    msg = error(changed(first, train={"optimizer": "adam", "momentum": 0.9}))
    assert "`momentum` is an option of optimizer 'sgd', not 'adam'" in msg
    assert parse_config(changed(first, train={"momentum": 0.9})).train.momentum == 0.9


def test_angles_must_match_experiences(first):
    msg = error(changed(first, scenario={"type": "rotated", "experiences": 3, "angles": [0, 90]}))
    assert "`angles` has 2 entries but `experiences` is 3" in msg


def test_gpt_heads_must_divide_width():
    raw = {
        "data": {"name": "fortunes"},
        "scenario": {"type": "domains"},
        "model": {"name": "gpt", "n_embd": 30, "n_head": 4},
    }
    assert "n_embd (30) must be divisible by n_head (4)" in error(raw)


def test_config_must_be_a_mapping():
    for raw in ([1, 2], None, "data: x"):
        assert "a config must be a mapping of sections" in error(raw)


# --- files and overrides ----------------------------------------------------------------------------------


def test_overrides_parse_values_as_yaml(first):
    raw = apply_overrides(
        first,
        [
            "train.lr=0.05",
            "train.epochs=2",
            "data.train_per_class=100",
            "model.hidden=[64, 32]",
            "method=[{name: replay, memory: 50}, {name: naive}]",
            "scenario.class_order=[9,8,7,6,5,4,3,2,1,0]",
        ],
    )
    cfg = parse_config(raw)
    assert cfg.train.lr == 0.05 and cfg.train.epochs == 2 and cfg.data.train_per_class == 100
    assert cfg.model.hidden == [64, 32] and [m.name for m in cfg.methods] == ["replay", "naive"]
    assert cfg.scenario.class_order == list(range(9, -1, -1))
    assert first["train"]["lr"] == 0.01  # the given dict is not changed


def test_override_creates_missing_sections(first):
    raw = apply_overrides(changed(first, train=None), ["train.optimizer=adam"])
    assert parse_config(raw).train.optimizer == "adam"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr", "override 'train.lr' must look like section.key=value, e.g. train.lr=0.05"),
        ("train.lr=[0.1", "override 'train.lr=[0.1': the value '[0.1' is not valid YAML"),
        ("data.name.x=1", "override 'data.name.x=1': 'name' is not a section"),
        ("=3", "override '=3' has an empty key"),
        ("train..lr=3", "has an empty key"),
    ],
)
def test_override_syntax_errors(first, override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(first, [override])
    assert message in str(info.value)


def test_override_to_a_bad_value_fails_validation(tmp_path, first):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(first))
    with pytest.raises(ConfigError, match=r"unknown key `train.lrate`"):
        load_config(path, ["train.lrate=0.1"])
    with pytest.raises(ConfigError, match=r"`train.optimizer`: 'rms' is not allowed"):
        load_config(path, ["train.optimizer=rms"])
    assert load_config(path, ["train.lr=0.05"]).train.lr == 0.05


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- data\n- model\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed, ["train.lr=0.1"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="missing key `scenario`"):
        load_config(empty)


def test_root_and_download_only_for_sources_read_from_files():
    from lifelong.config import parse_config
    from lifelong.errors import ConfigError

    base = {"scenario": {"type": "class_incremental"}, "model": {"name": "mlp"}}
    with pytest.raises(ConfigError, match=r"data\.root.*not an option of data set 'digits'"):
        parse_config({**base, "data": {"name": "digits", "root": "/tmp"}})
    with pytest.raises(ConfigError, match=r"data\.download.*not an option of data set 'mnist1d'"):
        parse_config({**base, "data": {"name": "mnist1d", "download": True}})
    assert parse_config({**base, "data": {"name": "fashion_mnist", "root": "/tmp"}}).data.root == "/tmp"


def test_gpt_tokenizer_kind_is_not_taken_for_a_folder_of_that_name(tmp_path, monkeypatch):
    """`model.tokenizer` names a folder for a Hugging Face model, but a kind (bytes, bpe) for the GPT: a
    folder called `bpe` beside the config (a tokenizer cache, say) must not turn the kind into a path."""
    (tmp_path / "bpe").mkdir()
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    gpt = tmp_path / "gpt.yaml"
    gpt.write_text(
        "data: {name: kjv}\nscenario: {type: domains, block_size: 64}\n"
        "model: {name: gpt, tokenizer: bpe, vocab_size: 512}\n"
    )
    assert load_config(gpt).model.tokenizer == "bpe"
    hf = tmp_path / "hf.yaml"
    hf.write_text(
        "data: {name: kjv}\nscenario: {type: domains, block_size: 64}\n"
        "model: {name: hf, path: m, tokenizer: tok}\n"
    )
    assert load_config(hf).model.tokenizer == str(tmp_path / "tok")  # a folder that exists: made absolute
