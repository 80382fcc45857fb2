"""Every message the guide's troubleshooting table quotes is the real one: each is triggered here and the
quote must appear in the error, and every quote in the table has a trigger."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lifelong
from lifelong import datasets
from lifelong.config import load_config, parse_config
from lifelong.errors import LifelongError
from lifelong.experiment import continue_run, resume, run_config
from lifelong.learner import Learner
from lifelong.models import MLP
from lifelong.streams import class_incremental

ROOT = Path(__file__).resolve().parents[1]


def quotes() -> list[str]:
    text = (ROOT / "docs" / "guide.md").read_text().split("## Troubleshooting", 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `(.*?)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]


def csv_folder(root: Path, label: str = "label", n: int = 3) -> Path:
    data = root / "data"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
        frame[label] = ["x", "y"] * 20
        frame.to_csv(data / f"m{i + 1}.csv", index=False)
    return data


def files_cfg(data: Path, **train) -> dict:
    return {
        "scenario": {"type": "files", "path": str(data)},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 1, **train},
    }


def digits_learner(run_dir: Path) -> tuple[Learner, object]:
    stream = class_incremental(datasets.load("digits"), experiences=2)
    model = MLP(stream.input_shape, stream.num_classes, hidden=[8])
    return Learner(model, epochs=1, run_dir=run_dir, progress=False), stream


def unknown_key(tmp: Path) -> None:
    parse_config({**files_cfg(csv_folder(tmp)), "train": {"lrr": 0.1}})


def no_cuda(tmp: Path) -> None:
    parse_config(files_cfg(csv_folder(tmp), device="cuda"))


def diverged(tmp: Path) -> None:
    cfg = files_cfg(csv_folder(tmp), lr=1e9, log_every=1, epochs=20, batch_size=4)
    run_config(parse_config(cfg), tmp / "run", progress=False)


def another_config(tmp: Path) -> None:
    data = csv_folder(tmp)
    run_config(parse_config(files_cfg(data)), tmp / "run", progress=False)
    run_config(parse_config(files_cfg(data, lr=0.5)), tmp / "run", progress=False)


def finished(tmp: Path) -> None:
    data = csv_folder(tmp)
    run_config(parse_config(files_cfg(data)), tmp / "run", progress=False)
    run_config(parse_config(files_cfg(data)), tmp / "run", progress=False)


def file_deleted(tmp: Path) -> None:
    data = csv_folder(tmp)
    cfg = parse_config(files_cfg(data))
    original = Learner._checkpoint

    def stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    Learner._checkpoint = stop  # type: ignore[method-assign]
    try:
        run_config(cfg, tmp / "run", progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        Learner._checkpoint = original  # type: ignore[method-assign]
    (data / "m3.csv").unlink()
    resume(tmp / "run", progress=False)


def not_a_run_dir(tmp: Path) -> None:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("mine")
    run_config(parse_config(files_cfg(csv_folder(tmp))), tmp / "mine", progress=False)


def python_run_to_cli(tmp: Path) -> None:
    learner, stream = digits_learner(tmp / "py")
    learner.run(stream)  # type: ignore[arg-type]
    continue_run(tmp / "py", [tmp], progress=False)


def other_initial_weights(tmp: Path) -> None:
    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt

    original = Learner._checkpoint
    Learner._checkpoint = stop  # type: ignore[method-assign]
    try:
        lifelong.seed(0)
        learner, stream = digits_learner(tmp / "r")
        learner.run(stream)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass
    finally:
        Learner._checkpoint = original  # type: ignore[method-assign]
    torch.manual_seed(1)
    learner, stream = digits_learner(tmp / "r")
    learner.run(stream, resume=True)  # type: ignore[arg-type]


def no_label_column(tmp: Path) -> None:
    config = tmp / "run.yaml"
    config.write_text("scenario: {type: files, path: data}\nmodel: {name: mlp}\n")
    csv_folder(tmp, label="target")
    run_config(load_config(config), tmp / "run", progress=False)


def wrong_input_size(tmp: Path) -> None:
    stream = class_incremental(datasets.load("digits"), experiences=2)
    Learner(MLP((10,), stream.num_classes), epochs=1, progress=False).run(stream)


def new_class(tmp: Path) -> None:
    data = csv_folder(tmp)
    run_config(parse_config(files_cfg(data)), tmp / "run", progress=False)
    frame = pd.DataFrame(np.zeros((10, 3)), columns=["a", "b", "c"])
    frame["label"] = ["x", "z"] * 5
    frame.to_csv(tmp / "new.csv", index=False)
    continue_run(tmp / "run", [tmp / "new.csv"], progress=False)


TRIGGERS: dict[str, Callable[[Path], None]] = {
    "unknown key `train.lrr`; allowed here:": unknown_key,
    "'cuda' is not available: this torch": no_cuda,
    "training diverged: the loss is": diverged,
    "belongs to another config (key": another_config,
    "holds a finished run": finished,
    "changed since it started: the stream had": file_deleted,
    "exists and is not a lifelong run directory": not_a_run_dir,
    "was started from Python, so the command line cannot rebuild": python_run_to_cli,
    "initial weights differ": other_initial_weights,
    "has no label column 'label'": no_label_column,
    "does not fit the model": wrong_input_size,
    "the run's model has outputs for": new_class,
}


def test_every_quote_in_the_table_has_a_trigger():
    assert quotes() == list(TRIGGERS)


@pytest.mark.parametrize("quote", list(TRIGGERS))
def test_the_guide_quotes_the_real_message(quote, tmp_path):
    with pytest.raises(LifelongError) as err:
        TRIGGERS[quote](tmp_path)
    assert quote in " ".join(str(err.value).split()), str(err.value)
