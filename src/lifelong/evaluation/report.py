"""Plots and a self-contained HTML page for a finished run, made from its files alone.

The report reads `results.json` (the accuracy or perplexity matrix and the figures derived from it) and
`events.jsonl` (the periodic `eval` events that show the stability gap) from a run directory, so it can be
made again for any run, on any machine, without the code or data that produced it:

    write_report("runs/replay")            # runs/replay/report.html, runs/replay/plots/*.png
    write_comparison_report({"Naive": Path("runs/naive"), "Replay": Path("runs/replay")}, "runs/compare")

`R[i][j]` is the metric on experience j's test set after training on experience i. Accuracy is stored as a
fraction and shown in percent; perplexity is shown as it is (lower is better). Every file is written
atomically (a temporary file in the same folder, then `os.replace`), and the HTML page loads nothing from
outside itself: images are base64 data URIs, the CSS is inline and there is no JavaScript.

matplotlib is imported only when a plot is drawn, and only through its object API (`Figure`), so no
backend is switched and no pyplot state is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import DataError, StateError
from lifelong.state import atomic_write_bytes

__all__ = ["plot_matrix", "plot_curves", "plot_comparison", "write_report", "write_comparison_report"]

_METRICS = ("accuracy", "perplexity")
_DPI = 110
_MAX_ANNOTATED = 16  # beyond this many columns numbers get unreadable (and slow); the HTML table has them
_NAMED_TICKS = 12  # up to this many experiences the heatmap axes show their names, past it their indices
_LABEL_CHARS = 28  # experience names longer than this are shortened on plot axes and legends


# --------------------------------------------------------------------------------------------- reading


def _load_results(run_dir: Path) -> dict[str, Any]:
    """`run_dir/results.json`, checked; a missing or damaged file is a StateError saying what to do."""
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise StateError(f"run directory {run_dir} does not exist (or is not a directory); check the path.")
    if not path.is_file():
        raise StateError(
            f"{path} not found: the run in {run_dir} has not finished, so there is nothing to report yet. "
            f"Finish it with `lifelong resume {shlex.quote(str(run_dir))}`, then make the report again."
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path} could not be read as JSON ({exc}); the file is damaged.") from exc
    _check_results(results, str(path))
    return results


def _check_results(results: Any, where: str) -> None:
    """Raise StateError naming `where` unless `results` has a known metric and a rectangular matrix."""
    if not isinstance(results, Mapping):
        raise StateError(f"{where}: expected a JSON object, got {type(results).__name__}.")
    metric = results.get("metric")
    if metric not in _METRICS:
        raise StateError(f"{where}: 'metric' is {metric!r}; expected one of {', '.join(_METRICS)}.")
    matrix = results.get("matrix")
    if (
        not isinstance(matrix, list)
        or not matrix
        or not all(isinstance(row, list) and row for row in matrix)
        or len({len(row) for row in matrix}) != 1
    ):
        raise StateError(f"{where}: 'matrix' must be a non-empty list of equally long, non-empty rows.")
    for row in matrix:
        for v in row:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise StateError(f"{where}: 'matrix' holds {v!r}; expected numbers.")


def _read_events(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The `eval` events of `run_dir/events.jsonl` and how many unreadable lines were skipped.

    A run killed mid-write can leave a torn last line; it is skipped rather than failing the report.
    """
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return [], 0
    events: list[dict[str, Any]] = []
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(event, dict) and event.get("event") == "eval":
                events.append(event)
    return events, bad


def _matrix(results: Mapping[str, Any]) -> np.ndarray:
    return np.array([[math.nan if v is None else float(v) for v in row] for row in results["matrix"]])


def _initial(results: Mapping[str, Any], ncols: int) -> np.ndarray | None:
    initial = results.get("initial")
    if not isinstance(initial, list) or len(initial) != ncols:
        return None
    try:
        return np.array([math.nan if v is None else float(v) for v in initial])
    except (TypeError, ValueError):
        return None


def _names(results: Mapping[str, Any], n: int) -> list[str]:
    """Experience names, falling back to "exp j" for any that are missing."""
    given = results.get("experience_names")
    given = given if isinstance(given, list) else []
    return [str(given[j]) if j < len(given) and given[j] is not None else f"exp {j}" for j in range(n)]


def _short(name: str, limit: int = _LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _eval_series(events: Iterable[Mapping[str, Any]], ncols: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps (sorted) and values (steps x test sets) of the eval events.

    After a resume the same step can be evaluated twice; the later event wins. Missing values are NaN.
    """
    by_step: dict[int, list[Any]] = {}
    for ev in events:
        if ev.get("event", "eval") != "eval" or not isinstance(ev.get("values"), list):
            continue
        try:
            by_step[int(ev["step"])] = ev["values"]
        except (KeyError, TypeError, ValueError):
            continue
    steps = np.array(sorted(by_step), dtype=float)
    width = max([ncols, *(len(v) for v in by_step.values())])
    values = np.full((len(steps), width), math.nan)
    for r, step in enumerate(sorted(by_step)):
        for c, v in enumerate(by_step[step]):
            with contextlib.suppress(TypeError, ValueError):
                values[r, c] = math.nan if v is None else float(v)
    return steps, values


def _start_steps(results: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> list[float]:
    """Global step at which each experience began; inferred from the eval events when not recorded."""
    starts = results.get("experience_start_steps")
    if isinstance(starts, list) and starts and all(isinstance(s, int | float) for s in starts):
        return [float(s) for s in starts]
    first: dict[int, float] = {}
    for ev in events:
        exp, step = ev.get("experience"), ev.get("step")
        if isinstance(exp, int) and isinstance(step, int | float):
            first[exp] = min(first.get(exp, math.inf), float(step))
    return [first[k] for k in sorted(first)]


# ------------------------------------------------------------------------------------------ formatting


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _nonfinite(v: float | None) -> str | None:
    if v is None:
        return "n/a"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return None


def _fmt_cell(v: float | None, metric: str) -> str:
    """A matrix cell: accuracy in percent, perplexity raw, one decimal."""
    if v is None or not math.isfinite(v):
        return _nonfinite(v) or "n/a"
    return f"{v * _scale(metric):.1f}"


def _fmt_level(v: Any, metric: str) -> str:
    """A level such as ACC or plasticity: 85.31% or a raw perplexity."""
    v = _as_float(v)
    if (bad := _nonfinite(v)) is not None:
        return bad
    return f"{v * 100:.2f}%" if metric == "accuracy" else f"{v:.2f}"


def _fmt_delta(v: Any, metric: str) -> str:
    """A difference such as BWT or forgetting: signed, in percentage points for accuracy."""
    v = _as_float(v)
    if (bad := _nonfinite(v)) is not None:
        return bad
    return f"{v * 100:+.2f} pp" if metric == "accuracy" else f"{v:+.2f}"


def _as_float(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt_seconds(v: Any) -> str:
    s = _as_float(v)
    if s is None or not math.isfinite(s):
        return "n/a"
    if s < 60:
        return f"{s:.1f} s"
    minutes, seconds = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


_SUMMARY_KEYS = ("acc", "bwt", "fwt", "forgetting", "plasticity")
_SUMMARY_LABELS = {
    "acc": "ACC",
    "bwt": "BWT",
    "fwt": "FWT",
    "forgetting": "Forgetting",
    "plasticity": "Plasticity",
}


def _summary_value(key: str, v: Any, metric: str) -> str:
    return _fmt_level(v, metric) if key in ("acc", "plasticity") else _fmt_delta(v, metric)


def _definitions(metric: str) -> dict[str, str]:
    acc = metric == "accuracy"
    better = "higher is better" if acc else "lower is better"
    bwt_sign = "negative means forgetting" if acc else "positive means old experiences got worse"
    return {
        "acc": f"Mean of the last row of R: the final {metric} averaged over every experience's test set "
        f"({better}).",
        "bwt": "Mean over j < T−1 of R[T−1][j] − R[j][j]: how later training changed what was already "
        f"learned ({bwt_sign}).",
        "fwt": "Mean over j > 0 of R[j−1][j] − initial[j]: what earlier experiences did for an experience "
        "before training on it, against the untrained model "
        + ("(positive helps)." if acc else "(negative helps).")
        + " Needs `initial`; n/a without it.",
        "forgetting": "Mean over old experiences of the best earlier value"
        + ("" if acc else " (the lowest perplexity)")
        + " minus the final one, signed so that positive means forgotten.",
        "plasticity": f"Mean of the diagonal R[i][i]: how well each experience was learned right after "
        f"training on it ({better}).",
    }


# -------------------------------------------------------------------------------------------- drawing


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    fig.clear()  # nothing is registered with pyplot; clearing frees the artists right away
    return buf.getvalue()


def _cmap_and_norm(metric: str, values: np.ndarray) -> tuple[Any, Any, bool]:
    """Colormap and norm for a heatmap: fixed 0-100% for accuracy, reversed (and log when wide) for ppl."""
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize

    finite = values[np.isfinite(values)]
    if metric == "accuracy":
        return matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9"), Normalize(0.0, 100.0), False
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#d9d9d9")
    if finite.size == 0:
        return cmap, Normalize(0.0, 1.0), False
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > 20:
        return cmap, LogNorm(lo, hi), True
    return cmap, Normalize(lo, hi if hi > lo else lo + 1.0), False


def _text_color(rgba: tuple[float, ...]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def _matrix_png(results: Mapping[str, Any], title: str | None = None) -> bytes:
    metric = results["metric"]
    r = _matrix(results)
    shown = r * _scale(metric)
    nrows, ncols = shown.shape
    names = _names(results, ncols)
    cmap, norm, log = _cmap_and_norm(metric, shown)

    fig = _figure(min(12.0, max(5.0, 2.8 + 0.7 * ncols)), min(9.5, max(4.0, 1.8 + 0.55 * nrows)))
    ax = fig.add_subplot()
    image = ax.imshow(
        np.ma.masked_invalid(shown), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest"
    )
    label = "accuracy (%)" if metric == "accuracy" else "perplexity" + (" (log scale)" if log else "")
    fig.colorbar(image, ax=ax, label=label + ("" if metric == "accuracy" else ", lower is better"))

    _label_axis(ax.xaxis, names, ncols)
    _label_axis(ax.yaxis, names, nrows)
    if ncols <= _NAMED_TICKS and (ncols > 4 or max(len(n) for n in names) > 8):
        for t in ax.get_xticklabels():
            t.set_rotation(35)
            t.set_ha("right")
    ax.set_xlabel("evaluated on exp j (test set)")
    ax.set_ylabel("after training on exp i")
    ax.set_title(title or f"{metric} matrix R[i][j]" + (" (%)" if metric == "accuracy" else ""))

    # Lay out once without the cell numbers, then freeze the layout: saving draws those many texts once.
    fig.get_layout_engine().execute(fig)
    fig.set_layout_engine(None)
    if ncols <= _MAX_ANNOTATED:
        size = float(np.clip(11 - 0.25 * ncols, 6, 10))
        rgba = cmap(norm(np.ma.masked_invalid(shown)))  # one vectorized call, not one per cell
        for i in range(nrows):
            for j in range(ncols):
                v = shown[i, j]
                text = _fmt_cell(r[i, j], metric)
                if math.isfinite(v) and abs(v) >= 1e4:
                    text = f"{v:.3g}"
                color = _text_color(tuple(rgba[i, j])) if math.isfinite(v) else "black"
                weight = "bold" if i == j else "normal"
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color, fontweight=weight)
    return _png(fig)


def _label_axis(axis: Any, names: list[str], n: int) -> None:
    """Experience names on a heatmap axis while few; past that, every k-th index (names are in the table)."""
    if n <= _NAMED_TICKS:
        axis.set_ticks(range(n), [_short(names[k]) if k < len(names) else f"exp {k}" for k in range(n)])
    else:
        step = math.ceil(n / 20)
        axis.set_ticks(range(0, n, step), [str(k) for k in range(0, n, step)])


def _curves_png(
    results: Mapping[str, Any], events: Iterable[Mapping[str, Any]], title: str | None = None
) -> bytes | None:
    events = list(events)
    metric = results["metric"]
    ncols = len(results["matrix"][0])
    steps, values = _eval_series(events, ncols)
    if steps.size == 0:
        return None
    values = values * _scale(metric)
    names = _names(results, values.shape[1])

    fig = _figure(9.0, 4.6)
    ax = fig.add_subplot()
    colors = _palette(values.shape[1])
    marker = "o" if steps.size <= 60 else None
    for j in range(values.shape[1]):
        ax.plot(
            steps,
            values[:, j],
            color=colors[j],
            marker=marker,
            markersize=3,
            linewidth=1.4,
            label=_short(names[j]),
        )

    starts = _start_steps(results, events)
    every = math.ceil(len(starts) / 12) if starts else 1  # label at most ~12 boundaries
    for k, start in enumerate(starts):
        ax.axvline(start, color="0.35", linestyle="--", linewidth=0.9)
        if k % every:
            continue
        ax.text(
            start,
            1.0,
            f" e{k}",
            transform=ax.get_xaxis_transform(),
            va="bottom",
            ha="left",
            fontsize=8,
            color="0.3",
        )

    finite = values[np.isfinite(values)]
    if metric == "accuracy":
        ax.set_ylim(-2, 102)
        ax.set_ylabel("accuracy (%)")
    else:
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
            ax.set_yscale("log")
        ax.set_ylabel("perplexity (lower is better)")
    ax.set_xlabel("global training step")
    ax.grid(True, alpha=0.3)
    ax.legend(
        title="test set",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
        ncols=1 if values.shape[1] <= 20 else 2,
    )
    ax.set_title(title or f"{metric} on each test set during training (dashed: an experience starts)", pad=14)
    return _png(fig)


def _palette(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


_COMPARED = (("acc", "ACC"), ("forgetting", "Forgetting"), ("bwt", "BWT"))


def _comparison_png(named_results: Mapping[str, Mapping[str, Any]]) -> bytes:
    metric = _common_metric(named_results)
    acc = metric == "accuracy"
    scale = _scale(metric)
    runs = list(named_results)
    colors = _palette(len(runs))
    hints = {
        "acc": "higher is better" if acc else "lower is better",
        "forgetting": "lower is better",
        "bwt": "higher is better" if acc else "lower is better",
    }

    fig = _figure(min(16.0, max(9.0, 3.0 + 1.1 * len(runs) * 3)), 4.2)
    axes = fig.subplots(1, len(_COMPARED))
    for ax, (key, label) in zip(axes, _COMPARED, strict=True):
        raw = [_as_float((named_results[n].get("summary") or {}).get(key)) for n in runs]
        vals = [v * scale if v is not None and math.isfinite(v) else math.nan for v in raw]
        x = np.arange(len(runs))
        bars = ax.bar(x, [0.0 if math.isnan(v) else v for v in vals], color=colors, width=0.7)
        for bar, v in zip(bars, vals, strict=True):
            text = "n/a" if math.isnan(v) else f"{v:.1f}"
            y = 0.0 if math.isnan(v) else v
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, y),
                xytext=(0, 3 if y >= 0 else -3),
                textcoords="offset points",
                ha="center",
                va="bottom" if y >= 0 else "top",
                fontsize=8,
            )
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xticks(
            x,
            [_short(n, 16) for n in runs],
            rotation=30 if len(runs) > 3 else 0,
            ha="right" if len(runs) > 3 else "center",
        )
        unit = (" (%)" if key == "acc" else " (pp)") if acc else ""
        ax.set_title(f"{label}{unit}\n{hints[key]}", fontsize=10)
        ax.use_sticky_edges = False  # leave room beyond 0 for the labels of negative bars
        ax.margins(y=0.15)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Runs compared ({metric})")
    return _png(fig)


def _common_metric(named_results: Mapping[str, Mapping[str, Any]]) -> str:
    if not named_results:
        raise DataError("nothing to compare: pass at least one run.")
    for name, results in named_results.items():
        _check_results(results, f"run {name!r}")
    metrics = {name: results["metric"] for name, results in named_results.items()}
    if len(set(metrics.values())) != 1:
        listed = ", ".join(f"{n}: {m}" for n, m in metrics.items())
        raise DataError(
            f"cannot compare runs scored by different metrics ({listed}); compare like with like."
        )
    return next(iter(metrics.values()))


# ---------------------------------------------------------------------------------------- public plots


def plot_matrix(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Heatmap of the matrix R with each cell's value; returns the PNG's path.

    Rows: after training on exp i; columns: evaluated on exp j. Accuracy in percent on a fixed 0-100 scale,
    perplexity raw with a reversed colormap (bright is good in both), log-scaled when it spans a wide range.
    """
    _check_results(results, "results")
    path = Path(path)
    atomic_write_bytes(path, _matrix_png(results))
    return path


def plot_curves(
    results: Mapping[str, Any], events: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path | None:
    """Metric on every test set over global steps, from the `eval` events; dashed lines where experiences
    start. This is the plot that shows the stability gap. Writes nothing and returns None without evals."""
    _check_results(results, "results")
    png = _curves_png(
        results, [e for e in events if isinstance(e, Mapping) and e.get("event", "eval") == "eval"]
    )
    if png is None:
        return None
    path = Path(path)
    atomic_write_bytes(path, png)
    return path


def plot_comparison(named_results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Bars of ACC, forgetting and BWT for several runs (e.g. Naive, Replay, Joint); returns the PNG's path.

    All runs must share one metric (DataError otherwise). A figure a run does not have is drawn as "n/a".
    """
    path = Path(path)
    atomic_write_bytes(path, _comparison_png(named_results))
    return path


# ----------------------------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d0d0;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f3f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.diag{font-weight:bold;outline:2px solid #333;outline-offset:-2px}tr.initial td{font-style:italic}
.meta td:first-child{font-weight:600;background:#f8f8fa}.note{color:#555;font-size:.88rem}
img{max-width:100%;height:auto;display:block;margin:.6rem 0}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.85rem;border:1px solid #e1e4e8}
.scroll{overflow-x:auto}
"""
# Belt and braces for "self-contained": the browser itself refuses all but inline styles and data: images.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _num_td(text: str, raw: Any = None, extra: str = "", style: str = "") -> str:
    title = f' title="{_e(raw)}"' if raw is not None else ""
    cls = f"num {extra}".strip()
    st = f' style="{style}"' if style else ""
    return f'<td class="{cls}"{title}{st}>{_e(text)}</td>'


def _summary_table(results: Mapping[str, Any]) -> str:
    metric = results["metric"]
    summary: Mapping[str, Any] = results["summary"] if isinstance(results.get("summary"), Mapping) else {}
    defs = _definitions(metric)
    rows = ["<table>", "<tr><th>Figure</th><th>Value</th><th>Definition</th></tr>"]
    for key in _SUMMARY_KEYS:
        v = summary.get(key)
        rows.append(
            f"<tr><td>{_e(_SUMMARY_LABELS[key])}</td>{_num_td(_summary_value(key, v, metric), v)}"
            f"<td>{_e(defs[key])}</td></tr>"
        )
    rows.append("</table>")
    unit = (
        "Accuracy values are in percent; differences in percentage points (pp)."
        if metric == "accuracy"
        else "Perplexity values are raw; lower is better."
    )
    rows.append(f'<p class="note">{_e(unit)}</p>')
    return "\n".join(rows)


def _matrix_table(results: Mapping[str, Any]) -> str:
    metric = results["metric"]
    r = _matrix(results)
    nrows, ncols = r.shape
    names = _names(results, ncols)
    initial = _initial(results, ncols)
    cmap, norm, _ = _cmap_and_norm(metric, r * _scale(metric))
    colors = cmap(norm(np.ma.masked_invalid(r * _scale(metric))))  # the heatmap's colours, in one call

    def cell(i: int, j: int) -> str:
        v, style = r[i, j], ""
        if math.isfinite(v):
            rgba = tuple(colors[i, j])
            style = f"background:{_hex(rgba)};color:{_text_color(rgba)}"
        return _num_td(_fmt_cell(v, metric), repr(float(v)), "diag" if i == j else "", style)

    out = [
        '<div class="scroll"><table>',
        "<tr><th>after training on ↓ / evaluated on →</th>"
        + "".join(f"<th>{_e(n)}</th>" for n in names)
        + "</tr>",
    ]
    if initial is not None:
        out.append(
            '<tr class="initial"><th>untrained model</th>'
            + "".join(_num_td(_fmt_cell(v, metric), repr(float(v))) for v in initial)
            + "</tr>"
        )
    for i in range(nrows):
        label = names[i] if i < ncols else f"exp {i}"
        out.append(f"<tr><th>{_e(label)}</th>" + "".join(cell(i, j) for j in range(ncols)) + "</tr>")
    out.append("</table></div>")
    unit = "percent" if metric == "accuracy" else "perplexity, lower is better"
    out.append(
        f'<p class="note">R[i][j] in {_e(unit)}; the diagonal (outlined) is each experience right '
        "after training on it. Hover a cell for the exact value.</p>"
    )
    return "\n".join(out)


def _gap_table(results: Mapping[str, Any]) -> str | None:
    gaps = results.get("stability_gap")
    if not isinstance(gaps, list) or not gaps:
        return None
    metric = results["metric"]
    names = _names(results, max(len(results["matrix"][0]), len(gaps)))
    worst = "min" if metric == "accuracy" else "worst (max)"
    head = ["new experience", "before", worst, "at step", "depth", "final", "steps to recover"]
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for g in gaps:
        if not isinstance(g, Mapping):
            continue
        exp = g.get("experience")
        label = names[exp] if isinstance(exp, int) and 0 <= exp < len(names) else str(exp)
        recover = g.get("steps_to_recover")
        out.append(
            f"<tr><td>{_e(label)}</td>"
            + "".join(_num_td(_fmt_cell(_as_float(g.get(k)), metric), g.get(k)) for k in ("before", "min"))
            + _num_td(str(g.get("min_step", "n/a")))
            + _num_td(_fmt_cell(_as_float(g.get("depth")), metric), g.get("depth"))
            + _num_td(_fmt_cell(_as_float(g.get("final")), metric), g.get("final"))
            + _num_td("not recovered" if recover is None else str(recover))
            + "</tr>"
        )
    out.append("</table>")
    out.append(
        '<p class="note">When a new experience starts, the metric on the experiences learned before it '
        "often dips, then recovers. Each row follows the mean over the earlier experiences' test sets while "
        f"training on the new one: <em>before</em> is that mean when the previous experience ended, "
        f"<em>{_e(worst)}</em> the worst value seen during the new one and <em>at step</em> when, "
        "<em>depth</em> how far it fell "
        "(0 if it never got worse), <em>final</em> the mean when the new experience ended, and "
        "<em>steps to recover</em> the steps from the start of the experience until the mean came back to "
        "<em>before</em>"
        + (" (accuracy in percent, depth in percentage points)." if metric == "accuracy" else ".")
        + "</p>"
    )
    return "\n".join(out)


def _meta_table(rows: list[tuple[str, Any]]) -> str:
    return (
        '<table class="meta">'
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _config_json(config: Any) -> str:
    return json.dumps(config, indent=2, sort_keys=True, default=str, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ public pages


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write `run_dir/report.html` and `run_dir/plots/{matrix,curves}.png` from the run's files.

    `curves.png` is drawn only when `events.jsonl` holds eval events. Raises StateError when
    `results.json` is missing (the run has not finished) or damaged. Returns the HTML page's path.
    """
    run_dir = Path(run_dir)
    results = _load_results(run_dir)
    events, bad_lines = _read_events(run_dir)
    metric = results["metric"]
    method = str(results.get("method", "unknown method"))
    nrows, ncols = len(results["matrix"]), len(results["matrix"][0])

    matrix_png = _matrix_png(results)
    atomic_write_bytes(run_dir / "plots" / "matrix.png", matrix_png)
    curves_png = _curves_png(results, events)
    if curves_png is not None:
        atomic_write_bytes(run_dir / "plots" / "curves.png", curves_png)

    title = f"lifelong report: {method}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(metric)} ({"higher" if metric == "accuracy" else "lower"} is better) '
        f"over {ncols} experiences; run directory {_e(run_dir.resolve())}</p>",
        _meta_table(
            [
                ("method", method),
                ("metric", metric),
                ("experiences", f"{nrows} trained, {ncols} test sets"),
                ("seed", results.get("seed", "n/a")),
                ("wall time", _fmt_seconds(results.get("wall_seconds"))),
                ("lifelong version", results.get("lifelong_version", "n/a")),
            ]
        ),
        "<h2>Summary</h2>",
        _summary_table(results),
        "<h2>Matrix</h2>",
        _matrix_table(results),
        _img(matrix_png, f"{metric} matrix heatmap"),
    ]
    gap = _gap_table(results)
    if gap is not None:
        body += ["<h2>Stability gap</h2>", gap]
    body.append("<h2>During training</h2>")
    if curves_png is not None:
        body.append(_img(curves_png, f"{metric} on each test set over training steps"))
    else:
        body.append(
            '<p class="note">No eval events in events.jsonl: the run did not evaluate during '
            "training, so there is no curve (set a periodic evaluation to see the stability gap).</p>"
        )
    if bad_lines:
        body.append(
            f'<p class="note">{bad_lines} unreadable line(s) of events.jsonl were skipped '
            "(a run killed mid-write can leave a torn last line).</p>"
        )
    body += ["<h2>Config</h2>", f"<pre>{_e(_config_json(results.get('config', {})))}</pre>"]

    out = run_dir / "report.html"
    atomic_write_bytes(out, _page(title, body).encode("utf-8"))
    return out


def write_comparison_report(
    named_run_dirs: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> Path:
    """One page comparing several finished runs: `out_dir/report.html` and `out_dir/comparison.png`.

    The page has a summary table (one row per run), the comparison bars, and each run's matrix heatmap
    (plus its training curves when it has eval events). Raises StateError for a run without results and
    DataError when the runs use different metrics. Returns the HTML page's path.
    """
    if not named_run_dirs:
        raise DataError("nothing to compare: pass at least one run directory.")
    out_dir = Path(out_dir)
    named_results = {name: _load_results(Path(d)) for name, d in named_run_dirs.items()}
    metric = _common_metric(named_results)

    comparison_png = _comparison_png(named_results)
    atomic_write_bytes(out_dir / "comparison.png", comparison_png)

    head = ["run", "method", *(_SUMMARY_LABELS[k] for k in _SUMMARY_KEYS), "experiences", "seed", "wall time"]
    table = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for name, results in named_results.items():
        summary: Mapping[str, Any] = results["summary"] if isinstance(results.get("summary"), Mapping) else {}
        table.append(
            f"<tr><td>{_e(name)}</td><td>{_e(results.get('method', 'n/a'))}</td>"
            + "".join(
                _num_td(_summary_value(k, summary.get(k), metric), summary.get(k)) for k in _SUMMARY_KEYS
            )
            + _num_td(str(len(results["matrix"])))
            + _num_td(str(results.get("seed", "n/a")))
            + _num_td(_fmt_seconds(results.get("wall_seconds")))
            + "</tr>"
        )
    table.append("</table>")

    title = f"lifelong comparison: {', '.join(named_results)}"
    defs = _definitions(metric)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(metric)} ({"higher" if metric == "accuracy" else "lower"} is better); '
        f"{len(named_results)} runs.</p>",
        "<h2>Summary</h2>",
        "\n".join(table),
        '<ul class="note">'
        + "".join(f"<li><b>{_e(_SUMMARY_LABELS[k])}</b>: {_e(defs[k])}</li>" for k in _SUMMARY_KEYS)
        + "</ul>",
        _img(comparison_png, "ACC, forgetting and BWT of each run"),
    ]
    for name, results in named_results.items():
        run_dir = Path(named_run_dirs[name])
        body += [
            f"<h2>{_e(name)}</h2>",
            f'<p class="note">{_e(results.get("method", "n/a"))}; run directory {_e(run_dir.resolve())}</p>',
            _img(_matrix_png(results, f"{name}: {metric} matrix R[i][j]"), f"{name} matrix heatmap"),
        ]
        events, _ = _read_events(run_dir)
        curves = _curves_png(results, events, f"{name}: {metric} on each test set during training")
        if curves is not None:
            body.append(_img(curves, f"{name} curves"))

    out = out_dir / "report.html"
    atomic_write_bytes(out, _page(title, body).encode("utf-8"))
    return out
