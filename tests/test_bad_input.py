"""Bad input gets a clear error (the problem and the fix) before anything is written, and an existing run
directory is never damaged: through the CLI (exit code 2, message on stderr) and the Python API."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lifelong import state as st
from lifelong.cli import app
from lifelong.config import load_config, parse_config
from lifelong.datasets import load
from lifelong.errors import ConfigError, DataError, LifelongError, StateError
from lifelong.experiment import resume, run_config
from lifelong.learner import Learner
from lifelong.methods import Replay, build_method
from lifelong.models import MLP
from lifelong.streams.experience import Experience, Split, Stream
from lifelong.streams.scenarios import class_incremental

GOOD: dict[str, Any] = {
    "data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
    "scenario": {"type": "class_incremental", "experiences": 2, "seed": 0},
    "model": {"name": "mlp", "hidden": [8]},
    "method": {"name": "replay", "memory": 10},
    "train": {"batch_size": 10, "lr": 0.05, "momentum": 0.5, "checkpoint_every": 3},
    "seed": 0,
}


def changed(path: str, value: Any, base: dict[str, Any] = GOOD) -> dict[str, Any]:
    """GOOD with `path` (dotted) set to `value`, or removed if `value` is ...; "" replaces everything."""
    config = copy.deepcopy(base)
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return config


def write(folder: Path, config: Any, name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str | Path):
    result = CliRunner().invoke(app, [*map(str, args), "--no-progress"], catch_exceptions=False)
    return result


def squash(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines on the terminal, even inside paths


def assert_says(message: str, *phrases: str) -> None:
    for phrase in phrases:
        assert squash(phrase) in squash(message), f"{phrase!r} not in:\n{message}"


def assert_fails(result, *phrases: str) -> None:
    """The CLI exited with code 2, printed `error: ...` with every phrase on stderr, and no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    assert_says(result.stderr, *phrases)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (SHA-256) and folder below `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


# --- run directories to damage -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An unfinished run (stopped after its third checkpoint, step 6, mid-way through experience 1) and a
    finished one, both of GOOD."""
    folder = tmp_path_factory.mktemp("runs")
    cfg = parse_config(GOOD)
    run_config(cfg, folder / "finished", progress=False)
    save, saved = st.save_checkpoint, []

    def stop_after_third(run_dir: Path, **kwargs: Any) -> Path:
        out = save(run_dir, **kwargs)
        saved.append(kwargs["name"])
        if len(saved) == 3:
            raise KeyboardInterrupt
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st, "save_checkpoint", stop_after_third)
        with pytest.raises(KeyboardInterrupt):
            run_config(cfg, folder / "unfinished", progress=False)
    assert saved == ["step-000000003", "exp-0001", "step-000000006"]
    return {"finished": folder / "finished", "unfinished": folder / "unfinished"}


@pytest.fixture
def unfinished(runs, tmp_path) -> Path:
    return Path(shutil.copytree(runs["unfinished"], tmp_path / "unfinished"))


@pytest.fixture
def finished(runs, tmp_path) -> Path:
    return Path(shutil.copytree(runs["finished"], tmp_path / "finished"))


def current_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints" / "LATEST.json").read_text())["checkpoint"]


# --- config: unknown names, keys, types, impossible combinations --------------------------------------

CONFIG_ERRORS = {
    "unknown-data-set": (
        changed("data.name", "cifar10"),
        ["`data.name`: unknown data set 'cifar10'", "available: austen, digits, fashion_mnist, fortunes"],
    ),
    "unknown-method": (
        changed("method", {"name": "ewq"}),
        [
            "`method.name`: 'ewq' is not a known method",
            "choose one of naive, joint, cumulative, replay, er_ace",
        ],
    ),
    "unknown-method-in-list": (
        changed("method", [{"name": "replay"}, {"name": "ewq"}]),
        ["`method[1].name`: 'ewq' is not a known method", "choose one of"],
    ),
    "unknown-model": (
        changed("model", {"name": "resnet"}),
        ["'resnet' is not a known model; choose one of mlp, cnn, gpt"],
    ),
    "unknown-key": (
        changed("train.learning_rate", 0.1),
        ["unknown key `train.learning_rate`", "allowed here: epochs, batch_size, lr, optimizer, momentum"],
    ),
    "unknown-section": (
        changed("trian", {"lr": 0.1}),
        ["unknown key `trian`", "allowed here: data, scenario, model, method, train, seed"],
    ),
    "unknown-method-option": (
        changed("method.memroy", 5),
        [
            "unknown key `method.memroy`",
            "allowed here: name, memory, batch_size, policy, ratio, memory_tokens, source",
        ],
    ),
    "wrong-type-int": (
        changed("train.epochs", "two"),
        ["`train.epochs`: input should be a valid integer", "(got 'two')"],
    ),
    "wrong-type-list": (
        changed("model.hidden", 400),
        ["`model.hidden`: input should be a valid list (got 400)"],
    ),
    "out-of-range": (changed("train.lr", -1), ["`train.lr`: input should be greater than 0 (got -1)"]),
    "unknown-scenario": (
        changed("scenario.type", "class-incremental"),
        ["`scenario.type`: 'class-incremental' is not allowed", "'class_incremental'"],
    ),
    "missing-section": (changed("model", ...), ["missing key `model`"]),
    "online-with-epochs": (
        changed("train.epochs", 2, changed("scenario.type", "online")),
        ["scenario 'online' is a single pass over the data: set train.epochs to 1"],
    ),
    "cnn-on-sequences": (
        changed("model", {"name": "cnn"}, changed("data.name", "mnist1d")),
        ["model 'cnn' needs images but 'mnist1d' is sequences; use model 'mlp'"],
    ),
    "gpt-on-images": (
        changed("model", {"name": "gpt"}),
        ["model 'gpt' is a language model: it goes with text (scenario 'domains'"],
    ),
    "text-without-domains": (
        changed("data", {"name": "fortunes"}),
        ["data set 'fortunes' is text: use scenario type 'domains'"],
    ),
    "momentum-with-adam": (
        changed("train.optimizer", "adam"),
        ["`momentum` is an option of optimizer 'sgd', not 'adam'"],
    ),
    "angles-without-rotation": (
        changed("scenario.angles", [0, 90]),
        ["`angles` is only for scenario type 'rotated'"],
    ),
}


@pytest.mark.parametrize("config, phrases", list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS))
def test_config_errors(tmp_path, config, phrases):
    path = write(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert_says(str(err.value), "invalid config", *phrases)
    assert_fails(cli("run", path, "--out", tmp_path / "out"), *phrases)
    assert not (tmp_path / "out").exists()


def test_config_file_errors(tmp_path):
    assert_fails(cli("run", tmp_path / "nope.yaml", "--out", tmp_path / "out"), "nope.yaml does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits\nmodel: [")
    assert_fails(cli("run", bad, "--out", tmp_path / "out"), "bad.yaml is not valid YAML")
    listed = write(tmp_path, ["data", "model"], "list.yaml")
    assert_fails(cli("run", listed, "--out", tmp_path / "out"), "a config must be a mapping of sections")
    good = write(tmp_path, GOOD)
    assert_fails(cli("run", good, "train.lr", "--out", tmp_path / "out"), "must look like section.key=value")
    assert_fails(cli("run", good, "train.lr=fast", "--out", tmp_path / "out"), "`train.lr`", "(got 'fast')")
    assert not (tmp_path / "out").exists()


def test_unknown_names_through_the_api():
    with pytest.raises(
        ConfigError, match="unknown method 'ewq'; choose one of naive, joint, cumulative, replay"
    ):
        build_method("ewq")
    with pytest.raises(
        DataError, match="unknown data set 'cifar10'; available: austen, digits, fashion_mnist"
    ):
        load("cifar10")


# --- data that does not fit ----------------------------------------------------------------------------


def test_class_order_naming_missing_classes(tmp_path):
    path = write(tmp_path, changed("scenario.class_order", [0, 1, 2, 12, 15]))
    assert_fails(
        cli("run", path, "--out", tmp_path / "out"),
        "class_order names classes [12, 15] that 'digits' does not have",
        "(it has [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])",
        "list only existing classes",
    )
    assert not (tmp_path / "out").exists()
    ds = load("digits")
    with pytest.raises(DataError, match=r"class_order lists classes \[1\] more than once"):
        class_incremental(ds, 2, class_order=[0, 1, 1, 2])
    with pytest.raises(DataError, match=r"cannot split 4 classes into 5 experiences; use at most 4"):
        class_incremental(ds, 5, class_order=[0, 1, 2, 3])


def stream(
    x: list[torch.Tensor] | None = None,
    y: list[torch.Tensor] | None = None,
    input_shape: tuple[int, ...] = (6,),
    num_classes: int = 4,
) -> Stream:
    """Two experiences of 12 train and 6 test samples: classes {0, 1} then {2, 3} (x, y override them)."""
    g = torch.Generator().manual_seed(0)
    experiences = []
    for i in range(2):
        split = {}
        for name, n in (("train", 12), ("test", 6)):
            xs = torch.rand((n, *input_shape), generator=g)
            ys = torch.arange(n) % 2 + 2 * i
            split[name] = Split(xs, ys)
        experiences.append(Experience(i, split["train"], split["test"], classes=[2 * i, 2 * i + 1]))
    for k, e in enumerate(experiences):
        part = {"train": e.train, "test": e.test}
        for j, name in enumerate(("train", "test")):
            xs = x[2 * k + j] if x is not None and x[2 * k + j] is not None else part[name].x
            ys = y[2 * k + j] if y is not None and y[2 * k + j] is not None else part[name].y
            part[name] = Split(xs, ys)
        experiences[k] = Experience(k, part["train"], part["test"], classes=e.classes)
    return Stream("hand", experiences, "classification", num_classes, input_shape)


def learner(tmp_path: Path, outputs: int = 4, input_shape: tuple[int, ...] = (6,)) -> Learner:
    torch.manual_seed(0)
    return Learner(
        MLP(input_shape, outputs, hidden=[4]), [Replay(memory=5)], run_dir=tmp_path / "out", progress=False
    )


def fails_cleanly(tmp_path: Path, s: Stream, error: type[LifelongError], *phrases: str, **kw: Any) -> None:
    with pytest.raises(error) as err:
        learner(tmp_path, **kw).run(s)
    assert_says(str(err.value), *phrases)
    assert not (tmp_path / "out").exists()


def test_labels_outside_the_models_classes(tmp_path):
    fails_cleanly(
        tmp_path,
        stream(),
        DataError,
        "experience 2 (train split) has label 3, but the model has 3 outputs (valid: 0..2)",
        "build the model with at least 4 outputs or fix the labels",
        outputs=3,
    )
    negative = torch.tensor([0, 1, -1, 0, 1, 0])
    fails_cleanly(
        tmp_path,
        stream(y=[None, negative, None, None]),
        DataError,
        "experience 1 (test split) has label -1, but the model has 4 outputs",
    )


def _with(value: float, index: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.rand(shape)
    x[index] = value
    return x


@pytest.mark.parametrize(
    "where, value, index, shape, phrases",
    [
        (3, float("nan"), (3, 5), (6, 6), ["experience 2 (test split)", "(nan) at row 3, feature 5"]),
        (0, float("inf"), (7, 0), (12, 6), ["experience 1 (train split)", "(inf) at row 7, feature 0"]),
        (2, -float("inf"), (11, 2), (12, 6), ["experience 2 (train split)", "(-inf) at row 11, feature 2"]),
        # images: the feature is the position in the flattened sample ([C, H, W] = [1, 2, 3])
        (1, float("nan"), (2, 0, 1, 2), (6, 1, 2, 3), ["experience 1 (test split)", "row 2, feature 5"]),
    ],
    ids=["nan-test", "inf-train", "minus-inf", "nan-image"],
)
def test_non_finite_features(tmp_path, where, value, index, shape, phrases):
    xs: list[torch.Tensor | None] = [None] * 4
    xs[where] = _with(value, index, shape)
    if len(shape) == 2:
        s = stream(x=xs)
    else:  # every split an image of [1, 2, 3]
        others = [torch.rand((12 if i % 2 == 0 else 6, 1, 2, 3)) for i in range(4)]
        s = stream(x=[xs[i] if xs[i] is not None else others[i] for i in range(4)], input_shape=(1, 2, 3))
    kw = {"input_shape": s.input_shape}
    fails_cleanly(tmp_path, s, DataError, *phrases, "non-finite feature", "clean or impute the data", **kw)


def test_input_shape_that_does_not_fit_the_model(tmp_path):
    fails_cleanly(
        tmp_path,
        stream(),
        DataError,
        "input of shape (6,) does not fit the model MLP",
        "Build the model for the stream's input shape (e.g. MLP(stream.input_shape, ...))",
        input_shape=(4,),
    )
    fails_cleanly(
        tmp_path,
        stream(x=[None, None, torch.rand(12, 5), None]),
        DataError,
        "experience 2 (train split) has samples of shape (5,) but the stream declares (6,)",
        "every experience must have the same input shape",
    )


def test_empty_experience():
    with pytest.raises(DataError) as err:
        stream(x=[None, None, torch.rand(0, 6), None], y=[None, None, torch.zeros(0, dtype=torch.long), None])
    assert_says(
        str(err.value),
        "experience 2 of stream 'hand' has an empty training split",
        "remove it or give it data",
    )
    with pytest.raises(DataError, match="experience 1 of stream 'hand' has an empty test split"):
        stream(x=[None, torch.rand(0, 6), None, None], y=[None, torch.zeros(0, dtype=torch.long), None, None])
    with pytest.raises(DataError, match="stream 'empty' has no experiences"):
        Stream("empty", [], "classification", 2, (6,))
    with pytest.raises(DataError, match="x has 3 rows but y has 2; they must align"):
        Split(torch.zeros(3, 6), torch.zeros(2, dtype=torch.long))


def test_bad_data_leaves_an_existing_run_untouched(tmp_path, unfinished):
    """A run directory is checked only after the data: a stream that fails its checks leaves it as it was."""
    before = snapshot(unfinished)
    bad = stream(x=[None, _with(float("nan"), (0, 0), (6, 6)), None, None])
    with pytest.raises(DataError, match="non-finite"):
        Learner(MLP((6,), 4), run_dir=unfinished, progress=False).run(bad, resume=True)
    assert snapshot(unfinished) == before


# --- run directories: damaged checkpoints, other configs, non-run folders ------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "file, damage",
    [
        ("model.safetensors", _truncate),
        ("optimizer.safetensors", _flip),
        ("method-0-replay.safetensors", _flip),
        ("method-0-replay.json", _flip),
        ("progress.json", _truncate),
    ],
    ids=[
        "truncated-model",
        "tampered-optimizer",
        "tampered-memory",
        "tampered-method-json",
        "truncated-progress",
    ],
)
def test_damaged_checkpoint(unfinished, file, damage):
    path = current_checkpoint(unfinished) / file
    original = path.read_bytes()
    damage(path)
    before = snapshot(unfinished)
    assert_fails(
        cli("resume", unfinished),
        f"checkpoint file {path} is damaged (SHA-256 mismatch: truncated or modified)",
        "Restore the run directory from a backup, or start a new run in another directory",
    )
    with pytest.raises(StateError, match="is damaged"):
        resume(unfinished, progress=False)
    assert snapshot(unfinished) == before
    if file == "model.safetensors":  # undo the damage: the run goes on as if nothing had happened
        path.write_bytes(original)
        assert cli("resume", unfinished).exit_code == 0
        assert (unfinished / "results.json").exists()


@pytest.mark.parametrize("content", [b'{"checkpoint": "step-0000', b"", b"\x00garbage", b'{"checkpoint": 6}'])
def test_damaged_checkpoint_index(unfinished, content):
    (unfinished / "checkpoints" / "LATEST.json").write_bytes(content)
    before = snapshot(unfinished)
    assert_fails(cli("resume", unfinished), "checkpoint index", "LATEST.json is damaged", "backup")
    assert snapshot(unfinished) == before


def test_missing_checkpoint_file(unfinished):
    (current_checkpoint(unfinished) / "rng.safetensors").unlink()
    before = snapshot(unfinished)
    assert_fails(cli("resume", unfinished), "rng.safetensors is missing; the run directory was modified")
    assert snapshot(unfinished) == before


def test_damaged_run_config(unfinished):
    (unfinished / "config.json").write_text('{"data": ')
    before = snapshot(unfinished)
    assert_fails(cli("resume", unfinished), "run config", "config.json is damaged (not valid JSON")
    assert snapshot(unfinished) == before


@pytest.mark.parametrize("which", ["unfinished", "finished"])
def test_run_directory_of_another_config(tmp_path, request, which):
    run = request.getfixturevalue(which)
    before = snapshot(run)
    other = write(tmp_path, changed("train.lr", 0.1))
    assert_fails(
        cli("run", other, "--out", run),
        f"run directory {run} belongs to another config (key 'train.lr' is 0.05 there and 0.1 here)",
        "choose another output directory",
        f"lifelong resume {run}" if which == "unfinished" else f"lifelong continue {run} --data PATH",
        "--overwrite",
    )
    assert_fails(
        cli("run", write(tmp_path, changed("method", {"name": "naive"}), "naive.yaml"), "--out", run),
        "belongs to another config (key 'method.batch_size' is None there and 'missing' here)",
    )
    assert snapshot(run) == before


def test_same_config_on_an_existing_run(tmp_path, unfinished, finished):
    config = write(tmp_path, GOOD)
    for run, phrases in [
        (
            unfinished,
            ["holds an unfinished run of this config", f"continue it with `lifelong resume {unfinished}`"],
        ),
        (finished, ["holds a finished run", "results.json", "choose another output directory"]),
    ]:
        before = snapshot(run)
        assert_fails(cli("run", config, "--out", run), *phrases)
        assert snapshot(run) == before


def test_api_run_directory_of_another_learner(tmp_path):
    s = stream()
    learner(tmp_path).run(s)
    before = snapshot(tmp_path / "out")
    torch.manual_seed(0)
    other = Learner(
        MLP((6,), 4, hidden=[4]), [Replay(memory=5)], run_dir=tmp_path / "out", progress=False, lr=0.5
    )
    with pytest.raises(StateError) as err:
        other.run(s)
    assert_says(str(err.value), "belongs to another config (key 'train.lr' is 0.01 there and 0.5 here)")
    assert snapshot(tmp_path / "out") == before


def test_edited_config_json_that_no_longer_fits_the_checkpoint(unfinished):
    """config.json changed by hand (a wider model, a larger memory): the checkpoint does not fit, which is
    found before events.jsonl is cut back to the checkpoint."""
    config = json.loads((unfinished / "config.json").read_text())
    config["model"]["hidden"] = [16]
    (unfinished / "config.json").write_text(json.dumps(config))
    before = snapshot(unfinished)
    assert_fails(
        cli("resume", unfinished), "checkpoint model does not fit this model", "belongs to another model"
    )
    assert snapshot(unfinished) == before
    config["model"]["hidden"], config["method"]["memory"] = [8], 20
    (unfinished / "config.json").write_text(json.dumps(config))
    before = snapshot(unfinished)
    assert_fails(cli("resume", unfinished), "saved memory has capacity 10", "this memory has 20")
    assert snapshot(unfinished) == before


def test_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "data").mkdir()
    before = snapshot(folder)
    assert_fails(
        cli("run", write(tmp_path, GOOD), "--out", folder),
        f"{folder} exists and is not a lifelong run directory (no config.json)",
        "choose an empty or new output directory",
    )
    assert_fails(
        cli("resume", folder), f"{folder} is not a lifelong run directory (no config.json); nothing to resume"
    )
    assert snapshot(folder) == before


def test_resume_without_a_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails(cli("resume", empty), "is not a lifelong run directory (no config.json); nothing to resume")
    assert list(empty.iterdir()) == []
    assert_fails(cli("resume", tmp_path / "nowhere"), "nothing to resume")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(StateError, match="nothing to resume"):
        resume(tmp_path / "nowhere")
    with pytest.raises(StateError, match="nothing to resume in"):
        learner(tmp_path).run(stream(), resume=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(StateError, match="resume=True needs a run_dir"):
        Learner(MLP((6,), 4), progress=False).run(stream(), resume=True)


def test_diverging_training_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    from lifelong import datasets
    from lifelong.errors import TrainingDivergedError
    from lifelong.learner import Learner
    from lifelong.models import MLP
    from lifelong.streams import class_incremental

    stream = class_incremental(datasets.load("digits"), experiences=2)
    torch.manual_seed(0)
    model = MLP(stream.input_shape, 10, [32])
    learner = Learner(
        model, lr=1e12, momentum=0.9, checkpoint_every=1000, run_dir=tmp_path / "run", progress=False
    )
    with pytest.raises(TrainingDivergedError, match=r"diverged.*lower train\.lr"):
        learner.run(stream)
    assert not (tmp_path / "run" / "results.json").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("exp-*"))  # nothing diverged was checkpointed
