"""The command line, driven in-process with typer's CliRunner: `run`, `resume`, `continue`, `predict`,
`report` (one run or several), `datasets`, `methods`, `init`, `demo`, the matrix as the terminal shows it,
Ctrl-C, and the README's first config, which must keep working. Start-up cost: test_cli_fast.py."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from lifelong import cli
from lifelong import datasets as registry
from lifelong.cli import app
from lifelong.config import load_config
from lifelong.version import __version__

ROOT = Path(__file__).resolve().parents[1]
FIRST = ROOT / "examples" / "first.yaml"
WIDTH = 400  # wide tables: nothing wrapped or cut
ENV = {"COLUMNS": str(WIDTH), "NO_COLOR": "1"}

# results.json: what the docs promise, plus what the report reads to label the plots
PROMISED = {
    "metric",
    "matrix",
    "summary",
    "stability_gap",
    "config",
    "seed",
    "wall_seconds",
    "lifelong_version",
}
FOR_THE_REPORT = {"initial", "method", "experience_names", "experience_start_steps"}
PER_CLASS = {"label_names", "per_class_accuracy", "confusion"}  # classification runs only
SUMMARY = {"acc", "bwt", "fwt", "forgetting", "plasticity"}

SMALL = {
    "data": {"name": "digits", "train_per_class": 40, "test_per_class": 20},
    "scenario": {"type": "class_incremental", "experiences": 3, "seed": 0},
    "model": {"name": "mlp", "hidden": [32]},
    "method": {"name": "replay", "memory": 60},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.01, "optimizer": "sgd", "eval_every": 5},
    "seed": 0,
}


def invoke(*args: str):
    # rich fixes a console's width when it is created, from $COLUMNS if set (pytest-xdist workers set 80)
    with mock.patch.object(cli.console, "_width", WIDTH), mock.patch.object(cli.errors, "_width", WIDTH):
        return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def flat(text: str) -> str:
    """Text with runs of whitespace as one space: rich wraps a table's title to the table's width."""
    return " ".join(text.split())


def write_config(folder: Path, raw: dict, name: str = "small.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One `lifelong run small.yaml train.lr=0.05 --out DIR`, shared by the tests that read its files."""
    folder = tmp_path_factory.mktemp("cli")
    config = write_config(folder, SMALL)
    out = folder / "run"
    result = invoke("run", config, "train.lr=0.05", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out, result


def test_run_writes_results_with_the_schema(small_run):
    out, _ = small_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) == PROMISED | FOR_THE_REPORT | PER_CLASS
    assert SUMMARY <= set(results["summary"])  # notes may come beside the figures
    assert results["metric"] == "accuracy"
    t = SMALL["scenario"]["experiences"]
    assert len(results["matrix"]) == t and all(len(row) == t for row in results["matrix"])
    assert all(0.0 <= v <= 1.0 for row in results["matrix"] for v in row)
    figures = {k: results["summary"][k] for k in SUMMARY - {"fwt"}}  # FWT may be null (with a note why)
    assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values())
    assert isinstance(results["stability_gap"], list) and results["stability_gap"]  # eval_every is set
    assert {"experience", "before", "min", "depth", "final", "steps_to_recover"} <= set(
        results["stability_gap"][0]
    )
    assert results["seed"] == 0 and results["lifelong_version"] == __version__
    assert isinstance(results["wall_seconds"], float) and results["wall_seconds"] > 0
    assert results["method"] == "replay" and len(results["experience_names"]) == t


def test_run_applies_overrides(small_run):
    out, _ = small_run
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["train"]["lr"] == 0.05  # the file says 0.01
    assert results["config"]["method"] == {
        "name": "replay",
        "memory": 60,
        "batch_size": None,
        "policy": "reservoir",
        "ratio": None,
        "memory_tokens": None,
        "source": "memory",
    }
    assert json.loads((out / "config.json").read_text()) == results["config"]


def test_run_writes_events_plots_and_report(small_run):
    out, result = small_run
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds.count("experience_end") == 3 and "eval" in kinds
    assert (out / "plots" / "curves.png").read_bytes().startswith(b"\x89PNG")  # evaluated in between
    assert not (out / "plots" / "matrix.png").exists()  # the page's HTML heatmap; `report` draws the PNG
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>") and "replay" in html
    # the terminal shows the matrix and the summary, and where the files are
    assert "accuracy (%), row i = after experience i, column j = tested on j" in flat(result.stdout)
    assert "ACC " in result.stdout and "BWT " in result.stdout and "forgetting" in result.stdout
    assert str(out / "results.json") in result.stdout and str(out / "report.html") in result.stdout


def test_report_rewrites_the_report(small_run):
    out, _ = small_run
    (out / "report.html").unlink()
    assert not (out / "plots" / "matrix.png").exists()  # the run's page has the matrix as an HTML heatmap
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").exists() and not (out / "plots" / "matrix.png").exists()
    result = invoke("report", out, "--plots")
    assert result.exit_code == 0, result.output
    assert (out / "plots" / "matrix.png").read_bytes().startswith(b"\x89PNG")
    assert f"report: {out / 'report.html'}" in result.stdout
    assert "ACC " in result.stdout  # and prints the run's figures again


def test_run_refuses_a_finished_run_directory(small_run):
    out, _ = small_run
    before = (out / "results.json").read_bytes()
    result = invoke("run", out.parent / "small.yaml", "train.lr=0.05", "--out", out, "--no-progress")
    assert result.exit_code == 2
    assert "error:" in result.stderr and "holds a finished run" in result.stderr
    assert (out / "results.json").read_bytes() == before


def test_run_refuses_a_directory_of_another_config(small_run):
    out, _ = small_run
    result = invoke("run", out.parent / "small.yaml", "train.lr=0.2", "--out", out, "--no-progress")
    assert result.exit_code == 2
    assert "belongs to another config" in result.stderr and "train.lr" in result.stderr


def test_run_defaults_to_runs_config_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {**SMALL, "scenario": {**SMALL["scenario"], "experiences": 2}, "train": {**SMALL["train"]}}
    raw["train"].pop("eval_every")
    config = write_config(tmp_path, raw, "two.yaml")
    result = invoke("run", config, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "two" / "results.json").exists()
    assert (tmp_path / "runs" / "two" / "report.html").exists()
    assert not (tmp_path / "runs" / "two" / "plots").exists()  # no evaluations in between: nothing drawn


def test_datasets_lists_every_source_with_its_location():
    result = invoke("datasets")
    assert result.exit_code == 0, result.output
    names = registry.names()
    assert sorted(names) == [
        "austen",
        "digits",
        "fashion_mnist",
        "fortunes",
        "gcide",
        "kjv",
        "mnist1d",
        "mnist5k",
        "python_docs",
        "wordnet_glosses",
    ]
    lines = result.stdout.splitlines()
    for name in names:
        (row,) = [line for line in lines if line.strip("│┃ ").startswith(name + " ")]
        where = registry.info(name).locate()
        assert (where in row) if where else ("missing" in row), row
        assert registry.info(name).kind in row


@pytest.mark.slow
def test_demo_prints_the_comparison_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--train-per-class", "50", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Comparison" in result.stdout
    table = result.stdout[result.stdout.index("Comparison") :]
    for header in ("method", "ACC", "BWT", "forgetting", "plasticity"):
        assert header in table
    rows = [
        line for line in table.splitlines() if line.strip("│ ").split(" ")[0] in ("naive", "replay", "joint")
    ]
    assert [r.strip("│ ").split(" ")[0] for r in rows] == ["naive", "replay", "joint"]
    assert f"report: {out / 'report.html'}" in result.stdout
    html = (out / "report.html").read_text()
    assert all(name in html for name in ("naive", "replay", "joint"))
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    for name in ("naive", "replay", "joint"):
        results = json.loads((out / name / "results.json").read_text())
        assert results["method"] == name and len(results["matrix"]) == 5
        assert results["config"]["data"]["train_per_class"] == 50
        assert (out / name / "report.html").exists()


def test_first_config_validates():
    cfg = load_config(FIRST)
    assert cfg.data.name == "fashion_mnist" and cfg.method.name == "replay"


def test_first_config_keeps_working(tmp_path):
    """The README's first config, subsampled: `lifelong run examples/first.yaml data.train_per_class=100
    data.test_per_class=50` runs end to end and writes results.json."""
    out = tmp_path / "first"
    # in the README's order: options, then overrides
    result = invoke(
        "run", FIRST, "--out", out, "--no-progress", "data.train_per_class=100", "data.test_per_class=50"
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results) == PROMISED | FOR_THE_REPORT | PER_CLASS
    assert len(results["matrix"]) == 5 and results["metric"] == "accuracy"
    assert results["config"]["data"] == {
        "name": "fashion_mnist",
        "root": None,
        "download": False,
        "train_per_class": 100,
        "test_per_class": 50,
    }
    assert results["config"]["method"]["memory"] == 500
    assert results["matrix"][0][0] > 0.5  # the first two classes are learnt
    assert (out / "report.html").exists()


# --- errors: exit code 2 and a message, no traceback ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{dir}/missing.yaml"], "config file {dir}/missing.yaml does not exist"),
        (["run", "{dir}/bad.yaml"], "unknown key `train.learning_rate`"),
        (["run", "{dir}/good.yaml", "train.lr"], "must look like section.key=value"),
        (["run", "{dir}/good.yaml", "train.lr=[1"], "is not valid YAML"),
        (["run", "{dir}/good.yaml", "method.name=ewq"], "'ewq' is not a known method"),
        (["run", "{dir}/good.yaml", "train.optimizer=adam", "train.momentum=0.9"], "`momentum` is an option"),
        (["report", "{dir}/nowhere"], "does not exist"),
        (["report", "{dir}"], "results"),
        (["resume", "{dir}"], "not a lifelong run directory"),
    ],
)
def test_errors_exit_with_code_2_and_a_message(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, {**SMALL, "train": {"learning_rate": 0.1}}, "bad.yaml")
    write_config(tmp_path, SMALL, "good.yaml")
    args = [a.format(dir=tmp_path) for a in args]
    result = invoke(*args, "--no-progress") if args[0] in ("run", "resume") else invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message.format(dir=tmp_path) in flat(result.stderr)
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing written


def test_usage_errors_exit_with_code_2():
    result = invoke("run")
    assert result.exit_code == 2 and "Missing argument" in result.output
    result = invoke("frobnicate")
    assert result.exit_code == 2 and "No such command" in result.output


# --- version and help ---------------------------------------------------------------------------------------


def test_version_prints_the_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"lifelong {__version__}"


def test_h_is_help():
    long, short = invoke("--help"), invoke("-h")
    assert long.exit_code == short.exit_code == 0
    assert short.stdout == long.stdout
    for command in ("run", "resume", "continue", "predict", "report", "datasets", "methods", "init", "demo"):
        assert f" {command} " in long.stdout
    assert invoke("run", "-h").stdout == invoke("run", "--help").stdout


# --- the matrix in the terminal -----------------------------------------------------------------------------


def fake_results(n: int, missing: bool = False) -> dict:
    """A results dict of n experiences; `missing`: rows 1-2 know only the first two experiences (as in a
    run continued with new data)."""
    matrix = [[round(0.5 + 0.01 * (i + j), 4) for j in range(n)] for i in range(n)]
    if missing:
        for i in range(2):
            matrix[i] = [v if j < 2 else None for j, v in enumerate(matrix[i])]
    summary = {"acc": 0.61, "bwt": -0.02, "fwt": None, "forgetting": 0.03, "plasticity": 0.6}
    return {"metric": "accuracy", "matrix": matrix, "summary": summary, "wall_seconds": 1.5}


def printed(results: dict, width: int) -> str:
    with mock.patch.object(cli.console, "_width", width), cli.console.capture() as captured:
        cli.print_results(results, "run")
    return captured.get()


def cells(text: str, row: str) -> list[str]:
    """The cells of the table row whose first cell is `row`."""
    for line in text.splitlines():
        parts = line.strip("│┃ ").replace("│", " ").split()
        if parts and parts[0] == row:
            return parts[1:]
    raise AssertionError(f"no row {row!r} in\n{text}")


def test_matrix_is_numbered_from_one():
    text = printed(fake_results(3), WIDTH)
    header = next(line for line in text.splitlines() if "after \\ on" in line)
    assert header.replace("┃", " ").split()[-3:] == ["1", "2", "3"]
    assert cells(text, "1") == ["50.0", "51.0", "52.0"]  # R[0][*]: after the first experience
    assert cells(text, "3") == ["52.0", "53.0", "54.0"]
    assert not any(line.strip("│ ").startswith("0 ") for line in text.splitlines())
    assert "ACC 61.0  BWT -2.0  FWT -" in text  # a missing figure shows as "-"


def test_missing_cells_show_a_dash():
    text = printed(fake_results(4, missing=True), WIDTH)
    assert cells(text, "1") == ["50.0", "51.0", "-", "-"]
    assert cells(text, "3") == ["52.0", "53.0", "54.0", "55.0"]


@pytest.mark.parametrize("width", [50, 80, 160])
def test_fifteen_experiences_fit_the_terminal(width):
    text = printed(fake_results(15), width)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "…" not in text  # nothing cut
    if width == 160:  # the whole matrix, as for a few experiences
        assert cells(text, "1")[:2] == ["50.0", "51.0"] and len(cells(text, "15")) == 15
    elif width == 80:  # the whole matrix in whole numbers, one space between columns
        assert cells(text, "1") == [str(50 + j) for j in range(15)]
        assert cells(text, "15")[-1] == "78"
    else:  # one row per experience: when learnt (the diagonal), at the end (the last row), the change
        assert "per experience" in text and "results.json" in text
        assert cells(text, "1") == ["50.0", "64.0", "+14.0"]
        assert cells(text, "15") == ["78.0", "78.0", "+0.0"]


def test_forty_experiences_fold_on_a_standard_terminal():
    text = printed(fake_results(40, missing=True), 80)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert [cells(text, str(j))[0] for j in (1, 2, 40)] == ["50.0", "52.0", "128.0"]
    assert cells(text, "1")[1:] == ["89.0", "+39.0"]


def test_perplexity_is_shown_as_it_is():
    results = {**fake_results(2), "metric": "perplexity", "matrix": [[12.5, 80.0], [20.25, 14.0]]}
    text = printed(results, WIDTH)
    assert cells(text, "2") == ["20.2", "14.0"] and "perplexity: lower is better" in text


# --- run, resume, continue: thin wrappers -------------------------------------------------------------------


class FakeResults:
    def __init__(self, results: dict) -> None:
        self.results = results

    def to_dict(self) -> dict:
        return self.results


def test_run_passes_overwrite_and_does_not_redraw_the_report(tmp_path):
    config = write_config(tmp_path, SMALL)
    out = tmp_path / "run"
    with (
        mock.patch("lifelong.experiment.run_config", return_value=FakeResults(fake_results(3))) as run_config,
        mock.patch("lifelong.evaluation.report.write_report") as write_report,
    ):
        result = invoke("run", config, "--out", out, "--overwrite", "--no-progress")
    assert result.exit_code == 0, result.output
    assert run_config.call_args.args[1] == out
    assert run_config.call_args.kwargs == {"progress": False, "overwrite": True}
    write_report.assert_not_called()  # the learner writes report.html itself
    assert f"report: {out / 'report.html'}" in result.stdout
    with mock.patch(
        "lifelong.experiment.run_config", return_value=FakeResults(fake_results(3))
    ) as run_config:
        invoke("run", config, "--out", out, "--no-progress")
    assert run_config.call_args.kwargs["overwrite"] is False


def test_run_refuses_an_out_that_is_a_file(tmp_path):
    config = write_config(tmp_path, SMALL)
    (tmp_path / "taken").write_text("mine")
    with mock.patch("lifelong.experiment.run_config") as run_config:
        result = invoke("run", config, "--out", tmp_path / "taken", "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "is a file, not a run directory" in result.stderr
    run_config.assert_not_called()
    assert (tmp_path / "taken").read_text() == "mine"


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("command", "target"),
    [
        ("run", "lifelong.experiment.run_config"),
        ("resume", "lifelong.experiment.resume"),
        ("continue", "lifelong.experiment.continue_run"),
    ],
)
@pytest.mark.parametrize("checkpointed", [True, False])
def test_ctrl_c_says_how_to_go_on(tmp_path, command, target, checkpointed):
    run_dir = tmp_path / "my run"
    args = {
        "run": ["run", write_config(tmp_path, SMALL), "--out", run_dir],
        "resume": ["resume", run_dir],
        "continue": ["continue", run_dir, "--data", tmp_path / "new.csv"],
    }[command]
    with (
        mock.patch(target, side_effect=interrupted),
        mock.patch("lifelong.state.has_checkpoint", return_value=checkpointed) as has_checkpoint,
    ):
        result = invoke(*args, "--no-progress")
    assert result.exit_code == 130
    has_checkpoint.assert_called_once_with(run_dir)
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    if checkpointed:
        assert line == f"interrupted: resume with `lifelong resume '{run_dir}'`"
    else:
        assert line == (
            "interrupted before the first checkpoint: run the same command again (add --overwrite if asked)"
        )


def test_continue_passes_the_new_data_and_prints_the_matrix(tmp_path):
    run_dir = tmp_path / "run"
    grown = fake_results(4, missing=True)
    with mock.patch("lifelong.experiment.continue_run", return_value=FakeResults(grown)) as continue_run:
        result = invoke("continue", run_dir, "--data", "a.csv", "--data", "b.csv", "--no-progress")
    assert result.exit_code == 0, result.output
    assert continue_run.call_args.args == (run_dir,)
    assert continue_run.call_args.kwargs == {"data": [Path("a.csv"), Path("b.csv")], "progress": False}
    assert cells(result.stdout, "1")[-1] == "-" and f"report: {run_dir / 'report.html'}" in result.stdout
    assert invoke("continue", run_dir).exit_code == 2  # --data is required


def test_continue_reports_errors_in_one_line(tmp_path):
    result = invoke("continue", tmp_path / "nowhere", "--data", tmp_path / "new.csv", "--no-progress")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.output


def test_predict_says_how_many_rows_and_where(tmp_path):
    def predict_file(run_dir, input_file, out):
        Path(out).write_text("prediction\n3\n1\n4\n")
        return Path(out)

    out = tmp_path / "predictions.csv"
    with mock.patch("lifelong.inference.predict_file", side_effect=predict_file, create=True) as called:
        result = invoke("predict", tmp_path / "run", tmp_path / "new.csv", "--out", out)
    assert result.exit_code == 0, result.output
    assert called.call_args.args == (tmp_path / "run", tmp_path / "new.csv", out)
    assert f"wrote 3 predictions to {out}" in flat(result.stdout)


# --- report: one run, or several compared -------------------------------------------------------------------


def test_report_compares_several_runs(small_run, tmp_path):
    out, _ = small_run
    other = tmp_path / "elsewhere" / "run"  # same folder name as `out`: the names must still differ
    shutil.copytree(out, other)
    results = json.loads((other / "results.json").read_text())
    results["summary"]["acc"] = 0.123
    (other / "results.json").write_text(json.dumps(results))
    result = invoke("report", out, other, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "report.html").exists() and (tmp_path / "cmp" / "comparison.png").exists()
    assert "Comparison" in result.stdout and f"report: {tmp_path / 'cmp' / 'report.html'}" in result.stdout
    names = cli._unique_names([out, other])
    assert len(set(names)) == 2 and all(n.endswith("/run") for n in names)
    assert cells(result.stdout, names[1])[0] == "12.3"
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert all(name in html for name in names)


def test_report_names_are_folder_names_made_unique():
    assert cli._unique_names([Path("runs/naive"), Path("runs/replay")]) == ["naive", "replay"]
    assert cli._unique_names([Path("/a/x/replay"), Path("/b/x/replay"), Path("/b/naive")]) == [
        "a/x/replay",
        "b/x/replay",
        "naive",
    ]
    assert cli._unique_names([Path("/r/one"), Path("/r/one")]) == ["one", "one-2"]


def test_report_of_one_run_refuses_out(small_run, tmp_path):
    out, _ = small_run
    result = invoke("report", out, "--out", tmp_path / "cmp")
    assert result.exit_code == 2 and "--out is where a comparison of several runs goes" in result.stderr
    assert not (tmp_path / "cmp").exists()


# --- methods ------------------------------------------------------------------------------------------------


def test_methods_lists_every_method_with_its_defaults():
    from lifelong.config import _TAGGED

    result = invoke("methods")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for name in _TAGGED["method"]:
        assert any(line.strip("│┃ ").startswith(name + " ") for line in text.splitlines()), name
    row = next(line for line in text.splitlines() if line.strip("│ ").startswith("replay "))
    assert "memory=500, batch_size=null, policy=reservoir" in row
    assert "Experience replay" in row  # its one-line description


def test_methods_name_shows_options_defaults_meanings_and_docs():
    result = invoke("methods", "replay")
    assert result.exit_code == 0, result.output
    assert cells(result.stdout, "memory")[:2] == ["int", "500"]
    assert "reservoir | class_balanced" in result.stdout
    assert "replayed samples added per batch" in result.stdout  # what an option means
    page = re.search(r"docs: (\S+)", result.stdout)[1]
    assert page == "docs/methods/replay.md" and (ROOT / page).is_file()
    naive = invoke("methods", "naive")
    assert "no options" in naive.stdout and "docs: docs/methods.md" in naive.stdout


def test_methods_every_docs_page_exists():
    from lifelong.config import _TAGGED

    for name in _TAGGED["method"]:
        assert (ROOT / cli._docs_page(name)).is_file(), name


def test_methods_unknown_name_lists_the_methods():
    result = invoke("methods", "replai")
    assert result.exit_code == 2 and "unknown method 'replai'; available: naive" in flat(result.stderr)


# --- init: starter configs ----------------------------------------------------------------------------------

TEMPLATES = ROOT / "src" / "lifelong" / "templates"


def test_init_lists_the_starter_configs():
    result = invoke("init")
    assert result.exit_code == 0, result.output
    for name in ("files", "first", "online", "permuted", "rotated", "task_incremental", "text"):
        assert any(line.strip("│ ").startswith(name + " ") for line in result.stdout.splitlines()), name
    assert cells(result.stdout, "rotated") == ["rotated", "x", "4", "fashion_mnist", "cnn", "replay"]


def test_init_writes_a_config_and_refuses_to_overwrite_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "first")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "first.yaml").read_text() == (ROOT / "examples" / "first.yaml").read_text()
    assert "lifelong run first.yaml" in result.stdout
    (tmp_path / "first.yaml").write_text("edited")
    again = invoke("init", "first")
    assert again.exit_code == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "first.yaml exists; pass --force" in again.stderr
    assert (tmp_path / "first.yaml").read_text() == "edited"
    assert invoke("init", "first", "--force").exit_code == 0
    assert (tmp_path / "first.yaml").read_text() != "edited"


def test_init_out_and_the_example_alias(tmp_path):
    result = invoke("example", "text", "--out", tmp_path / "configs" / "mine.yaml")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "configs" / "mine.yaml").read_text() == (TEMPLATES / "text.yaml").read_text()
    into_folder = invoke("init", "online", "--out", tmp_path / "configs")
    assert into_folder.exit_code == 0 and (tmp_path / "configs" / "online.yaml").exists()
    unknown = invoke("init", "firts")
    assert unknown.exit_code == 2
    assert "unknown starter config 'firts'; available: cpt_gpt, cpt_smollm2, files" in unknown.stderr


def test_every_template_is_a_valid_config():
    from lifelong.config import parse_config

    names = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
    assert names == [
        "cpt_gpt",
        "cpt_smollm2",
        "files",
        "first",
        "online",
        "permuted",
        "rotated",
        "task_incremental",
        "text",
    ]
    for path in TEMPLATES.glob("*.yaml"):
        parse_config(yaml.safe_load(path.read_text()))


def test_templates_are_the_examples():
    examples = {p.stem: p.read_text() for p in (ROOT / "examples").glob("*.yaml")}
    templates = {p.stem: p.read_text() for p in TEMPLATES.glob("*.yaml")}
    assert set(templates) - set(examples) == {"files"}  # the template for your own data has no example
    assert set(examples) <= set(templates), "ship every example as a template (src/lifelong/templates/)"
    for name, text in examples.items():
        assert templates[name] == text, f"examples/{name}.yaml and templates/{name}.yaml differ"


def test_files_template_options_in_comments_are_real_keys():
    """Uncommenting an option of the files template gives a valid config."""
    from lifelong.config import parse_config

    text = (TEMPLATES / "files.yaml").read_text()
    options = re.findall(r"^  # (\w+: [^#]+?)\s+#", text, flags=re.M)
    assert len(options) >= 3
    for option in options:
        raw = yaml.safe_load(text.replace(f"  # {option}", f"  {option}", 1))
        parse_config(raw)


def test_templates_are_package_data():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "templates/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["lifelong"]


def monthly_table(rng, labels: list[int], rows: int = 60) -> pd.DataFrame:
    y = rng.choice(labels, size=rows)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)) + 3 * y[:, None], columns=["a", "b", "c"])
    frame["label"] = y
    return frame


def test_a_users_journey_from_init_to_predict(tmp_path, monkeypatch):
    """`lifelong init files`, `run` on data/monthly/*.csv as the template says, `continue` with a new month,
    `predict` on new rows, `report`: the commands a user of their own tables meets, end to end."""
    monkeypatch.chdir(tmp_path)
    monthly = tmp_path / "data" / "monthly"
    monthly.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for month, labels in (("2026-01", [0, 1]), ("2026-02", [0, 1]), ("2026-03", [1, 2])):
        monthly_table(rng, labels).to_csv(monthly / f"{month}.csv", index=False)
    assert invoke("init", "files").exit_code == 0
    result = invoke("run", "files.yaml", "--out", "runs/mine", "--no-progress")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "mine"
    assert (run_dir / "report.html").exists()  # written by the learner, not by the CLI
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["matrix"]) == 3 and results["summary"]["acc"] > 0.5

    monthly_table(rng, [0, 2]).to_csv(tmp_path / "2026-04.csv", index=False)
    result = invoke("continue", "runs/mine", "--data", "2026-04.csv", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(cells(result.stdout, "1")) == 4 and cells(result.stdout, "1")[-1] == "-"  # not known then
    assert len(json.loads((run_dir / "results.json").read_text())["matrix"]) == 4

    monthly_table(rng, [0, 1, 2], rows=7).drop(columns="label").to_csv(tmp_path / "new.csv", index=False)
    result = invoke("predict", "runs/mine", "new.csv", "--out", "predictions.csv")
    assert result.exit_code == 0, result.output
    assert "wrote 7 predictions to predictions.csv" in flat(result.stdout)
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 7

    result = invoke("report", "runs/mine")
    assert result.exit_code == 0 and "report: runs/mine/report.html" in result.stdout
