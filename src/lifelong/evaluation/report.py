"""Plots and a self-contained HTML page for a finished run, made from its files alone.

The report reads `results.json` (the accuracy or perplexity matrix and the figures derived from it) and
`events.jsonl` (the periodic `eval` events that show the stability gap) from a run directory, so it can be
made again for any run, on any machine, without the code or data that produced it:

    write_report("runs/replay")            # runs/replay/report.html, runs/replay/plots/*.png
    write_comparison_report({"Naive": Path("runs/naive"), "Replay": Path("runs/replay")}, "runs/compare")

`R[i][j]` is the metric on experience j's test set after training on experience i. Accuracy is stored as a
fraction and shown in percent; perplexity is shown as it is (lower is better). results.json counts
experiences from 0; everything a person reads (tables, axes, legends, headings) counts them from 1. A cell
stored as null (a row written before the run was continued with new experiences) is shown as "–" and
drawn grey. For classification the page also shows, when results.json has them, the class names, the
accuracy of each class after each experience and the confusion matrix after the last. For a language model
(metric "perplexity") it shows the matrix on a log colour scale, the tokens, throughput and peak memory of
the run, the forgetting of each domain in log perplexity, and, drawn as inline SVG, the loss on each domain
over the tokens trained on and the learning rate over the steps (from the `train`, `eval` and
`experience_end` events; runs that did not record tokens are drawn over steps). Every file is written
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
from typing import TYPE_CHECKING, Any, NamedTuple

from lifelong.atomic import atomic_write_bytes
from lifelong.errors import DataError, StateError
from lifelong.evaluation import metrics

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "plot_matrix",
    "plot_curves",
    "plot_comparison",
    "plot_confusion",
    "write_report",
    "write_comparison_report",
]

_METRICS = ("accuracy", "perplexity")
_DPI = 110
_MAX_ANNOTATED = 16  # beyond this many columns numbers get unreadable (and slow); the HTML table has them
_NAMED_TICKS = 12  # up to this many experiences the heatmap axes show their names, past it their indices
_LABEL_CHARS = 28  # experience names longer than this are shortened on plot axes and legends
_CLASS_CHARS = 18  # class names on the confusion axes: shorter still, there can be ~50 of them
_CONFUSION_ANNOTATED = 15  # up to this many classes each confusion cell shows its count
_CONFUSION_TICKS = 60  # up to this many classes every one is named on the confusion axes
_MISSING = "–"  # a cell with no value (null in results.json), in tables and on heatmaps


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


def _read_events(run_dir: Path, kinds: tuple[str, ...] = ("eval",)) -> tuple[list[dict[str, Any]], int]:
    """The events of `run_dir/events.jsonl` whose "event" is one of `kinds` (in file order) and how many
    unreadable lines were skipped.

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
            if isinstance(event, dict) and event.get("event") in kinds:
                events.append(event)
    return events, bad


def _matrix(results: Mapping[str, Any]) -> np.ndarray:
    """The matrix as floats for drawing: a missing (null) cell is NaN, which the heatmap masks grey."""
    import numpy as np

    return np.array([[math.nan if v is None else float(v) for v in row] for row in results["matrix"]])


def _cells(results: Mapping[str, Any]) -> list[list[float | None]]:
    """The matrix for tables: None stays None ("–", no value), unlike a stored NaN ("nan", a real result)."""
    return [[None if v is None else float(v) for v in row] for row in results["matrix"]]


def _initial(results: Mapping[str, Any], ncols: int) -> list[float | None] | None:
    initial = results.get("initial")
    if not isinstance(initial, list) or len(initial) != ncols:
        return None
    try:
        return [None if v is None else float(v) for v in initial]
    except (TypeError, ValueError):
        return None


def _names(results: Mapping[str, Any], n: int) -> list[str]:
    """Experience labels as people read them, numbered from 1: "1: classes 0, 1", or "exp 1" unnamed.

    Runs written before names lost their number carry a 0-based "j: " prefix; it is dropped so that the
    page does not show two different numbers for one experience.
    """
    given = results.get("experience_names")
    given = given if isinstance(given, list) else []
    labels = []
    for j in range(n):
        name = str(given[j]) if j < len(given) and given[j] is not None else ""
        name = name.removeprefix(f"{j}: ").strip()
        labels.append(f"{j + 1}: {name}" if name else f"exp {j + 1}")
    return labels


def _class_names(results: Mapping[str, Any], k: int) -> list[str]:
    """Names of classes 0..k-1 from "label_names"; the class index for any that is missing."""
    given = results.get("label_names")
    given = given if isinstance(given, list) else []
    return [str(given[c]) if c < len(given) and given[c] is not None else str(c) for c in range(k)]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _per_class(results: Mapping[str, Any]) -> tuple[list[list[float | None]] | None, str | None]:
    """`per_class_accuracy` (experience ends x classes) and, when it is there but malformed, why it is
    left out. (None, None) for runs that have none: regression and language models, or older runs."""
    rows = results.get("per_class_accuracy")
    if rows is None:
        return None, None
    if (
        not isinstance(rows, list)
        or not rows
        or not all(isinstance(r, list) and r for r in rows)
        or len({len(r) for r in rows}) != 1
        or not all(v is None or _is_number(v) for r in rows for v in r)
    ):
        return None, "'per_class_accuracy' is not a list of equally long lists of numbers or null"
    return [[None if v is None else float(v) for v in r] for r in rows], None


def _last_confusion(results: Mapping[str, Any]) -> tuple[list[list[float]] | None, str | None]:
    """The confusion matrix after the last experience (rows true, columns predicted) and, when the key
    is there but malformed, why it is left out."""
    confusion = results.get("confusion")
    if confusion is None:
        return None, None
    last = confusion[-1] if isinstance(confusion, list) and confusion else None
    if (
        not isinstance(last, list)
        or not last
        or not all(isinstance(r, list) and len(r) == len(last) for r in last)
        or not all(_is_number(v) and v >= 0 for r in last for v in r)
    ):
        return None, "'confusion' does not end with a square list of non-negative counts"
    return [[float(v) for v in row] for row in last], None


def _short(name: str, limit: int = _LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _eval_series(events: Iterable[Mapping[str, Any]], ncols: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps (sorted) and values (steps x test sets) of the eval events.

    After a resume the same step can be evaluated twice; the later event wins. Missing values are NaN.
    """
    import numpy as np

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
    """A matrix cell: accuracy in percent, perplexity raw, one decimal; "–" where there is no value."""
    if v is None:
        return _MISSING
    if not math.isfinite(v):
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


def _label(key: str, metric: str) -> str:
    """A summary figure's name: "ACC" is an accuracy; for a language model the same mean is a perplexity."""
    if key == "acc" and metric == "perplexity":
        return "Mean perplexity"
    return _SUMMARY_LABELS[key]


def _summary_value(key: str, v: Any, metric: str) -> str:
    return _fmt_level(v, metric) if key in ("acc", "plasticity") else _fmt_delta(v, metric)


def _fwt_note(summary: Mapping[str, Any]) -> str | None:
    """Why FWT is n/a, when the run says so (e.g. class-incremental, where it is 0 by construction)."""
    note = summary.get("fwt_note")
    return note if summary.get("fwt") is None and isinstance(note, str) and note.strip() else None


def _summary_text(key: str, summary: Mapping[str, Any], metric: str) -> str:
    if key == "fwt" and (note := _fwt_note(summary)) is not None:
        return f"n/a ({note})"
    return _summary_value(key, summary.get(key), metric)


def _definitions(metric: str) -> dict[str, str]:
    """What each figure means, in the page's 1-based numbering (experiences 1..T)."""
    acc = metric == "accuracy"
    better = "higher is better" if acc else "lower is better"
    bwt_sign = "negative means forgetting" if acc else "positive means old experiences got worse"
    return {
        "acc": f"Mean of the last row of R, R[T][j] over every j: the final {metric} averaged over every "
        f"experience's test set ({better}).",
        "bwt": "Mean over j < T of R[T][j] − R[j][j]: how later training changed what was already "
        f"learned ({bwt_sign}).",
        "fwt": "Forward transfer, the mean over j > 1 of R[j−1][j] − initial[j]: how much training on the "
        "experiences before j already did for j before it was trained on, against the untrained model "
        + ("(positive helps)." if acc else "(negative helps).")
        + " Needs the untrained model's scores (`initial`); n/a without them. In class-incremental streams "
        "it is n/a too: the untrained model and every model trained only on earlier classes score 0 on "
        "classes not seen yet, so the difference is 0 by construction.",
        "forgetting": "Mean over old experiences j < T of the best value of R[i][j] for j ≤ i < T"
        + ("" if acc else " (the lowest perplexity)")
        + " minus the final R[T][j], signed so that positive means forgotten.",
        "plasticity": f"Mean of the diagonal R[i][i]: how well each experience was learned right after "
        f"training on it ({better}).",
    }


_NUMBERING = (
    "Experiences are numbered 1 to T in order; R[i][j] is the metric on experience j's test set after "
    "training on experience i. A figure skips the cells that have no value (–)."
)


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
    """Colormap and norm for a heatmap: fixed 0-100% for accuracy; reversed and logarithmic for perplexity
    (lower is better, and perplexities span orders of magnitude)."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    finite = values[np.isfinite(values)]
    if metric == "accuracy":
        return matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9"), Normalize(0.0, 100.0), False
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#d9d9d9")
    if finite.size == 0:
        return cmap, Normalize(0.0, 1.0), False
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi > lo:
        return cmap, LogNorm(lo, hi), True
    return cmap, Normalize(lo, hi if hi > lo else lo + 1.0), False


# matplotlib's viridis and Blues sampled at 9 points: HTML heatmap cells are coloured by interpolating these,
# so a page without line plots needs no matplotlib (importing and drawing it is most of a report's cost)
_ANCHORS = {
    "viridis": [
        "#440154",
        "#472d7b",
        "#3b528b",
        "#2c728e",
        "#21918c",
        "#28ae80",
        "#5ec962",
        "#addc30",
        "#fde725",
    ],
    "Blues": [
        "#f7fbff",
        "#deebf7",
        "#c6dbef",
        "#9dcae1",
        "#6aaed6",
        "#4191c6",
        "#2070b4",
        "#08509b",
        "#08306b",
    ],
}


def _lut(name: str, value: float) -> tuple[float, float, float, float]:
    """The RGBA colour of `value` in [0, 1] (NaN: grey) on the colormap `name` (reversed: `name_r`)."""
    if math.isnan(value):
        return (0xD9 / 255, 0xD9 / 255, 0xD9 / 255, 1.0)
    anchors = _ANCHORS[name.removesuffix("_r")]
    t = min(max(1.0 - value if name.endswith("_r") else value, 0.0), 1.0) * (len(anchors) - 1)
    low = min(int(t), len(anchors) - 2)
    a, b, frac = anchors[low], anchors[low + 1], t - low
    rgb = [(int(a[i : i + 2], 16) * (1 - frac) + int(b[i : i + 2], 16) * frac) / 255 for i in (1, 3, 5)]
    return (rgb[0], rgb[1], rgb[2], 1.0)


def _ppl_range(values: Iterable[float]) -> tuple[float, float] | None:
    """Lowest and highest finite value of a perplexity heatmap, or None when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else None


def _ppl_position(v: float, lo: float, hi: float) -> float:
    """Where perplexity `v` sits between `lo` (0) and `hi` (1): on a log scale, since perplexities span
    orders of magnitude (a linear scale would paint every good cell alike); linear only if some value is
    not positive, which no true perplexity is."""
    if not math.isfinite(v):
        return math.nan
    if hi <= lo:
        return 0.0
    if lo > 0:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def _table_colors(metric: str, values: list[list[float]]) -> list[list[tuple[float, ...]]]:
    """Heatmap colours of table cells (values scaled for display, NaN where missing), in plain Python so
    that a page needs no numpy or matplotlib: accuracy on a fixed 0-100 % scale, perplexity reversed (lower
    is better, drawn brighter) on a log scale."""
    if metric == "accuracy":
        return [[_lut("viridis", v / 100.0) for v in row] for row in values]
    bounds = _ppl_range(v for row in values for v in row)
    if bounds is None:
        return [[_lut("viridis_r", 0.0) for _ in row] for row in values]
    return [[_lut("viridis_r", _ppl_position(v, *bounds)) for v in row] for row in values]


def _text_color(rgba: tuple[float, ...]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def _matrix_figure(results: Mapping[str, Any], title: str | None = None) -> Any:
    import numpy as np

    metric = results["metric"]
    r = _matrix(results)
    cells = _cells(results)
    shown = r * _scale(metric)
    nrows, ncols = shown.shape
    names = _names(results, max(nrows, ncols))
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
    ax.set_xlabel("evaluated on experience (its test set)")
    ax.set_ylabel("after training on experience")
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
                text = _fmt_cell(cells[i][j], metric)
                if math.isfinite(v) and abs(v) >= 1e4:
                    text = f"{v:.3g}"
                color = _text_color(tuple(rgba[i, j])) if math.isfinite(v) else "black"
                weight = "bold" if i == j else "normal"
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color, fontweight=weight)
    return fig


def _label_axis(axis: Any, names: list[str], n: int) -> None:
    """Experience labels on a heatmap axis while few; past that, every k-th number from 1 (names are in
    the table)."""
    if n <= _NAMED_TICKS:
        axis.set_ticks(range(n), [_short(names[k]) for k in range(n)])
    else:
        step = math.ceil(n / 20)
        axis.set_ticks(range(0, n, step), [str(k + 1) for k in range(0, n, step)])


def _curves_figure(
    results: Mapping[str, Any], events: Iterable[Mapping[str, Any]], title: str | None = None
) -> Any | None:
    events = list(events)
    if not any(e.get("event", "eval") == "eval" and isinstance(e.get("values"), list) for e in events):
        return None  # nothing to draw: no numpy, no matplotlib
    import numpy as np

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
            f" e{k + 1}",
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
    ax.set_title(
        title or f"{metric} on each test set during training (dashed: experience e1, e2, ... starts)",
        pad=14,
    )
    return fig


def _curves_png(
    results: Mapping[str, Any], events: Iterable[Mapping[str, Any]], title: str | None = None
) -> bytes | None:
    fig = _curves_figure(results, events, title)
    return None if fig is None else _png(fig)


def _confusion_figure(counts: Any, class_names: list[str], after: int) -> Any:
    """Heatmap of a confusion matrix (rows true, columns predicted), coloured by the share of each true
    class so that rare and frequent classes read alike; counts in the cells up to 15 classes."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import Normalize

    counts = np.asarray(counts, dtype=float)
    k = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.full_like(counts, math.nan), where=totals > 0) * 100.0
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")
    norm = Normalize(0.0, 100.0)

    side = min(13.0, max(4.5, 2.2 + 0.2 * k))
    fig = _figure(side + 1.4, side)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the true class's test samples (%)", shrink=0.8)

    step = math.ceil(k / _CONFUSION_TICKS)
    ticks = range(0, k, step)
    labels = [_short(class_names[c], _CLASS_CHARS) for c in ticks]
    size = float(np.clip(10 - 0.1 * k, 6, 9))
    ax.set_xticks(
        ticks, labels, fontsize=size, rotation=90 if k > 6 else 35, ha="center" if k > 6 else "right"
    )
    ax.set_yticks(ticks, labels, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion after experience {after} (test sets of all experiences)")

    fig.get_layout_engine().execute(fig)
    fig.set_layout_engine(None)
    if k <= _CONFUSION_ANNOTATED:
        rgba = cmap(norm(np.ma.masked_invalid(share)))
        text_size = float(np.clip(11 - 0.3 * k, 6, 10))
        for i in range(k):
            for j in range(k):
                color = _text_color(tuple(rgba[i, j])) if math.isfinite(share[i, j]) else "black"
                ax.text(
                    j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=text_size, color=color
                )
    return fig


def _palette(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


_COMPARED = ("acc", "forgetting", "bwt")


def _comparison_figure(named_results: Mapping[str, Mapping[str, Any]]) -> Any:
    import numpy as np

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
    for ax, key in zip(axes, _COMPARED, strict=True):
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
        ax.set_title(f"{_label(key, metric)}{unit}\n{hints[key]}", fontsize=10)
        ax.use_sticky_edges = False  # leave room beyond 0 for the labels of negative bars
        ax.margins(y=0.15)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Runs compared ({metric})")
    return fig


def _common_metric(named_results: Mapping[str, Mapping[str, Any]]) -> str:
    if not named_results:
        raise DataError("nothing to compare: pass at least one run.")
    for name, results in named_results.items():
        _check_results(results, f"run {name!r}")
    by_run = {name: results["metric"] for name, results in named_results.items()}
    if len(set(by_run.values())) != 1:
        listed = ", ".join(f"{n}: {m}" for n, m in by_run.items())
        raise DataError(
            f"cannot compare runs scored by different metrics ({listed}); compare like with like."
        )
    return next(iter(by_run.values()))


# ------------------------------------------------------------------------------------- language models
#
# A language-modelling run (metric "perplexity") gets more than the matrix: what it cost (tokens, tokens/s,
# peak memory), how much each domain was forgotten on the log scale, the learning rate the schedule gave,
# and the loss on every domain over the tokens trained on. The figures are inline SVG drawn here in plain
# Python, like the heatmaps, so the page needs no matplotlib; `plots=True` also writes them as PNG files.
# Runs written before the learner recorded tokens fall back to optimizer steps, and a figure whose data the
# run does not have is left out with a note saying why.

_LM_EVENTS = ("train", "eval", "experience_end")
# matplotlib's tab10, so that the SVG figures and the PNG ones colour the domains alike
_TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_SVG_POINTS = 1500  # a series longer than this is thinned: more points than pixels only make the page heavy
_SVG_MARKERS = 60  # up to this many points a domain's line also shows its points
_SVG_BOUNDARY_LABELS = 12  # label at most about this many experience boundaries


def _lm_per_experience(results: Mapping[str, Any], key: str, n: int) -> list[float | None] | None:
    """`results[key]` as `n` numbers (None for a missing or malformed entry), or None when the run has no
    such list (older runs and classification runs)."""
    given = results.get(key)
    if not isinstance(given, list):
        return None
    values = [float(v) if _is_number(v) else None for v in given[:n]]
    return values + [None] * (n - len(values))


def _schedule(results: Mapping[str, Any]) -> str | None:
    """The learning-rate schedule's name: `schedule` in results.json, else the config's train.scheduler."""
    name = results.get("schedule")
    if isinstance(name, str) and name.strip():
        return name.strip()
    config = results.get("config")
    train = config.get("train") if isinstance(config, Mapping) else None
    name = train.get("scheduler") if isinstance(train, Mapping) else None
    return name.strip() if isinstance(name, str) and name.strip() else None


def _log_ppl(v: Any) -> float:
    """log of a perplexity, the loss in nats; NaN where there is none (missing, NaN, infinite or <= 0)."""
    f = _as_float(v)
    return math.log(f) if f is not None and math.isfinite(f) and f > 0 else math.nan


def _finite(v: Any) -> float | None:
    """`v` as a float when it is a finite JSON number, else None (missing, null, text, NaN, infinite)."""
    return float(v) if _is_number(v) and math.isfinite(v) else None


def _event_x(event: Mapping[str, Any], axis: str) -> float | None:
    return _finite(event.get(axis))


def _lm_axis(events: list[dict[str, Any]]) -> str:
    """ "tokens" when every event to plot says how many tokens had been trained on, else "step"."""
    plotted = [e for e in events if e.get("event") in _LM_EVENTS]
    if plotted and all(_event_x(e, "tokens") is not None for e in plotted):
        return "tokens"
    return "step"


def _lm_boundaries(results: Mapping[str, Any], events: list[dict[str, Any]], axis: str) -> list[float]:
    """Where each experience began on `axis`: in steps as the curves of classification runs; in tokens,
    experience k begins where k-1 ended (its experience_end event, else the sum of tokens_seen)."""
    if axis == "step":
        return _start_steps(results, events)
    ends: dict[int, float] = {}
    for ev in events:
        exp, x = ev.get("experience"), _event_x(ev, "tokens")
        if ev.get("event") == "experience_end" and isinstance(exp, int) and x is not None:
            ends[exp] = x
    seen = _lm_per_experience(results, "tokens_seen", len(results["matrix"]))
    starts = [0.0]
    for k in range(1, len(results["matrix"])):
        if k - 1 in ends:
            starts.append(ends[k - 1])
        elif seen is not None and all(v is not None for v in seen[:k]):
            starts.append(sum(v for v in seen[:k] if v is not None))
    return starts


def _lm_curves(
    results: Mapping[str, Any], events: list[dict[str, Any]]
) -> tuple[str, list[list[tuple[float, float]]], list[tuple[float, float]], bool]:
    """The loss curves of a language-modelling run: the x axis ("tokens" or "step"), for each domain's test
    set the points (x, log perplexity) from the untrained model (x = 0), the eval events and the
    experience_end rows, the training loss points (x, loss) of the train events, and whether any eval event
    was found. After a resume an x can appear twice: the later event wins. Without an eval or
    experience_end event the domains have no points: the untrained model alone is not a curve."""
    ncols = len(results["matrix"][0])
    axis = _lm_axis(events)
    by_x: dict[float, list[Any]] = {}
    initial = _initial(results, ncols)
    if initial is not None:
        by_x[0.0] = list(initial)
    train: dict[float, float] = {}
    has_evals = measured = False
    for ev in events:
        x = _event_x(ev, axis)
        if x is None:
            continue
        kind = ev.get("event")
        values = ev.get("values") if kind == "eval" else ev.get("row") if kind == "experience_end" else None
        if isinstance(values, list):
            has_evals = has_evals or kind == "eval"
            measured = True
            by_x[x] = values
        elif kind == "train" and (loss := _finite(ev.get("loss"))) is not None:
            train[x] = loss
    domains: list[list[tuple[float, float]]] = [[] for _ in range(ncols)]
    if not measured:
        by_x.clear()
    for x in sorted(by_x):
        for j, v in enumerate(by_x[x][:ncols]):
            domains[j].append((x, _log_ppl(v)))
    return axis, domains, sorted(train.items()), has_evals


def _lr_points(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(step, learning rate) of the train events, sorted; after a resume the later event of a step wins."""
    lrs: dict[float, float] = {}
    for ev in events:
        step, lr = _event_x(ev, "step"), _finite(ev.get("lr"))
        if ev.get("event") == "train" and step is not None and lr is not None:
            lrs[step] = lr
    return sorted(lrs.items())


# ---------------------------------------------------------------------------- language models: numbers


def _fmt_count(v: float | None) -> str:
    """A count such as tokens, short: 950, 12.3k, 4.56M, 1.2B."""
    if v is None or not math.isfinite(v):
        return "n/a"
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}" if v != int(v) else str(int(v))


def _fmt_bytes(v: float | None) -> str:
    """Bytes in binary units: 512 B, 3.4 MiB, 1.25 GiB."""
    if v is None or not math.isfinite(v) or v < 0:
        return "n/a"
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if v >= 1024**power:
            return f"{v / 1024**power:.3g} {unit}"
    return f"{int(v)} B"


def _fmt_log(v: float | None, signed: bool = False) -> str:
    """A log perplexity (nats), three decimals."""
    if (bad := _nonfinite(v)) is not None:
        return bad
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _fmt_tick(v: float, step: float, axis: str = "") -> str:
    """An axis tick: tokens short (1.5M), other values with the decimals the tick spacing needs."""
    if axis == "tokens":
        return _fmt_count(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.2g}"
    exponent = math.floor(math.log10(step) + 1e-9)
    mantissa = step / 10**exponent
    decimals = max(0, -exponent + (0 if abs(mantissa - round(mantissa)) < 1e-9 else 1))  # 2.5 needs one more
    return f"{v:.{decimals}f}"


def _lm_table(results: Mapping[str, Any]) -> str:
    """Per experience: tokens trained on, optimizer steps, tokens/s (when the run recorded them), the
    perplexity right after learning it and at the end, and the forgetting in log perplexity; a total row."""
    cells = _cells(results)
    nrows, ncols = len(cells), len(cells[0])
    names = _names(results, max(nrows, ncols))
    tokens = _lm_per_experience(results, "tokens_seen", nrows)
    steps = _lm_per_experience(results, "experience_steps", nrows)
    speed = _lm_per_experience(results, "tokens_per_second", nrows)
    per_exp = metrics.forgetting_log_ppl_per_experience(cells)
    mean_forgetting = metrics.forgetting_log_ppl(cells)

    head = ["experience"]
    head += ["tokens trained"] if tokens is not None else []
    head += ["optimizer steps"] if steps is not None else []
    head += ["tokens/s"] if speed is not None else []
    head += [
        "perplexity when learnt",
        "best perplexity",
        "final perplexity",
        "forgetting (log perplexity)",
        "final ÷ best",
    ]
    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]

    def count_td(v: float | None) -> str:
        return _num_td(_fmt_count(v), None if v is None else f"{v:,.0f}")

    def speed_td(v: float | None) -> str:
        return _num_td("n/a" if v is None or not math.isfinite(v) else f"{v:,.0f}", v)

    last = nrows - 1
    for j in range(ncols):
        learnt = cells[j][j] if j < nrows else None
        earlier = [v for i in range(j, last) if (v := cells[i][j]) is not None and v > 0]
        best = min(earlier) if earlier else None
        forgot = per_exp[j] if j < len(per_exp) else None
        row = f"<tr><td>{_e(names[j])}</td>"
        if tokens is not None:
            row += count_td(tokens[j]) if j < nrows else _num_td(_MISSING)
        if steps is not None:
            row += _num_td(_fmt_count(steps[j]), steps[j]) if j < nrows else _num_td(_MISSING)
        if speed is not None:
            row += speed_td(speed[j]) if j < nrows else _num_td(_MISSING)
        row += _num_td(_fmt_cell(learnt, "perplexity"), learnt)
        row += _num_td(_fmt_cell(best, "perplexity"), best) if j < last else _num_td(_MISSING)
        row += _num_td(_fmt_cell(cells[last][j], "perplexity"), cells[last][j])
        if j < last:
            factor = None if forgot is None or not math.isfinite(forgot) else math.exp(forgot)
            row += _num_td(_fmt_log(forgot, signed=True), forgot)
            row += _num_td("n/a" if factor is None else f"×{factor:.3f}", factor)
        else:  # the experience trained last has nothing after it to forget it
            row += _num_td(_MISSING, "trained last") + _num_td(_MISSING, "trained last")
        out.append(row + "</tr>")

    total = "<tr><th>all</th>"
    if tokens is not None:
        total += count_td(sum(t for t in tokens if t is not None))
    if steps is not None:
        total += _num_td(_fmt_count(sum(s for s in steps if s is not None)))
    if speed is not None:
        # overall throughput: all tokens over all the time they took (time = tokens / rate, per experience)
        pairs = [(t, r) for t, r in zip(tokens or [], speed, strict=False) if t is not None and r]
        seconds = sum(t / r for t, r in pairs)
        total += speed_td(sum(t for t, _ in pairs) / seconds if seconds > 0 else None)
    final = metrics.acc(cells)
    factor = (
        None if mean_forgetting is None or not math.isfinite(mean_forgetting) else math.exp(mean_forgetting)
    )
    total += (
        _num_td("")
        + _num_td("")
        + _num_td(_fmt_cell(final, "perplexity"), final)
        + _num_td(_fmt_log(mean_forgetting, signed=True), mean_forgetting)
        + _num_td("n/a" if factor is None else f"×{factor:.3f}", factor)
        + "</tr>"
    )
    out += [total, "</table></div>"]
    out.append(
        '<p class="note">Forgetting of an experience j trained before the last one: log R[T][j] minus the '
        "lowest log R[i][j] after j was learnt (j ≤ i &lt; T), that is how much the loss on its test set "
        "(log perplexity, nats) rose from its best; final ÷ best is the same as a ratio of perplexities "
        "(×1.105 for +0.100). The last row: total tokens and steps, throughput over the whole run, the "
        "mean final perplexity and the mean forgetting."
        + (
            ""
            if tokens is not None
            else " This run's results.json has no token counts (written before they were recorded)."
        )
        + "</p>"
    )
    return "\n".join(out)


def _lm_meta(results: Mapping[str, Any]) -> str:
    """Peak memory and the learning-rate schedule, as a small table."""
    peak = _finite(results.get("peak_memory_bytes"))
    memory = f"{_fmt_bytes(peak)} ({int(peak):,} bytes)" if peak is not None and peak >= 0 else "not recorded"
    rows: list[tuple[str, Any]] = [
        ("peak memory", memory),
        ("LR schedule", _schedule(results) or "not recorded"),
    ]
    return _meta_table(rows)


def _lm_summary_rows(results: Mapping[str, Any]) -> list[str]:
    """Summary rows only a language model has: forgetting and the final mean, in log perplexity."""
    figures = metrics.perplexity_summary(_cells(results))
    rows = []
    for key, label, signed, definition in (
        (
            "forgetting_log_ppl",
            "Forgetting (log perplexity)",
            True,
            "Mean over old experiences j < T of log R[T][j] − min log R[i][j] (j ≤ i < T): how far the loss "
            "on each old domain rose from its best, in nats (positive means forgotten; +0.1 is a perplexity "
            "1.105 times its best).",
        ),
        (
            "final_mean_log_perplexity",
            "Final mean log perplexity",
            False,
            "Mean of log R[T][j] over every test set: the final loss in nats, averaged over the domains.",
        ),
    ):
        v = figures[key]
        rows.append(
            f"<tr><td>{_e(label)}</td>{_num_td(_fmt_log(v, signed), v)}<td>{_e(definition)}</td></tr>"
        )
    return rows


# ------------------------------------------------------------------------------- language models: SVG


def _nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], float]:
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    while (v := first + len(ticks) * step) <= hi + step * 1e-9:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
    return ticks, step


def _thin(points: list[tuple[float, float]], limit: int = _SVG_POINTS) -> list[tuple[float, float]]:
    """Every k-th point so that at most about `limit` are left, always keeping the last."""
    if len(points) <= limit:
        return points
    every = math.ceil(len(points) / limit)
    kept = points[::every]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


class _Line(NamedTuple):
    """One series of an SVG chart; points whose y is not finite break the line."""

    label: str
    color: str
    points: list[tuple[float, float]]
    width: float = 1.6
    dash: str = ""  # an SVG stroke-dasharray, "" for a solid line
    markers: bool = True  # dots on the points while there are few


def _svg_chart(
    series: list[_Line],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_axis: str,
    boundaries: list[float],
) -> str:
    """A line chart as inline SVG, one line per `series` with a legend on the right. `boundaries`: x where
    experiences begin, drawn dashed and labelled e1, e2, ... Empty string when no series has a finite
    point."""
    finite = [(x, y) for line in series for x, y in line.points if math.isfinite(x) and math.isfinite(y)]
    if not finite:
        return ""
    xs = [x for x, _ in finite] + [b for b in boundaries if math.isfinite(b)]
    ys = [y for _, y in finite]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    pad = (y_hi - y_lo) * 0.05 if y_hi > y_lo else max(abs(y_lo) * 0.05, 1e-12)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    legend_rows = len(series)
    left, right, top, bottom = 64, 210, 34, 46
    width = 820
    height = max(320, top + bottom + 16 * legend_rows)
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * ph

    out = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}" font-family="sans-serif" font-size="11">',
        f"<title>{_e(title)}</title>",
        f'<text x="{left + pw / 2:.1f}" y="18" text-anchor="middle" font-size="13">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    x_ticks, x_step = _nice_ticks(x_lo, x_hi)
    y_ticks, y_step = _nice_ticks(y_lo, y_hi)
    for x in x_ticks:
        out.append(
            f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{top + ph}" stroke="#eee"/>'
            f'<text x="{px(x):.1f}" y="{top + ph + 14}" text-anchor="middle">'
            f"{_e(_fmt_tick(x, x_step, x_axis))}</text>"
        )
    for y in y_ticks:
        out.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" stroke="#eee"/>'
            f'<text x="{left - 5}" y="{py(y) + 4:.1f}" text-anchor="end">{_e(_fmt_tick(y, y_step))}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{_e(y_label)}</text>"
    )
    every = math.ceil(len(boundaries) / _SVG_BOUNDARY_LABELS) if boundaries else 1
    for k, b in enumerate(boundaries):
        if not math.isfinite(b):
            continue
        out.append(
            f'<line class="boundary" x1="{px(b):.1f}" y1="{top}" x2="{px(b):.1f}" y2="{top + ph}" '
            'stroke="#555" stroke-dasharray="5 4"/>'
        )
        if k % every == 0:
            out.append(f'<text x="{px(b) + 2:.1f}" y="{top - 3}" fill="#444" font-size="10">e{k + 1}</text>')
    for n, (label, color, points, line_width, dash, markers) in enumerate(series):
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        pieces: list[list[tuple[str, str]]] = [[]]  # runs of finite points: a missing value breaks the line
        shown = _thin(points)
        for x, y in shown:
            if math.isfinite(x) and math.isfinite(y):
                pieces[-1].append((f"{px(x):.1f}", f"{py(y):.1f}"))
            elif pieces[-1]:
                pieces.append([])
        for piece in pieces:
            if len(piece) > 1:
                coords = " ".join(f"{cx},{cy}" for cx, cy in piece)
                out.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="{line_width}"{dash_attr} '
                    f'points="{coords}"/>'
                )
            if (markers and len(shown) <= _SVG_MARKERS) or len(
                piece
            ) == 1:  # a lone point has no line to show it
                out += [f'<circle cx="{cx}" cy="{cy}" r="2.2" fill="{color}"/>' for cx, cy in piece]
        ly = top + 8 + 16 * n
        out.append(
            f'<line x1="{left + pw + 12}" y1="{ly}" x2="{left + pw + 34}" y2="{ly}" stroke="{color}" '
            f'stroke-width="{max(line_width, 2)}"{dash_attr}/>'
            f'<text x="{left + pw + 40}" y="{ly + 4}">{_e(_short(label))}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _domain_style(j: int) -> tuple[str, str]:
    """Colour and dash of domain j: tab10, dashed from the 11th domain on so that none share a look."""
    return _TAB10[j % len(_TAB10)], "" if j < len(_TAB10) else ("6 3" if j < 2 * len(_TAB10) else "2 2")


def _lm_loss_svg(results: Mapping[str, Any], events: list[dict[str, Any]]) -> str:
    axis, domains, train, _ = _lm_curves(results, events)
    names = _names(results, len(domains))
    series = []
    for j, points in enumerate(domains):
        color, dash = _domain_style(j)
        series.append(_Line(names[j], color, points, dash=dash))
    if train:  # drawn last, thin and dark: the noisy batch losses under the domains' test losses
        series.append(_Line("training loss (batches)", "#333333", train, width=0.8, markers=False))
    return _svg_chart(
        series,
        title="Loss on each domain's test set over training (dashed: experience e1, e2, ... starts)",
        x_label="tokens trained on" if axis == "tokens" else "global training step",
        y_label="loss = log perplexity (nats)",
        x_axis=axis,
        boundaries=_lm_boundaries(results, events, axis),
    )


def _lr_svg(results: Mapping[str, Any], events: list[dict[str, Any]]) -> str:
    points = _lr_points(events)
    schedule = _schedule(results) or "schedule not recorded"
    return _svg_chart(
        [_Line("learning rate", _TAB10[0], points, markers=False)],
        title=f"Learning rate over steps: {schedule} (dashed: experience e1, e2, ... starts)",
        x_label="global training step",
        y_label="learning rate",
        x_axis="step",
        boundaries=_start_steps(results, events),
    )


def _fmt_legend_value(v: float) -> str:
    """A perplexity on the colour key: 37.4, 500, 2k, 1.5M."""
    return _fmt_count(v) if v >= 1000 else f"{v:.3g}"


def _ppl_legend(results: Mapping[str, Any]) -> str:
    """The colour key of the perplexity heatmap: a log-scaled bar from the lowest to the highest value."""
    bounds = _ppl_range(v for row in _cells(results) for v in row if v is not None)
    if bounds is None:
        return ""
    lo, hi = bounds
    log = lo > 0  # as `_ppl_position` colours the cells
    left, bar_w, n = 24, 360, 48  # room for the end labels, centred under the bar's ends
    parts = [
        f'<svg class="legend" width="{bar_w + 2 * left + 250}" height="46" role="img" '
        'aria-label="perplexity colour key, log colour scale" font-family="sans-serif" font-size="11">'
    ]
    for k in range(n):
        rgba = _lut("viridis_r", (k + 0.5) / n)
        parts.append(
            f'<rect x="{left + k * bar_w / n:.1f}" y="4" width="{bar_w / n + 0.5:.1f}" height="14" '
            f'fill="{_hex(rgba)}"/>'
        )
    ticks = [lo, hi] if hi > lo else [lo]
    if log:  # 1-2-5 steps per decade between the ends, the ones far enough from the ends to be read
        decade = 10 ** math.floor(math.log10(lo))
        while decade <= hi:
            for m in (1, 2, 5):
                v = m * decade
                if lo < v < hi and all(
                    abs(_ppl_position(v, lo, hi) - _ppl_position(t, lo, hi)) > 0.08 for t in ticks
                ):
                    ticks.append(v)
            decade *= 10
    for v in sorted(ticks):
        x = left + _ppl_position(v, lo, hi) * bar_w
        parts.append(
            f'<line x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="22" stroke="#333"/>'
            f'<text x="{x:.1f}" y="34" text-anchor="middle">{_e(_fmt_legend_value(v))}</text>'
        )
    scale = "log colour scale" if log else "linear colour scale"
    parts.append(
        f'<text x="{left + bar_w + 30}" y="15">perplexity, {scale}</text>'
        f'<text x="{left + bar_w + 30}" y="30">brighter is lower (better)</text></svg>'
    )
    return "".join(parts)


# ------------------------------------------------------------------------- language models: PNG files


def _lm_curves_figure(results: Mapping[str, Any], events: list[dict[str, Any]]) -> Any | None:
    """The loss curves of `_lm_loss_svg` as a matplotlib figure (for `plots=True`); None with no point."""
    axis, domains, train, _ = _lm_curves(results, events)
    if not train and not any(math.isfinite(y) for d in domains for _, y in d):
        return None
    names = _names(results, len(domains))
    fig = _figure(9.0, 4.6)
    ax = fig.add_subplot()
    for j, points in enumerate(domains):
        color, dash = _domain_style(j)
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            color=color,
            linestyle="--" if dash else "-",
            marker="o" if len(points) <= _SVG_MARKERS else None,
            markersize=3,
            linewidth=1.4,
            label=_short(names[j]),
        )
    if train:
        ax.plot(
            [x for x, _ in train], [y for _, y in train], color="black", linewidth=0.6, label="training loss"
        )
    _mark_boundaries(ax, _lm_boundaries(results, events, axis))
    ax.set_xlabel("tokens trained on" if axis == "tokens" else "global training step")
    ax.set_ylabel("loss = log perplexity (nats)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("loss on each domain over training (dashed: experience e1, e2, ... starts)", pad=14)
    return fig


def _lr_figure(results: Mapping[str, Any], events: list[dict[str, Any]]) -> Any | None:
    points = _lr_points(events)
    if not points:
        return None
    fig = _figure(9.0, 3.4)
    ax = fig.add_subplot()
    ax.plot([x for x, _ in points], [y for _, y in points], color=_TAB10[0], linewidth=1.4)
    _mark_boundaries(ax, _start_steps(results, events))
    ax.set_xlabel("global training step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"learning rate: {_schedule(results) or 'schedule not recorded'}", pad=14)
    return fig


def _mark_boundaries(ax: Any, starts: list[float]) -> None:
    every = math.ceil(len(starts) / 12) if starts else 1
    for k, start in enumerate(starts):
        ax.axvline(start, color="0.35", linestyle="--", linewidth=0.9)
        if k % every == 0:
            ax.text(start, 1.0, f" e{k + 1}", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8)


def _lm_training(results: Mapping[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """The "During training" section of a language-modelling run: loss and LR figures and their notes."""
    axis, _, train, has_evals = _lm_curves(results, events)
    body = []
    loss = _lm_loss_svg(results, events)
    if loss:
        body += ["<h3>Loss on each domain</h3>", loss]
        fallback = (
            ""
            if axis == "tokens"
            else " The events of this run do not all say how many tokens had been trained on, so the x "
            "axis is the optimizer step."
        )
        body.append(
            '<p class="note">One line per domain: the log perplexity on its test set (the untrained model '
            "at 0, each periodic evaluation, and each experience's end)"
            + (", and the training loss of the logged batches in dark grey" if train else "")
            + ". Log perplexity is the mean token loss: 2.303 is a perplexity of 10, 4.605 one of 100."
            + fallback
            + "</p>"
        )
    if not has_evals:
        body.append(
            '<p class="note">No eval events in events.jsonl: the run did not evaluate during training'
            + (", so each domain has a point per experience end only" if loss else ", so there is no curve")
            + " (set train.eval_every to follow the loss between, and see the stability gap).</p>"
        )
    lr = _lr_svg(results, events)
    body.append("<h3>Learning rate</h3>")
    body.append(
        lr
        if lr
        else '<p class="note">No train events with a learning rate in events.jsonl (train.log_every was '
        "off, or the run was written before they were recorded): no LR curve.</p>"
    )
    return body


# ---------------------------------------------------------------------------------------- public plots


def plot_matrix(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Heatmap of the matrix R with each cell's value; returns the PNG's path.

    Rows: after training on experience i; columns: evaluated on experience j (numbered from 1). Accuracy
    in percent on a fixed 0-100 scale, perplexity raw with a reversed colormap on a log scale (bright is
    good in both). Cells without a value are grey and marked "–".
    """
    _check_results(results, "results")
    path = Path(path)
    atomic_write_bytes(path, _png(_matrix_figure(results)))
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


def plot_confusion(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Heatmap of the confusion matrix after the last experience, class names on the axes; returns the
    PNG's path, or None (writing nothing) when results.json has no usable "confusion"."""
    _check_results(results, "results")
    counts, _ = _last_confusion(results)
    if counts is None:
        return None
    path = Path(path)
    fig = _confusion_figure(counts, _class_names(results, len(counts)), len(results["confusion"]))
    atomic_write_bytes(path, _png(fig))
    return path


def plot_comparison(named_results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Bars of ACC (mean perplexity for language models), forgetting and BWT for several runs (e.g. Naive,
    Replay, Joint); returns the PNG's path.

    All runs must share one metric (DataError otherwise). A figure a run does not have is drawn as "n/a".
    """
    path = Path(path)
    atomic_write_bytes(path, _png(_comparison_figure(named_results)))
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
td.missing{background:#eeeeee;color:#777;text-align:center}td.wrap{white-space:normal}
.meta td:first-child{font-weight:600;background:#f8f8fa}.note{color:#555;font-size:.88rem}
img{max-width:100%;height:auto;display:block;margin:.6rem 0}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.85rem;border:1px solid #e1e4e8}
.scroll{overflow-x:auto}svg.chart{max-width:100%;height:auto;display:block;margin:.6rem 0}
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
        wrap = "wrap" if key == "fwt" and _fwt_note(summary) is not None else ""
        rows.append(
            f"<tr><td>{_e(_label(key, metric))}</td>{_num_td(_summary_text(key, summary, metric), v, wrap)}"
            f"<td>{_e(defs[key])}</td></tr>"
        )
    if metric == "perplexity":
        rows += _lm_summary_rows(results)
    rows.append("</table>")
    unit = (
        "Accuracy values are in percent; differences in percentage points (pp)."
        if metric == "accuracy"
        else "Perplexity values are raw; lower is better."
    )
    rows.append(f'<p class="note">{_e(unit)} {_e(_NUMBERING)}</p>')
    return "\n".join(rows)


def _matrix_table(results: Mapping[str, Any]) -> str:
    metric = results["metric"]
    cells = _cells(results)
    nrows, ncols = len(cells), len(cells[0])
    names = _names(results, max(nrows, ncols))
    initial = _initial(results, ncols)
    scale = _scale(metric)
    shown = [[math.nan if v is None else v * scale for v in row] for row in cells]
    colors = _table_colors(metric, shown)  # the heatmap's colours

    def cell(i: int, j: int) -> str:
        v, style = cells[i][j], ""
        if v is None:
            return _num_td(_MISSING, "no value", "missing diag" if i == j else "missing")
        if math.isfinite(v):
            rgba = colors[i][j]
            style = f"background:{_hex(rgba)};color:{_text_color(rgba)}"
        return _num_td(_fmt_cell(v, metric), repr(v), "diag" if i == j else "", style)

    out = [
        '<div class="scroll"><table>',
        "<tr><th>after training on ↓ / evaluated on →</th>"
        + "".join(f"<th>{_e(names[j])}</th>" for j in range(ncols))
        + "</tr>",
    ]
    if initial is not None:
        out.append(
            '<tr class="initial"><th>untrained model</th>'
            + "".join(
                _num_td(_MISSING, "no value", "missing")
                if v is None
                else _num_td(_fmt_cell(v, metric), repr(v))
                for v in initial
            )
            + "</tr>"
        )
    for i in range(nrows):
        out.append(f"<tr><th>{_e(names[i])}</th>" + "".join(cell(i, j) for j in range(ncols)) + "</tr>")
    out.append("</table></div>")
    unit = "percent" if metric == "accuracy" else "perplexity, lower is better"
    missing = (
        f" {_MISSING}: no value (a row written before the run was continued with new experiences)."
        if any(v is None for row in cells for v in row) or (initial is not None and None in initial)
        else ""
    )
    out.append(
        f'<p class="note">R[i][j] in {_e(unit)}; the diagonal (outlined) is each experience right '
        f"after training on it. Hover a cell for the exact value.{_e(missing)}</p>"
    )
    return "\n".join(out)


def _confusion_table(counts: list[list[float]], class_names: list[str]) -> str:
    """The confusion matrix as an HTML heatmap: rows true, columns predicted, each cell coloured by its
    share of the true class's samples and showing the count (the share on hover)."""
    names = [_short(n, _CLASS_CHARS) for n in class_names]
    out = [
        '<div class="scroll"><table class="confusion">',
        "<tr><th>true ↓ / predicted →</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>",
    ]
    for i, row in enumerate(counts):
        total = sum(row)
        cells = []
        for j, count in enumerate(row):
            share = count / total if total > 0 else math.nan
            rgba = _lut("Blues", share)
            style = f"background:{_hex(rgba)};color:{_text_color(rgba)}"
            hint = "no test sample" if math.isnan(share) else f"{100 * share:.1f} % of the class"
            cells.append(_num_td(f"{int(count)}", hint, "diag" if i == j else "", style))
        out.append(f"<tr><th>{_e(names[i])}</th>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _per_class_table(results: Mapping[str, Any]) -> str | None:
    """Accuracy of each class (rows, with its name) after each experience (columns), or None without it."""
    rows, problem = _per_class(results)
    if problem is not None:
        return f'<p class="note">{_e(problem)} in results.json; the per-class table is left out.</p>'
    if rows is None:
        return None
    k = len(rows[0])
    names = _class_names(results, k)
    shown = [[math.nan if v is None else v * 100.0 for v in row] for row in rows]
    colors = _table_colors("accuracy", shown)

    def cell(i: int, c: int) -> str:
        v = rows[i][c]
        if v is None:
            return _num_td(_MISSING, "no test sample of this class", "missing")
        rgba = colors[i][c]
        style = f"background:{_hex(rgba)};color:{_text_color(rgba)}" if math.isfinite(v) else ""
        return _num_td(_fmt_cell(v, "accuracy"), repr(v), "", style)

    out = [
        '<div class="scroll"><table>',
        "<tr><th>class</th>"
        + "".join(f"<th>after experience {i + 1}</th>" for i in range(len(rows)))
        + "</tr>",
    ]
    for c in range(k):
        label = names[c] if names[c] == str(c) else f"{names[c]} ({c})"
        out.append(f"<tr><th>{_e(label)}</th>" + "".join(cell(i, c) for i in range(len(rows))) + "</tr>")
    out.append("</table></div>")
    out.append(
        '<p class="note">Accuracy (percent) on the test samples of each class, over the test sets of all '
        "experiences together, after each experience ended; the class index is in brackets. "
        f"{_e(_MISSING)}: no test sample of that class.</p>"
    )
    return "\n".join(out)


def _gap_table(results: Mapping[str, Any]) -> str | None:
    gaps = results.get("stability_gap")
    if not isinstance(gaps, list) or not gaps:
        return None
    metric = results["metric"]
    names = _names(results, max(len(results["matrix"][0]), len(gaps) + 1))
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


def _classes_line(results: Mapping[str, Any]) -> str | None:
    """ "10: T-shirt, Trouser, ..." from "label_names", or None when the run has none."""
    names = results.get("label_names")
    if not isinstance(names, list) or not names:
        return None
    return f"{len(names)}: " + ", ".join(str(n) for n in names)


def _config_json(config: Any) -> str:
    return json.dumps(config, indent=2, sort_keys=True, default=str, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ public pages


def _pseudo_label_section(entries: list[Mapping[str, Any]]) -> list[str]:
    """Self-training diagnostics: per experience (and round) precision, coverage and ECE of the pseudo-labels
    against the held-back labels, and the last reliability diagram (inline SVG: accuracy per confidence bin
    against the diagonal of perfect calibration)."""

    def pct(v: Any) -> str:
        return "–" if not _is_number(v) else f"{100 * float(v):.1f} %"

    rows = [
        "<table><tr><th>experience</th><th>round</th><th>precision</th><th>coverage</th><th>ECE</th>"
        "<th>selected / unlabeled</th></tr>"
    ]
    for e in entries:
        for r in e.get("rounds") or [e]:
            rows.append(
                f"<tr><td>{int(e.get('experience', 0)) + 1}</td><td>{_e(r.get('round', ''))}</td>"
                f"<td>{pct(r.get('precision'))}</td><td>{pct(r.get('coverage'))}</td><td>{pct(r.get('ece'))}</td>"
                f"<td>{_e(r.get('selected', '–'))} / {_e(r.get('unlabeled', '–'))}</td></tr>"
            )
    rows.append("</table>")
    out = ["".join(rows)]
    bins = [b for b in (entries[-1].get("reliability") or []) if isinstance(b, Mapping) and b.get("count")]
    if bins:
        size, pad = 220, 30
        bars = []
        for b in bins:
            lo, hi = float(b.get("low", 0.0)), float(b.get("high", 0.0))
            acc = float(b.get("accuracy") or 0.0)
            x, w = pad + lo * size, max(1.0, (hi - lo) * size - 1)
            bars.append(
                f'<rect x="{x:.1f}" y="{pad + (1 - acc) * size:.1f}" width="{w:.1f}" '
                f'height="{acc * size:.1f}" fill="#4c72b0"><title>confidence {lo:.2f}-{hi:.2f}: '
                f'accuracy {acc:.2f}, {b["count"]} samples</title></rect>'
            )
        svg = (
            f'<svg width="{size + 2 * pad}" height="{size + 2 * pad}" role="img" '
            'aria-label="reliability diagram">'
            f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>'
            + "".join(bars)
            + f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#c44" '
            'stroke-dasharray="4 3"/>'
            f'<text x="{pad}" y="{size + 2 * pad - 6}" font-size="11">confidence 0 to 1</text>'
            f'<text x="4" y="{pad - 8}" font-size="11">accuracy</text></svg>'
        )
        out += [
            svg,
            '<p class="note">Reliability of the last experience\'s pseudo-labels: bars are the accuracy '
            "of the samples in each confidence bin, the dashed line perfect calibration (bars below it: "
            "over-confident).</p>",
        ]
    return out


def write_report(run_dir: str | os.PathLike[str], plots: bool = True) -> Path:
    """Write `run_dir/report.html` from the run's files, and with `plots` the figures as PNG files for use
    outside the page: `run_dir/plots/{matrix,confusion,curves}.png`, and for a language model also
    `plots/{loss,lr}.png` (the page itself draws those as inline SVG, and a language model's curves.png
    only with `plots`).

    The page shows the matrix and the confusion matrix as HTML heatmaps (exact values on hover) and embeds
    the curves (drawn only when `events.jsonl` holds eval events); without `plots` and without eval events
    no figure is drawn, so matplotlib is not even imported (the end of every run writes the page this way).
    A language model's page draws its curves (loss per domain, learning rate) as inline SVG, so without
    `plots` it never needs matplotlib.
    Raises StateError when `results.json` is missing (the run has not finished) or damaged. Returns the
    HTML page's path.
    """
    run_dir = Path(run_dir)
    results = _load_results(run_dir)
    metric = results["metric"]
    lm = metric == "perplexity"
    events, bad_lines = _read_events(run_dir, _LM_EVENTS if lm else ("eval",))
    evals = [e for e in events if e.get("event") == "eval"]
    method = str(results.get("method", "unknown method"))
    nrows, ncols = len(results["matrix"]), len(results["matrix"][0])

    # a language model's page draws its curves as SVG; the PNG versions are drawn only when asked for
    curves_png = _curves_png(results, evals) if plots or not lm else None
    counts, confusion_problem = _last_confusion(results)
    class_names = None if counts is None else _class_names(results, len(counts))
    if plots:
        atomic_write_bytes(run_dir / "plots" / "matrix.png", _png(_matrix_figure(results)))
        if counts is not None and class_names is not None:
            after = len(results["confusion"])
            figure = _confusion_figure(counts, class_names, after)
            atomic_write_bytes(run_dir / "plots" / "confusion.png", _png(figure))
    if curves_png is not None:
        atomic_write_bytes(run_dir / "plots" / "curves.png", curves_png)
    if plots and lm:
        for name, figure in (
            ("loss", _lm_curves_figure(results, events)),
            ("lr", _lr_figure(results, events)),
        ):
            if figure is not None:
                atomic_write_bytes(run_dir / "plots" / f"{name}.png", _png(figure))

    meta: list[tuple[str, Any]] = [
        ("method", method),
        ("metric", f"{metric} ({'higher' if metric == 'accuracy' else 'lower'} is better)"),
        ("experiences", f"{nrows} trained, {ncols} test sets"),
    ]
    if (classes := _classes_line(results)) is not None:
        meta.append(("classes", classes))
    meta += [
        ("seed", results.get("seed", "n/a")),
        ("wall time", _fmt_seconds(results.get("wall_seconds"))),
        ("lifelong version", results.get("lifelong_version", "n/a")),
    ]

    title = f"lifelong report: {method}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(metric)} ({"higher" if metric == "accuracy" else "lower"} is better) '
        f"over {ncols} experiences; run directory {_e(run_dir.resolve())}</p>",
        _meta_table(meta),
        "<h2>Summary</h2>",
        _summary_table(results),
        "<h2>Matrix</h2>",
        _matrix_table(results),
    ]
    if lm:
        body += [
            _ppl_legend(results),
            "<h2>Tokens, throughput and forgetting</h2>",
            _lm_meta(results),
            _lm_table(results),
        ]
    per_class = _per_class_table(results)
    if per_class is not None:
        body += ["<h2>Per-class accuracy</h2>", per_class]
    if counts is not None and class_names is not None:
        body += [
            "<h2>Confusion matrix</h2>",
            _confusion_table(counts, class_names),
            '<p class="note">Rows: the true class; columns: the predicted class, over the test sets of all '
            f"experiences after the last one (experience {len(results['confusion'])}); each cell holds the "
            "count, coloured by its share of the true class's test samples (each row adds up to 100 %; the "
            "share on hover).</p>",
        ]
    elif confusion_problem is not None:
        body.append(f'<p class="note">{_e(confusion_problem)} in results.json; no confusion matrix.</p>')
    pseudo = results.get("pseudo_labels")
    if pseudo:
        body += ["<h2>Pseudo-labels</h2>", *_pseudo_label_section(pseudo)]
    gap = _gap_table(results)
    if gap is not None:
        body += ["<h2>Stability gap</h2>", gap]
    body.append("<h2>During training</h2>")
    if lm:
        body += _lm_training(results, events)
    elif curves_png is not None:
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

    The runs may use different methods and different numbers of experiences (the page says when the
    latter makes their figures average over different test sets). The page has a summary table (one row
    per run), the comparison bars, and each run's matrix heatmap (plus its training curves when it has eval
    events). Raises StateError for a run without results and DataError when the runs use different
    metrics, before writing anything. Returns the HTML page's path.
    """
    if not named_run_dirs:
        raise DataError("nothing to compare: pass at least one run directory.")
    out_dir = Path(out_dir)
    named_results = {name: _load_results(Path(d)) for name, d in named_run_dirs.items()}
    metric = _common_metric(named_results)

    comparison_png = _png(_comparison_figure(named_results))
    atomic_write_bytes(out_dir / "comparison.png", comparison_png)

    head = ["run", "method", *(_label(k, metric) for k in _SUMMARY_KEYS), "experiences", "seed", "wall time"]
    table = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    fwt_notes: dict[str, str] = {}
    for name, results in named_results.items():
        summary: Mapping[str, Any] = results["summary"] if isinstance(results.get("summary"), Mapping) else {}
        if (note := _fwt_note(summary)) is not None:
            fwt_notes[name] = note
        cells = [
            _num_td("n/a (see below)", note)
            if k == "fwt" and note is not None
            else _num_td(_summary_value(k, summary.get(k), metric), summary.get(k))
            for k in _SUMMARY_KEYS
        ]
        table.append(
            f"<tr><td>{_e(name)}</td><td>{_e(results.get('method', 'n/a'))}</td>"
            + "".join(cells)
            + _num_td(str(len(results["matrix"])))
            + _num_td(str(results.get("seed", "n/a")))
            + _num_td(_fmt_seconds(results.get("wall_seconds")))
            + "</tr>"
        )
    table.append("</table>")

    notes = [f"FWT of {name}: n/a ({note})." for name, note in fwt_notes.items()]
    lengths = {name: len(results["matrix"][0]) for name, results in named_results.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{n}: {t}" for n, t in lengths.items())
        notes.append(
            f"The runs have different numbers of experiences ({listed}): each figure averages over its own "
            "run's test sets, so read the differences with that in mind."
        )

    title = f"lifelong comparison: {', '.join(named_results)}"
    defs = _definitions(metric)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(metric)} ({"higher" if metric == "accuracy" else "lower"} is better); '
        f"{len(named_results)} runs.</p>",
        "<h2>Summary</h2>",
        "\n".join(table),
        *(f'<p class="note">{_e(n)}</p>' for n in notes),
        '<ul class="note">'
        + "".join(f"<li><b>{_e(_label(k, metric))}</b>: {_e(defs[k])}</li>" for k in _SUMMARY_KEYS)
        + f"<li>{_e(_NUMBERING)}</li></ul>",
        _img(comparison_png, ", ".join(_label(k, metric) for k in _COMPARED) + " of each run"),
    ]
    for name, results in named_results.items():
        run_dir = Path(named_run_dirs[name])
        body += [
            f"<h2>{_e(name)}</h2>",
            f'<p class="note">{_e(results.get("method", "n/a"))}, {len(results["matrix"])} experiences; '
            f"run directory {_e(run_dir.resolve())}</p>",
            _img(_png(_matrix_figure(results, f"{name}: {metric} matrix R[i][j]")), f"{name} matrix heatmap"),
        ]
        events, _ = _read_events(run_dir)
        curves = _curves_png(results, events, f"{name}: {metric} on each test set during training")
        if curves is not None:
            body.append(_img(curves, f"{name} curves"))

    out = out_dir / "report.html"
    atomic_write_bytes(out, _page(title, body).encode("utf-8"))
    return out
