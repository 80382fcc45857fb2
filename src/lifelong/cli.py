"""Keep a model learning from a stream of new data: train, resume, continue, predict, report.

Start with `lifelong init` (starter configs), `lifelong methods` and `lifelong datasets`.
"""

# Start-up time matters here: `lifelong --help` should answer at once. Only typer, rich and the standard
# library are imported at the top; each command imports what it needs (torch, pydantic, matplotlib) inside.

from __future__ import annotations

import contextlib
import csv
import json
import re
import shlex
import time
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lifelong.errors import LifelongError
from lifelong.version import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
errors = Console(stderr=True)

INTERRUPTED = 130  # the exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it
MISSING = "-"  # a matrix cell with no value (runs continued with new data have none for later experiences)


def _fail(err: Exception | str) -> typing.NoReturn:
    errors.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        console.print(f"lifelong {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Options before the command: only --version (the app's help is the module docstring)."""


# --- terminal tables ----------------------------------------------------------------------------------------


def _number(v: float | None, scale: float, decimals: int = 1, sign: bool = False) -> str:
    if v is None:
        return MISSING
    return f"{v * scale:+.{decimals}f}" if sign else f"{v * scale:.{decimals}f}"


def _fits(table: Table) -> bool:
    """Whether the table's natural width fits the terminal, i.e. rich will not wrap its cells."""
    unbounded = console.options.update(max_width=1_000_000)  # measured within the terminal it always fits
    return console.measure(table, options=unbounded).maximum <= console.width


def _matrix_table(matrix: list[list[float | None]], title: str, scale: float, compact: bool) -> Table:
    """R[i][j], numbered from 1. Compact: whole numbers and no cell borders, for many experiences."""
    decimals = 0 if compact else 1
    table = (
        Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)  # one space between columns
        if compact
        else Table(title=title)
    )
    table.add_column("after \\ on")
    for j in range(len(matrix[-1])):
        table.add_column(str(j + 1), justify="right")
    for i, row in enumerate(matrix):
        table.add_row(str(i + 1), *[_number(v, scale, decimals) for v in row])
    return table


def _folded_table(matrix: list[list[float | None]], title: str, scale: float) -> Table:
    """Too many experiences for a matrix: one row per experience, just after learning it and at the end."""
    table = Table(title=title)
    for col in ("experience", "when learnt", "at the end", "change"):
        table.add_column(col, justify="right")
    last = matrix[-1]
    for j, final in enumerate(last):
        learnt = matrix[j][j] if j < len(matrix) and j < len(matrix[j]) else None
        change = None if learnt is None or final is None else final - learnt
        table.add_row(
            str(j + 1), _number(learnt, scale), _number(final, scale), _number(change, scale, sign=True)
        )
    return table


def print_matrix(results: dict, title: str) -> None:
    """The matrix as a table that fits the terminal: full, then compact, then folded per experience."""
    metric = results["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit = " (%)" if metric == "accuracy" else ""
    matrix = results["matrix"]
    heading = f"{title}: {metric}{unit}, row i = after experience i, column j = tested on j"
    for compact in (False, True):
        table = _matrix_table(matrix, heading, scale, compact)
        if _fits(table):
            console.print(table)
            return
    console.print(_folded_table(matrix, f"{title}: {metric}{unit} per experience", scale))
    console.print(
        f"({len(matrix[-1])} experiences are too many columns for this terminal: per experience, its "
        "value when learnt and at the end; the whole matrix is in results.json and report.html)",
        highlight=False,
    )


def print_results(results: dict, title: str) -> None:
    """The summary figures and the matrix of one run, as tables."""
    print_matrix(results, title)
    metric = results["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    s = results["summary"]
    first = "ACC" if metric == "accuracy" else "mean perplexity"
    note = "" if metric == "accuracy" else "  (perplexity: lower is better; BWT/FWT < 0 means better)"
    wall = results.get("wall_seconds")
    console.print(
        f"{first} {_number(s.get('acc'), scale)}  BWT {_number(s.get('bwt'), scale, sign=True)}  "
        f"FWT {_number(s.get('fwt'), scale, sign=True)}  "
        f"forgetting {_number(s.get('forgetting'), scale)}  plasticity {_number(s.get('plasticity'), scale)}"
        + (f"  ({wall:.1f} s)" if isinstance(wall, int | float) else "")
        + note,
        highlight=False,
    )


def print_comparison(named: dict[str, dict]) -> None:
    """One row per run: the summary figures side by side."""
    metric = next(iter(named.values()))["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    what = "accuracy %" if metric == "accuracy" else "perplexity, lower is better"
    table = Table(title=f"Comparison ({what}, mean over all experiences after the last one)")
    first = "ACC" if metric == "accuracy" else "mean ppl"
    for col in ("method", first, "BWT", "forgetting", "plasticity", "wall s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, r in named.items():
        s = r["summary"]
        wall = r.get("wall_seconds")
        table.add_row(
            name,
            _number(s.get("acc"), scale),
            _number(s.get("bwt"), scale, sign=True),
            _number(s.get("forgetting"), scale),
            _number(s.get("plasticity"), scale),
            f"{wall:.1f}" if isinstance(wall, int | float) else MISSING,
        )
    console.print(table)


def _finish(results: dict, run_dir: Path) -> None:
    # The learner writes report.html at the end of a run with a run directory; it is not drawn again here.
    print_results(results, str(run_dir))
    console.print(f"results: {run_dir / 'results.json'}   report: {run_dir / 'report.html'}", highlight=False)


@contextlib.contextmanager
def _interruptible(run_dir: Path) -> Iterator[None]:
    """Ctrl-C: one line saying how to go on, exit status 130, no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        from lifelong.state import has_checkpoint

        if has_checkpoint(run_dir):
            line = f"interrupted: resume with `lifelong resume {shlex.quote(str(run_dir))}`"
        else:
            line = (
                "interrupted before the first checkpoint: run the same command again "
                "(add --overwrite if asked)"
            )
        errors.print(line, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=INTERRUPTED) from None


# --- training -----------------------------------------------------------------------------------------------

Progress = Annotated[bool, typer.Option(help="show progress bars")]


@app.command()
def run(
    config: Annotated[
        Path, typer.Argument(help="YAML config (see docs/config.md; `lifelong init` writes one)")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value, e.g. train.lr=0.05")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default: runs/<config name>)")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace what the run directory holds (a finished or another config's run)")
    ] = False,
    progress: Progress = True,
) -> None:
    """Train and evaluate the run a config describes; write results.json, events.jsonl and report.html."""
    out = out or Path("runs") / config.stem
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file, not a run directory; name a folder (new or a run directory)")
    from lifelong.experiment import load_config, run_config

    try:
        cfg = load_config(config, overrides or [])
        with _interruptible(out):
            results = run_config(cfg, out, progress=progress, overwrite=overwrite)
    except LifelongError as err:
        _fail(err)
    _finish(results.to_dict(), out)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with checkpoints")],
    progress: Progress = True,
) -> None:
    """Continue a stopped or killed run from its last checkpoint."""
    from lifelong.experiment import resume as resume_run

    try:
        with _interruptible(run_dir):
            results = resume_run(run_dir, progress=progress)
    except LifelongError as err:
        _fail(err)
    _finish(results.to_dict(), run_dir)


@app.command("continue")
def continue_(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="new data, read like scenario.path: a file, or a folder (repeatable)"),
    ],
    progress: Progress = True,
) -> None:
    """A finished run learns new data from where it stopped; the matrix grows by the new experiences."""
    from lifelong.experiment import continue_run

    try:
        with _interruptible(run_dir):
            results = continue_run(run_dir, data=list(data), progress=progress)
    except LifelongError as err:
        _fail(err)
    _finish(results.to_dict(), run_dir)


# --- using a run --------------------------------------------------------------------------------------------


def _count_rows(path: Path) -> int | None:
    """Rows in a predictions file (CSV: without its header; JSONL: lines), or None for other formats."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="") as f:
            return max(0, sum(1 for _ in csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")) - 1)
    if suffix in (".jsonl", ".ndjson"):
        with path.open() as f:
            return sum(1 for line in f if line.strip())
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    input_file: Annotated[
        Path,
        typer.Argument(metavar="INPUT", help="a table with the run's feature columns (CSV, Parquet, ...)"),
    ],
    out: Annotated[Path, typer.Option("--out", help="where to write the predictions")],
) -> None:
    """Predict with the trained model of a run: one prediction per row of INPUT."""
    from lifelong.inference import predict_file

    try:
        path = predict_file(run_dir, input_file, out)
    except LifelongError as err:
        _fail(err)
    rows = _count_rows(path)
    count = "predictions" if rows is None else f"{rows} prediction{'' if rows == 1 else 's'}"
    console.print(f"wrote {count} to {path}", highlight=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory of a language model, with a checkpoint")],
    out_dir: Annotated[Path, typer.Argument(help="a new (or empty) folder")],
    merge_adapters: Annotated[
        bool,
        typer.Option(
            "--merge-adapters", help="merge LoRA adapters into the weights (default: a peft adapter folder)"
        ),
    ] = False,
) -> None:
    """Write a run's language model as a Hugging Face folder: AutoModelForCausalLM.from_pretrained(OUT_DIR)
    loads it, with its tokenizer."""
    from lifelong.lm.export import export_run

    try:
        path = export_run(run_dir, out_dir, merge_adapters=merge_adapters)
    except LifelongError as err:
        _fail(err)
    console.print(f"exported to {path}", highlight=False)


def _unique_names(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names; where two runs share one, as many parent folders as tell them apart (then -2, -3)."""
    parts = [d.resolve().parts for d in run_dirs]
    distinct = set(parts)
    names = []
    for p in parts:
        k = 1
        while k < len(p) and sum(q[-k:] == p[-k:] for q in distinct) > 1:
            k += 1
        names.append("/".join(p[-k:]))
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # the same folder given twice
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


@app.command()
def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(metavar="RUN...", help="a finished run directory, or several to compare")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="with several runs: folder of the comparison (default: runs/compare-<time>)"),
    ] = None,
    plots: Annotated[
        bool, typer.Option(help="also draw plots/matrix.png and plots/confusion.png (for slides, papers)")
    ] = False,
) -> None:
    """(Re)write report.html of a run (and with --plots its figures as PNG files), or one page comparing
    several runs."""
    from lifelong.evaluation.report import write_comparison_report, write_report

    if len(run_dirs) == 1 and out is not None:
        _fail("--out is where a comparison of several runs goes; one run's report is written into the run")
    names = _unique_names(run_dirs)
    try:
        if len(run_dirs) == 1:
            path = write_report(run_dirs[0], plots=plots)
        else:
            out = out or Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
            path = write_comparison_report(dict(zip(names, run_dirs, strict=True)), out)
    except LifelongError as err:
        _fail(err)
    # the report functions checked results.json; reading it again needs only json (not lifelong.state)
    named = {
        name: json.loads((d / "results.json").read_text()) for name, d in zip(names, run_dirs, strict=True)
    }
    if len(run_dirs) == 1:
        print_results(next(iter(named.values())), str(run_dirs[0]))
    else:
        print_comparison(named)
    console.print(f"report: {path}", highlight=False)


# --- what there is ------------------------------------------------------------------------------------------


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
        found = escape(where) if where else f"[red]missing[/]: {escape(info.how_to_get)}"
        table.add_row(name, info.kind, escape(info.description), found)
    console.print(table)


def _type_name(annotation: Any) -> str:
    """A config field's type as written in YAML: `int`, `int | null`, `reservoir | class_balanced`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, type(int | None)):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_value(value: Any) -> str:
    """A default as it would be written in a config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


_COMMENT = re.compile(r"^\s+(\w+)\s*:.*#\s*(.+)$")
_OPTION = re.compile(r"`(\w+)`(:| \()")  # "`memory`: ..." or "`memory` (...)" in a method's docstring


def _paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _field_notes(config_class: type) -> dict[str, str]:
    """The comment at the end of each field's line in config.py, which says what the option means."""
    import inspect

    try:
        lines = inspect.getsource(config_class).splitlines()
    except (OSError, TypeError):  # no source shipped (e.g. a zip import): the docstrings remain
        return {}
    return {m[1]: m[2].strip() for m in map(_COMMENT.match, lines) if m}


def _docstring_notes(doc: str) -> dict[str, str]:
    """Options a method's docstring explains: "`memory` (stored samples), ..." or "`memory`: stored; ..."."""
    text, notes = _paragraph(doc), {}
    for m in _OPTION.finditer(text):
        rest = text[m.end() :]
        if m[2] == ":":
            notes[m[1]] = rest.split(";")[0].strip().rstrip(".")
            continue
        depth = 1
        for k, ch in enumerate(rest):  # up to the parenthesis that closes this one
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                notes[m[1]] = rest[:k].strip()
                break
    return notes


def _description(method: type) -> str:
    """One line on what a method does: its class docstring, or its module's when the class's lists options."""
    import sys

    own = _paragraph(method.__doc__)
    if own and "`" not in own and "Options" not in own:
        return own
    return _paragraph(sys.modules[method.__module__].__doc__)


def _method_rows() -> dict[str, tuple[str, list[tuple[str, str, str, str]]]]:
    """name -> (one-line description, [(option, type, default, meaning)]), in the registry's order."""
    from lifelong.config import _TAGGED
    from lifelong.methods import METHODS

    rows = {}
    for name, config_class in _TAGGED["method"].items():
        notes = {**_docstring_notes(METHODS[name].__doc__ or ""), **_field_notes(config_class)}
        options = [
            (
                option,
                _type_name(field.annotation),
                _yaml_value(field.get_default(call_default_factory=True)),
                notes.get(option, ""),
            )
            for option, field in config_class.model_fields.items()  # type: ignore[attr-defined]
            if option != "name"
        ]
        rows[name] = (_description(METHODS[name]), options)
    return rows


def _docs_page(name: str) -> str:
    """The method's docs page in the source repository; the baselines share docs/methods.md."""
    page = f"docs/methods/{name}.md"
    repository = Path(__file__).resolve().parents[2]
    return page if (repository / page).is_file() else "docs/methods.md"


@app.command()
def methods(
    name: Annotated[str | None, typer.Argument(help="a method, e.g. replay: its options in full")] = None,
) -> None:
    """List the built-in methods with their options and defaults, or one method in full."""
    rows = _method_rows()
    if name is None:
        table = Table(title="Methods (config: method: {name: NAME, option: value, ...}; a list composes)")
        for col in ("name", "description", "options (defaults)"):
            table.add_column(col, overflow="fold")
        for method, (doc, options) in rows.items():
            table.add_row(
                method, escape(doc), escape(", ".join(f"{o}={d}" for o, _, d, _ in options)) or MISSING
            )
        console.print(table)
        console.print("One method in full: lifelong methods NAME", highlight=False)
        return
    if name not in rows:
        _fail(f"unknown method {name!r}; available: {', '.join(rows)}")
    doc, options = rows[name]
    console.print(f"[bold]{name}[/]: {escape(doc)}", highlight=False)
    if options:
        table = Table()
        for col in ("option", "type", "default", "meaning"):
            table.add_column(col, overflow="fold")
        for row in options:
            table.add_row(*map(escape, row))
        console.print(table)
    else:
        console.print("no options", highlight=False)
    console.print(f"config: method: {{name: {name}}}   docs: {_docs_page(name)}", highlight=False)


# --- starter configs ----------------------------------------------------------------------------------------


def _templates() -> dict[str, str]:
    """name -> text of the starter configs shipped in the package (src/lifelong/templates/*.yaml)."""
    from importlib.resources import files

    folder = files("lifelong").joinpath("templates")
    return {
        entry.name.removesuffix(".yaml"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def _describe(text: str) -> tuple[str, str, str, str]:
    """(scenario, data, model, method) of a template, read from its YAML."""
    import yaml

    raw = yaml.safe_load(text)
    scenario = raw["scenario"]
    corpora = raw.get("data", {}).get("name") if raw.get("data") else None
    listed = scenario.get("domains") or (corpora if isinstance(corpora, list) else [])
    count = scenario.get("experiences") or len(listed)
    experiences = f" x {count}" if count else ""
    name = raw["data"]["name"] if raw.get("data") else "your files"
    data = " + ".join(name) if isinstance(name, list) else name
    methods = raw["method"] if isinstance(raw["method"], list) else [raw["method"]]
    return (
        scenario["type"] + experiences,
        data,
        raw["model"]["name"],
        " + ".join(m["name"] for m in methods),
    )


@app.command()
def init(
    name: Annotated[str | None, typer.Argument(help="a starter config; none: list them")] = None,
    out: Annotated[Path | None, typer.Option(help="file to write (default: NAME.yaml here)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Write a starter config to edit and run (`lifelong init first`, then `lifelong run first.yaml`)."""
    templates = _templates()
    if name is None:
        table = Table(title="Starter configs")
        for col in ("name", "scenario", "data", "model", "method"):
            table.add_column(col, overflow="fold")
        for template, text in templates.items():
            table.add_row(template, *map(escape, _describe(text)))
        console.print(table)
        console.print("Write one: lifelong init NAME --out FILE", highlight=False)
        return
    if name not in templates:
        _fail(f"unknown starter config {name!r}; available: {', '.join(templates)}")
    path = out or Path(f"{name}.yaml")
    if path.is_dir():
        path = path / f"{name}.yaml"
    if path.exists() and not force:
        _fail(f"{path} exists; pass --force to overwrite it, or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(templates[name], encoding="utf-8")
    console.print(f"wrote {path}: edit it, then run `lifelong run {shlex.quote(str(path))}`", highlight=False)


app.command("example", help="Same as `lifelong init NAME`: write a starter config.")(init)


# --- the demo -----------------------------------------------------------------------------------------------


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="output folder (default: runs/demo-<time>)")] = None,
    progress: Progress = True,
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
    console.print(f"report: {report_path}", highlight=False)


# --- the model store (lifelong.cli_store) -------------------------------------------------------------------

from lifelong import cli_store  # noqa: E402  (typer and rich only: the store is imported when a command runs)

app.add_typer(cli_store.store_app, name="store")
app.command("update")(cli_store.update)
app.command("forget")(cli_store.forget)


if __name__ == "__main__":  # pragma: no cover
    app()
