"""The model store on the command line: `lifelong store ...`, `lifelong update`, `lifelong forget`.

Every command takes `--json` (machine-readable output on stdout). Exit codes: 0 success, 2 a clear error
(nothing written), 3 the gate refused the candidate (it is recorded, not promoted).
Only typer and rich are imported here; each command imports the store when it runs.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lifelong.errors import LifelongError

REFUSED = 3  # exit status of `update` when the gate refuses the candidate

store_app = typer.Typer(
    no_args_is_help=True,
    help="Versions of a model: a store with lineage, gated promotion, rollback and deletion.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # whole lines: messages are grepped and copied

Json = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
StorePath = Annotated[Path, typer.Argument(metavar="STORE", help="the store's folder")]


def _fail(err: Exception | str) -> typing.NoReturn:
    errors.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def _emit(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _open(path: Path) -> Any:
    from lifelong.store import Store

    return Store(path)


def _store_first(*args: str) -> list[str]:
    """The arguments with the store's folder first: `store show STORE V` and `store show V STORE` both work
    (the folder holding store.json is the store)."""
    from lifelong.store.store import STORE_FILE

    folders = [a for a in args if (Path(a).expanduser() / STORE_FILE).is_file()]
    if not folders or (Path(args[0]).expanduser() / STORE_FILE).is_file():
        return list(args)
    first = folders[0]
    rest = list(args)
    rest.remove(first)
    return [first, *rest]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _versions_table(versions: list[Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("version", "parent", "status", "origin", "experiences", "mean", "created", "by", "tags"):
        table.add_column(
            column, justify="right" if column in ("version", "parent", "experiences") else "left"
        )
    for v in versions:
        mark = " *" if v.promoted else ""
        table.add_row(
            f"v{v.number}{mark}",
            _fmt(v.parent and f"v{v.parent}"),
            v.status,
            v.origin,
            str(len(v.data)),
            f"{v.metrics.get('metric', '')} {_fmt(v.metrics.get('mean'))}",
            v.created,
            v.creator,
            ", ".join(v.tags),
        )
    return table


def _gate_lines(gate: dict[str, Any]) -> list[str]:
    lines = [f"gate: {'passed' if gate['passed'] else 'REFUSED'}: {gate['reason']}"]
    for row in gate.get("tracked", []):
        lines.append(
            f"  {row['name']}: {_fmt(row['promoted'])} -> {_fmt(row['candidate'])} "
            f"({row['change']:+.2%}){'' if row['ok'] else '  <- beyond tolerance'}"
        )
    flips = gate.get("flips") or {}
    if flips:
        lines.append(
            f"  negative flips: {flips['negative_flips']} of {flips['samples']} "
            f"({flips['negative_flip_rate']:.2%}); positive flips {flips['positive_flip_rate']:.2%}"
        )
        worst = [c for c in flips.get("per_class", []) if c["negative_flips"]][:5]
        if worst:
            lines.append(
                "  most flips: "
                + ", ".join(f"{c['name']} {c['negative_flips']}/{c['samples']}" for c in worst)
            )
        examples = flips.get("examples", [])[:5]
        if examples:
            lines.append(
                "  examples (index: label, was -> now): "
                + "; ".join(f"{e['index']}: {e['label']}, {e['old']} -> {e['new']}" for e in examples)
            )
    return lines


# --- store commands ----------------------------------------------------------------------------------------


@store_app.command("init")
def init(
    store: StorePath,
    db: Annotated[
        str | None, typer.Option("--db", help="database URL of the index (default: SQLite inside STORE)")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            help="gate: largest drop of a tracked metric (accuracy: absolute; perplexity: relative)"
        ),
    ] = 0.01,
    max_nfr: Annotated[float, typer.Option("--max-nfr", help="gate: largest negative flip rate")] = 0.05,
    as_json: Json = False,
) -> None:
    """Make an empty store (its index in SQLite, or in the database --db postgresql://USER@HOST/DB)."""
    from lifelong.store import Store
    from lifelong.store.gate import GatePolicy
    from lifelong.store.index import safe_url

    try:
        made = Store.init(store, db=db, gate=GatePolicy(tolerance, max_nfr))
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit({"store": str(made.path), "db": safe_url(made.url), "id": made.id})
    else:
        console.print(f"store {made.path} (index: {safe_url(made.url)})", highlight=False)


@store_app.command("import")
def import_(
    store: StorePath,
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    as_json: Json = False,
) -> None:
    """A finished run becomes a version (the first one is promoted)."""
    from lifelong.store.update import import_run

    try:
        version = import_run(_open(store), run_dir)
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(version.summary())
    else:
        state = "promoted" if version.promoted else "recorded as a candidate (promote it to serve it)"
        console.print(f"v{version.number}: {state}", highlight=False)


@store_app.command("list")
def list_(store: StorePath, as_json: Json = False) -> None:
    """Every version, with its parent and status (* marks the promoted one)."""
    try:
        versions = _open(store).versions()
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit([v.summary() for v in versions])
    elif not versions:
        console.print("no versions yet", highlight=False)
    else:
        console.print(_versions_table(versions))


@store_app.command("show")
def show(
    args: Annotated[
        list[str], typer.Argument(metavar="STORE V", help="the store and a version (number or tag)")
    ],
    as_json: Json = False,
) -> None:
    """One version: lineage, data, metrics, gate, deletions; its files are verified."""
    try:
        store_path, ref = _two(args, "show", "V")
        s = _open(Path(store_path))
        version = s.version(ref)
        s.directory(version)  # verified: a tampered version says so here
        deletions = [d for d in s.deletions() if d["version"] == version.number]
    except LifelongError as err:
        _fail(err)
    payload = version.as_dict()
    payload["deletions"] = [
        {k: v for k, v in d.items() if k != "ids"} | {"deleted": len(d["ids"])} for d in deletions
    ]
    if as_json:
        _emit(payload)
        return
    console.print(_versions_table([version]))
    for t in version.metrics.get("tracked", []):
        console.print(f"  {t['name']}: {version.metrics['metric']} {_fmt(t['value'])}", highlight=False)
    if version.gate:
        for line in _gate_lines(version.gate):
            console.print(line, highlight=False, markup=False)
    for d in payload["deletions"]:
        after = d["audit"].get("after", {})
        console.print(
            f"  deletion ({d['mode']}): {d['deleted']} sample(s); MIA AUC {_fmt(after.get('mia_auc'))}, "
            f"forget accuracy {_fmt(after.get('forget_accuracy'))}, "
            f"test accuracy {_fmt(after.get('test_accuracy'))}",
            highlight=False,
        )


def _two(args: list[str], command: str, what: str) -> tuple[str, str]:
    if len(args) != 2:
        raise LifelongError(f"store {command} takes STORE {what}; got {len(args)} argument(s)")
    a, b = _store_first(*args)
    return a, b


@store_app.command("diff")
def diff(
    args: Annotated[list[str], typer.Argument(metavar="STORE A B", help="the store and two versions")],
    flips: Annotated[bool, typer.Option(help="rebuild the data and count the flipped predictions")] = True,
    as_json: Json = False,
) -> None:
    """What changed from version A to B: config, data, metrics, flipped predictions."""
    from lifelong.store.diff import diff as diff_versions

    try:
        if len(args) != 3:
            raise LifelongError(f"store diff takes STORE A B; got {len(args)} argument(s)")
        store_path, a, b = _store_first(*args)
        result = diff_versions(_open(Path(store_path)), a, b, with_flips=flips)
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(result)
        return
    console.print(f"v{result['a']} -> v{result['b']}", highlight=False)
    for change in result["config"]:
        console.print(
            f"  config {change['key']}: {change['a']!r} -> {change['b']!r}", highlight=False, markup=False
        )
    data = result["data"]
    console.print(
        f"  data: {data['samples_a']} -> {data['samples_b']} training samples; new: "
        f"{', '.join(data['only_in_b']) or '-'}; gone: {', '.join(data['only_in_a']) or '-'}",
        highlight=False,
        markup=False,
    )
    for m in result["metrics"]:
        console.print(f"  {m['name']}: {_fmt(m['a'])} -> {_fmt(m['b'])}", highlight=False, markup=False)
    f = result["flips"]
    if f:
        console.print(
            f"  negative flips {f['negative_flips']} of {f['samples']} ({f['negative_flip_rate']:.2%}), "
            f"positive {f['positive_flip_rate']:.2%}",
            highlight=False,
        )


@store_app.command("promote")
def promote(
    args: Annotated[list[str], typer.Argument(metavar="STORE V", help="the store and a version")],
    force: Annotated[
        bool, typer.Option("--force", help="promote a version the gate refused (logged)")
    ] = False,
    reason: Annotated[str, typer.Option(help="why (kept in the log)")] = "",
    as_json: Json = False,
) -> None:
    """Serve version V."""
    try:
        store_path, ref = _two(args, "promote", "V")
        version = _open(Path(store_path)).promote(ref, force=force, reason=reason)
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(version.summary())
    else:
        console.print(f"v{version.number} is promoted", highlight=False)


@store_app.command("rollback")
def rollback(store: StorePath, as_json: Json = False) -> None:
    """Serve the version promoted before the current one again."""
    try:
        old, new = _open(store).rollback()
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit({"from": old.number, "to": new.number, "promoted": new.number})
    else:
        console.print(f"rolled back from v{old.number} to v{new.number}", highlight=False)


@store_app.command("tag")
def tag(
    args: Annotated[
        list[str], typer.Argument(metavar="STORE V NAME", help="the store, a version, a tag name")
    ],
    as_json: Json = False,
) -> None:
    """Name a version (a tag moves if it existed)."""
    try:
        if len(args) != 3:
            raise LifelongError(f"store tag takes STORE V NAME; got {len(args)} argument(s)")
        store_path, ref, name = _store_first(*args)
        version = _open(Path(store_path)).tag(ref, name)
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(version.summary())
    else:
        console.print(f"v{version.number} is tagged {name}", highlight=False)


@store_app.command("gc")
def gc(store: StorePath, as_json: Json = False) -> None:
    """Remove what crashed writes left (unlisted directories); versions are kept."""
    try:
        result = _open(store).gc()
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(result)
    else:
        console.print(
            f"removed {len(result['removed'])} leftover(s), {result['bytes_freed'] / 1e6:.1f} MB",
            highlight=False,
        )


@store_app.command("log")
def log(store: StorePath, as_json: Json = False) -> None:
    """Every change to the store: who, when, what."""
    try:
        entries = _open(store).log()
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(entries)
        return
    for e in entries:
        detail = {k: v for k, v in e.items() if k not in ("time", "who", "action", "version")}
        version = f"v{e['version']}" if e["version"] is not None else ""
        console.print(
            f"{e['time']} {e['who']} {e['action']} {version} {detail or ''}", highlight=False, markup=False
        )


# --- update and forget (top-level commands) -------------------------------------------------------------


def update(
    store: StorePath,
    config: Annotated[Path, typer.Option("--config", help="the run config naming the new data")],
    tolerance: Annotated[float | None, typer.Option(help="override the store's gate tolerance")] = None,
    max_nfr: Annotated[
        float | None, typer.Option("--max-nfr", help="override the store's flip limit")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    as_json: Json = False,
) -> None:
    """Train a candidate from the promoted version on the config's new data; promote it if the gate passes
    (exit code 3 when it refuses). On an empty store, train version 1 from the config."""
    from lifelong.store.gate import GatePolicy
    from lifelong.store.update import update as run_update

    try:
        s = _open(store)
        base = s.gate_policy()
        policy = GatePolicy(
            base.tolerance if tolerance is None else tolerance,
            base.max_negative_flip_rate if max_nfr is None else max_nfr,
        )
        result = run_update(s, config, policy=policy, progress=progress and not as_json)
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(result.as_json())
    else:
        v = result.version
        console.print(
            f"v{v.number} (from {'nothing' if v.parent is None else f'v{v.parent}'}): "
            f"{'promoted' if v.promoted else v.status}  ({result.seconds:.1f} s)",
            highlight=False,
        )
        if result.gate is not None:
            for line in _gate_lines(result.gate):
                console.print(line, highlight=False, markup=False)
        for note in result.notes:
            console.print(note, highlight=False)
    if result.gate is not None and not result.gate["passed"]:
        raise typer.Exit(code=REFUSED)


def forget(
    store: StorePath,
    ids: Annotated[
        str, typer.Option("--ids", help="ids: ID1,ID2,... or a file (one per line, or a JSON list)")
    ],
    exact: Annotated[bool, typer.Option("--exact", help="retrain without the data (the default)")] = False,
    approximate: Annotated[
        bool, typer.Option("--approximate", help="unlearn in place (NegGrad+ / SCRUB) and purge memories")
    ] = False,
    method: Annotated[str, typer.Option(help="approximate: neggrad+ or scrub")] = "neggrad+",
    steps: Annotated[int, typer.Option(help="approximate: optimizer steps")] = 100,
    lr: Annotated[float, typer.Option(help="approximate: learning rate")] = 0.01,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    as_json: Json = False,
) -> None:
    """Delete training samples from the served model; the result is a new, promoted version with an audit."""
    from lifelong.store.forget import forget as run_forget
    from lifelong.store.forget import read_ids

    try:
        if exact and approximate:
            raise LifelongError("choose one of --exact and --approximate")
        mode = "approximate" if approximate else "exact"
        result = run_forget(
            _open(store),
            read_ids(ids),
            mode,
            method=method,
            steps=steps,
            lr=lr,
            progress=progress and not as_json,
        )
    except LifelongError as err:
        _fail(err)
    if as_json:
        _emit(result.as_json())
        return
    after, before = result.audit["after"], result.audit["before"]
    console.print(
        f"v{result.version.number}: {result.mode} deletion of {len(result.ids)} sample(s), promoted "
        f"({result.seconds:.1f} s)",
        highlight=False,
    )
    for key in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_auc"):
        console.print(f"  {key}: {_fmt(before.get(key))} -> {_fmt(after.get(key))}", highlight=False)
