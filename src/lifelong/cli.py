"""The command line: `lifelong run | demo | resume | report | datasets`.

Each command is a few lines over the public Python API (`lifelong.experiment`, `lifelong.evaluation.report`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lifelong.errors import LifelongError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
errors = Console(stderr=True)


def _fail(err: Exception) -> None:
    errors.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def print_results(results: dict, title: str) -> None:
    """The summary figures and the matrix of one run, as tables."""
    metric = results["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit = " (%)" if metric == "accuracy" else ""
    s = results["summary"]
    matrix = Table(title=f"{title}: {metric}{unit}, row i = after experience i, column j = tested on j")
    matrix.add_column("after \\ on")
    for j in range(len(results["matrix"])):
        matrix.add_column(str(j), justify="right")
    for i, row in enumerate(results["matrix"]):
        matrix.add_row(str(i), *[f"{v * scale:.1f}" for v in row])
    console.print(matrix)
    fwt = "n/a" if s["fwt"] is None else f"{s['fwt'] * scale:+.1f}"
    first = "ACC" if metric == "accuracy" else "mean perplexity"
    note = "" if metric == "accuracy" else "  (perplexity: lower is better; BWT/FWT < 0 means better)"
    console.print(
        f"{first} {s['acc'] * scale:.1f}  BWT {s['bwt'] * scale:+.1f}  FWT {fwt}  "
        f"forgetting {s['forgetting'] * scale:.1f}  plasticity {s['plasticity'] * scale:.1f}  "
        f"({results['wall_seconds']:.1f} s){note}"
    )


def print_comparison(named: dict[str, dict]) -> None:
    table = Table(title="Comparison (accuracy %, mean over all experiences after the last one)")
    for col in ("method", "ACC", "BWT", "forgetting", "plasticity", "wall s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, r in named.items():
        s = r["summary"]
        table.add_row(
            name,
            f"{100 * s['acc']:.1f}",
            f"{100 * s['bwt']:+.1f}",
            f"{100 * s['forgetting']:.1f}",
            f"{100 * s['plasticity']:.1f}",
            f"{r['wall_seconds']:.1f}",
        )
    console.print(table)


def _finish(results: dict, run_dir: Path, report: Path) -> None:
    print_results(results, str(run_dir))
    console.print(f"results: {run_dir / 'results.json'}   report: {report}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config (see docs/config.md)")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value, e.g. train.lr=0.05")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default: runs/<config name>)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train and evaluate the run a config describes; write results.json, events, plots and report.html."""
    from lifelong.evaluation.report import write_report
    from lifelong.experiment import load_config, run_config

    try:
        cfg = load_config(config, overrides or [])
        out = out or Path("runs") / config.stem
        results = run_config(cfg, out, progress=progress)
        _finish(results.to_dict(), out, write_report(out))
    except LifelongError as err:
        _fail(err)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with checkpoints")],
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Continue a stopped or killed run from its last checkpoint."""
    from lifelong.evaluation.report import write_report
    from lifelong.experiment import resume as resume_run

    try:
        results = resume_run(run_dir, progress=progress)
        _finish(results.to_dict(), run_dir, write_report(run_dir))
    except LifelongError as err:
        _fail(err)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")]) -> None:
    """(Re)write the plots and report.html of a finished run."""
    from lifelong.evaluation.report import write_report
    from lifelong.state import read_json

    try:
        path = write_report(run_dir)
        print_results(read_json(run_dir / "results.json", "results"), str(run_dir))
    except LifelongError as err:
        _fail(err)
    console.print(f"report: {path}")


@app.command()
def datasets() -> None:
    """List the data sources and where each is found on this machine."""
    from lifelong import datasets as registry

    table = Table(title="Data sources")
    for col in ("name", "kind", "description", "found at"):
        table.add_column(col, overflow="fold")
    for name in registry.names():
        info = registry.info(name)
        where = info.locate()
        table.add_row(name, info.kind, info.description, where or f"[red]missing[/]: {info.how_to_get}")
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="output folder (default: runs/demo-<time>)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    train_per_class: Annotated[int | None, typer.Option(help="subsample for a quick look")] = None,
) -> None:
    """Split Fashion-MNIST (5 experiences x 2 classes), MLP: Naive vs Replay (memory 500) vs Joint."""
    from lifelong.demo import run_demo

    try:
        out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
        named, report_path = run_demo(out, progress=progress, train_per_class=train_per_class)
    except LifelongError as err:
        _fail(err)
    for name, r in named.items():
        print_results(r, name)
    print_comparison(named)
    console.print(f"report: {report_path}")


if __name__ == "__main__":  # pragma: no cover
    app()
