"""Models and methods from users: a model may return a dict or an object holding `logits` (a Hugging Face
output), a model whose forward takes `task` (or `t`) receives the task labels, classes of one's own are
named in YAML by import path, a method's state is checked before a checkpoint is written, and two custom
methods that kept the default name get a hint."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from lifelong import datasets
from lifelong.config import parse_config
from lifelong.errors import ConfigError, DataError, StateError
from lifelong.experiment import resume, run_config
from lifelong.learner import Learner
from lifelong.methods import AGEM, EWC, Method, Replay, check_composition
from lifelong.models import MLP, build_model
from lifelong.objectives import Classification, LanguageModeling
from lifelong.state import check_method_state
from lifelong.streams import class_incremental, subsample, task_incremental
from lifelong.streams.experience import Stream

TRAIN = {"epochs": 4, "batch_size": 16, "lr": 0.1}


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    return subsample(datasets.load("digits"), 40, 10)


@pytest.fixture(scope="module")
def stream(digits) -> Stream:
    return class_incremental(digits, experiences=2)


class TensorNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.net = MLP(input_shape, num_classes, hidden=[16])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DictNet(TensorNet):
    def forward(self, x):  # type: ignore[override]
        return {"logits": self.net(x), "features": None}


class Output:
    """The shape of a Hugging Face model output: an object with a `.logits` tensor."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.loss = None


class ObjectNet(TensorNet):
    def forward(self, x):  # type: ignore[override]
        return Output(self.net(x))


class HFNet(TensorNet):
    def forward(self, x):  # type: ignore[override]
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.net(x))


def trained(cls: type[nn.Module], stream: Stream, **kw) -> tuple[nn.Module, list[list[float]]]:
    torch.manual_seed(0)
    model = cls(stream.input_shape, stream.num_classes)
    results = Learner(model, [], progress=False, **TRAIN, **kw).run(stream)
    return model, results.matrix


# --- outputs: tensors, dicts, objects with logits ---------------------------------------------------------


@pytest.mark.parametrize("cls", [DictNet, ObjectNet, HFNet], ids=["dict", "object", "hf_model_output"])
def test_a_model_returning_logits_in_a_dict_or_an_object_trains_and_evaluates_like_a_tensor(cls, stream):
    reference, expected = trained(TensorNet, stream)
    model, matrix = trained(cls, stream)
    assert matrix == expected and matrix[0][0] > 0.5  # it learned, exactly as the plain-tensor model did
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", [AGEM(memory=20, sample_size=8), EWC(samples=16)], ids=["agem", "ewc"])
def test_methods_that_call_the_model_get_its_logits(method, stream):
    # A-GEM calls objective.forward on memory samples; EWC calls it on a functional_call of the model
    torch.manual_seed(0)
    results = Learner(DictNet(stream.input_shape, stream.num_classes), [method], progress=False, **TRAIN).run(
        stream
    )
    assert len(results.matrix) == 2 and results.matrix[1][1] > 0.5


class TupleNet(TensorNet):
    def forward(self, x):  # type: ignore[override]
        return self.net(x), None


class NoLogitsNet(TensorNet):
    def forward(self, x):  # type: ignore[override]
        return {"scores": self.net(x)}


class StringNet(TensorNet):
    def forward(self, x):  # type: ignore[override]
        self.net(x)
        return "logits"


@pytest.mark.parametrize(
    ("cls", "what"),
    [
        (TupleNet, "a tuple"),
        (NoLogitsNet, r"a dict with keys \['scores'\] and no tensor under 'logits'"),
        (StringNet, "a str"),
    ],
)
def test_a_model_returning_something_else_fails_up_front_naming_the_type(cls, what, stream, tmp_path):
    run_dir = tmp_path / "run"
    model = cls(stream.input_shape, stream.num_classes)
    with pytest.raises(DataError, match=rf"the model {cls.__name__} returned {what}, not logits") as err:
        Learner(model, [], run_dir=run_dir, progress=False).run(stream)
    assert "return a tensor of logits [batch, classes], or a dict/object with `logits`" in str(err.value)
    assert not run_dir.exists()  # failed before anything was written


def test_language_modelling_takes_logits_from_an_output_object():
    vocab, embed = 11, nn.Embedding(11, 11)

    class LM(nn.Module):
        def forward(self, idx):
            return Output(embed(idx))

    x = torch.randint(0, vocab, (2, 5))
    out = LanguageModeling(vocab).forward(LM(), x, None)
    assert torch.equal(out, embed(x))


# --- task labels -----------------------------------------------------------------------------------------


class TaskNet(TensorNet):
    """Records the task labels its forward receives, with the inputs they came with."""

    def __init__(self, input_shape, num_classes) -> None:
        super().__init__(input_shape, num_classes)
        self.received: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, task=None):  # type: ignore[override]
        self.received.append((x, None if task is None else task.clone()))
        return self.net(x)


class ShortTaskNet(TaskNet):
    def forward(self, x, *, t):  # type: ignore[override]  # keyword-only, under the short name
        return super().forward(x, t)


@pytest.mark.parametrize("cls", [TaskNet, ShortTaskNet], ids=["task", "t"])
def test_a_model_whose_forward_takes_task_receives_the_task_labels(cls, digits):
    stream = task_incremental(digits, experiences=2)
    task_of = {}  # every sample -> its task label, from the stream itself
    for e in stream:
        for split in (e.train, e.test):
            for x, t in zip(split.x, split.t, strict=True):
                task_of[x.numpy().tobytes()] = int(t)
    model = cls(stream.input_shape, stream.num_classes)
    Learner(model, [], progress=False, **TRAIN).run(stream)
    training = sum(len(e.train) for e in stream) // TRAIN["batch_size"]
    assert len(model.received) > training  # the probe, training batches and evaluation batches
    seen = set()
    for x, task in model.received:
        assert task is not None and task.shape == (len(x),)
        assert task.tolist() == [task_of[row.numpy().tobytes()] for row in x]
        seen.update(task.tolist())
    assert seen == {0, 1}


def test_without_task_labels_a_task_aware_model_receives_none(stream):
    model = TaskNet(stream.input_shape, stream.num_classes)
    Learner(model, [], progress=False, **TRAIN).run(stream)
    assert model.received and all(task is None for _, task in model.received)


def test_the_forward_signature_is_read_once_per_model_class_not_per_step(stream, monkeypatch):
    import lifelong.objectives as objectives

    looked_at = []
    real = objectives.task_keyword
    monkeypatch.setattr(objectives, "task_keyword", lambda m: looked_at.append(type(m)) or real(m))
    model = TaskNet(stream.input_shape, stream.num_classes)
    Learner(model, [], progress=False, **TRAIN).run(stream)
    assert len(model.received) > 10
    assert looked_at == [TaskNet, TaskNet]  # once for the probe, once by the objective
    objective = Classification(stream.num_classes)
    for _ in range(3):
        objective.forward(model, stream[0].test.x[:2], None)
    assert looked_at == [TaskNet] * 3


# --- YAML: classes of one's own by import path ----------------------------------------------------------

USER_MODULE = '''
import torch
from torch import nn

from lifelong.methods import Method
from lifelong.models import MLP

CRASH = {"at_experience": None}


class Net(nn.Module):
    """Sized by the run (input_shape, num_classes), with one option; returns a dict."""

    def __init__(self, input_shape, num_classes, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.net = MLP(input_shape, num_classes, hidden=[hidden])

    def forward(self, x):
        return {"logits": self.net(x)}


class Bare(nn.Module):
    """Takes neither input_shape nor num_classes: built as Bare(**options)."""

    def __init__(self, features, classes):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


class Needs(nn.Module):
    def __init__(self, num_classes, depth):
        super().__init__()


class Shrink(Method):
    """Adds alpha * sum of squared weights; counts its calls (in the state, so resume carries them)."""

    name = "shrink"

    def __init__(self, alpha=0.1):
        self.alpha, self.calls = alpha, 0

    def params(self):
        return {"alpha": self.alpha}

    def start(self, ctx):
        if CRASH["at_experience"] == ctx.index:
            CRASH["at_experience"] = None
            raise KeyboardInterrupt("killed")

    def loss(self, ctx, batch, out):
        self.calls += 1
        return self.alpha * sum(p.square().sum() for p in ctx.model.parameters())

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state.get("calls", 0)


class Unnamed(Method):
    pass


class AlsoUnnamed(Method):
    pass


class Seeded(Method):
    name = "seeded"

    def __init__(self, seed):
        self.seed = seed


NOT_A_CLASS = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """An importable module of user classes, on sys.path for this test only; its name."""
    name = "lifelong_user_classes"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def config(model: dict, method) -> dict:
    return {
        "data": {"name": "digits", "train_per_class": 30, "test_per_class": 10},
        "scenario": {"type": "class_incremental", "experiences": 2},
        "model": model,
        "method": method,
        "train": TRAIN,
    }


def test_a_model_and_a_method_of_ones_own_run_from_a_config_and_resume(user_module, tmp_path):
    raw = config(
        {"name": f"{user_module}:Net", "hidden": 16},
        [{"name": "replay", "memory": 30}, {"name": f"{user_module}:Shrink", "alpha": 0.001}],
    )
    cfg = parse_config(raw)
    unbroken = run_config(cfg, tmp_path / "unbroken", progress=False)
    assert unbroken.method == "replay+shrink" and unbroken.matrix[0][0] > 0.5
    saved = json.loads((tmp_path / "unbroken" / "config.json").read_text())
    assert saved["model"] == {"name": f"{user_module}:Net", "hidden": 16}
    assert saved["method"][1] == {"name": f"{user_module}:Shrink", "alpha": 0.001}

    sys.modules[user_module].CRASH["at_experience"] = 1
    with pytest.raises(KeyboardInterrupt):
        run_config(parse_config(raw), tmp_path / "killed", progress=False)
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = resume(tmp_path / "killed", progress=False)  # rebuilt from config.json's import paths
    assert resumed.matrix == unbroken.matrix


def test_a_model_is_built_with_the_streams_sizes_only_where_its_constructor_takes_them(user_module, stream):
    net = build_model(f"{user_module}:Net", stream, hidden=4)
    assert net.hidden == 4 and net.net.head.out_features == stream.num_classes
    bare = build_model(f"{user_module}:Bare", stream, features=64, classes=3)
    assert bare.linear.out_features == 3


def test_a_single_method_of_ones_own_from_a_config(user_module, tmp_path):
    cfg = parse_config(config({"name": "mlp", "hidden": [16]}, {"name": f"{user_module}:Shrink"}))
    assert run_config(cfg, progress=False).method == "shrink"


@pytest.mark.parametrize(
    ("model", "method", "message"),
    [
        (
            {"name": "no_such_package.models:Net"},
            None,
            r"`model`: model 'no_such_package.models:Net': cannot import module 'no_such_package.models' "
            r"\(no module 'no_such_package'\); the module must be importable .* PYTHONPATH",
        ),
        ({"name": "{m}:Nett"}, None, r"module '{m}' has no attribute 'Nett'; check the class name"),
        ({"name": "{m}:NOT_A_CLASS"}, None, r"model '{m}:NOT_A_CLASS' is a int, not a class"),
        ({"name": "{m}:Shrink"}, None, r"model '{m}:Shrink' is not a torch.nn.Module subclass"),
        (
            {"name": "{m}:Net", "hiden": 4},
            None,
            r"model '{m}:Net' has no option 'hiden'; Net\(\) accepts hidden$",
        ),
        (
            {"name": "{m}:Net", "num_classes": 4},
            None,
            r"option 'num_classes' is set from the stream; remove it",
        ),
        ({"name": "{m}:Needs"}, None, r"model '{m}:Needs' needs option 'depth'"),
        (
            {"name": "mlp"},
            {"name": "{m}:Net"},
            r"method '{m}:Net' is not a subclass of lifelong.methods.Method",
        ),
        (
            {"name": "mlp"},
            {"name": "{m}:Shrink", "beta": 1},
            r"has no option 'beta'; Shrink\(\) accepts alpha",
        ),
        (
            {"name": "mlp"},
            [{"name": "{m}:Seeded", "seed": 1}],
            r"'seed' is set from the run's seed; remove it",
        ),
        ({"name": "{m}.Net"}, None, r"'{m}.Net' is not a known model; .* as 'package.module:Class'"),
        ({"name": "mlp"}, {"name": "{m}:"}, r"method '{m}:' is not an import path; write it as"),
    ],
)
def test_bad_import_paths_and_options_fail_when_the_config_is_read(model, method, message, user_module):
    def fill(entry):
        return json.loads(json.dumps(entry).replace("{m}", user_module))

    raw = config(fill(model), fill(method) if method is not None else {"name": "naive"})
    with pytest.raises(ConfigError, match=message.replace("{m}", user_module)):
        parse_config(raw)


def test_a_module_that_fails_to_import_is_named_with_its_error(tmp_path, monkeypatch):
    (tmp_path / "lifelong_broken_module.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError, match="importing module 'lifelong_broken_module' failed with RuntimeError"
    ):
        parse_config(config({"name": "lifelong_broken_module:Net"}, {"name": "naive"}))


# --- a method's state is checked before a checkpoint is written -------------------------------------------


class NumpyState(Method):
    name = "numpy_state"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def start(self, ctx) -> None:
        if ctx.index == 1:  # from the second experience on, the state holds a numpy array
            self.counts = np.zeros(3)

    def state_dict(self):
        return {} if self.counts is None else {"counts": self.counts}


def test_numpy_in_a_method_state_fails_naming_method_and_key_and_keeps_the_previous_checkpoint(
    stream, tmp_path
):
    run_dir = tmp_path / "run"
    model = MLP(stream.input_shape, stream.num_classes, hidden=[16])
    with pytest.raises(StateError) as err:
        Learner(model, [NumpyState()], run_dir=run_dir, progress=False, **TRAIN).run(stream)
    message = str(err.value)
    assert "method 'numpy_state'" in message and "type ndarray at key 'counts'" in message
    assert "convert numpy arrays with torch.from_numpy" in message and "store other values as JSON" in message
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST.json", "exp-0001"]
    assert json.loads((checkpoints / "LATEST.json").read_text())["checkpoint"] == "exp-0001"


@pytest.mark.parametrize(
    ("state", "what"),
    [
        ({"seen": {1, 2}}, "type set at key 'seen'"),
        ({"cfg": {"inner": [1, object()]}}, "type object at key 'cfg.inner[1]'"),
        ({"per_class": {0: 1.0}}, "a dict key of type int at key 'per_class'"),
        ({"nested": [torch.zeros(2)]}, "put each tensor under a top-level key of its own"),
        ({"step": np.int64(3)}, "numpy numbers with .item()"),
    ],
)
def test_values_a_checkpoint_cannot_hold_are_refused(state, what):
    with pytest.raises(StateError, match=rf"method 'm'.*{what}".replace("[", r"\[").replace("]", r"\]")):
        check_method_state("m", state)


def test_tensors_and_json_values_are_accepted():
    check_method_state(
        "m", {"w": torch.zeros(2), "n": 3, "x": 0.5, "ok": True, "none": None, "rows": [[1, 2], ("a", "b")],
              "by_name": {"a": {"b": [1.0]}}}
    )  # fmt: skip


# --- two custom methods under the default name ----------------------------------------------------------


class First(Method):
    pass


class Second(Method):
    pass


def test_two_methods_with_the_default_name_get_a_hint(stream, tmp_path):
    expected = (
        r"two methods have the default name 'method' \(test_user_models.First and "
        r"test_user_models.Second\), .* set a class attribute `name = \"...\"` on each custom Method subclass"
    )
    with pytest.raises(ConfigError, match=expected):
        check_composition([First(), Second()])
    with pytest.raises(ConfigError, match="two methods have the default name 'method'"):
        Learner(MLP(stream.input_shape, stream.num_classes), [First(), Second()], run_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_custom_method_under_a_built_in_name_names_both_classes():
    class MyReplay(Replay):  # kept Replay's name
        pass

    with pytest.raises(
        ConfigError, match=r"methods test_user_models.*MyReplay and Replay share the name 'replay'"
    ):
        check_composition([MyReplay(10), Replay(10)])
    with pytest.raises(ConfigError, match="method 'replay' is given twice; give each method once"):
        check_composition([Replay(10), Replay(10)])  # the same class twice: no custom class to name


def test_two_unnamed_methods_from_a_config_get_the_hint(user_module):
    methods = [{"name": f"{user_module}:Unnamed"}, {"name": f"{user_module}:AlsoUnnamed"}]
    with pytest.raises(ConfigError, match=rf"default name 'method' \({user_module}.Unnamed and "):
        parse_config(config({"name": "mlp"}, methods))
