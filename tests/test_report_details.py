"""What a person reads in a report: missing cells, class names, per-class accuracy and confusion, perplexity
wording, why FWT is n/a, experiences numbered from 1, comparisons of unlike runs, and long streams. Every
run here is a hand-written results.json in tmp_path; nothing is trained."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.errors import DataError
from lifelong.evaluation import metrics
from lifelong.evaluation.report import (
    _confusion_figure,
    _curves_figure,
    _matrix_figure,
    plot_confusion,
    write_comparison_report,
    write_report,
)

LABELS = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal"]


def classification_results(t: int = 3, **extra) -> dict:
    """A class-incremental run of `t` experiences of 2 classes each, with the keys the learner writes."""
    k = 2 * t
    matrix = [[round(0.9 - 0.2 * (i - j), 3) if j <= i else 0.0 for j in range(t)] for i in range(t)]
    per_class = [[0.9 if c < 2 * (i + 1) else 0.0 for c in range(k)] for i in range(t)]
    confusion = [[[50 if p == c else 1 for p in range(k)] for c in range(k)] for _ in range(t)]
    results = {
        "metric": "accuracy",
        "matrix": matrix,
        "initial": [0.0] * t,
        "summary": metrics.summary(matrix, [0.0] * t, fwt_meaningful=False),
        "stability_gap": None,
        "experience_names": [f"classes {2 * j}, {2 * j + 1}" for j in range(t)],
        "experience_start_steps": [100 * j for j in range(t)],
        "label_names": (LABELS * t)[:k] if t <= 3 else [f"class {c}" for c in range(k)],
        "per_class_accuracy": per_class,
        "confusion": confusion,
        "method": "replay",
        "config": {"method": {"name": "replay"}},
        "seed": 0,
        "wall_seconds": 3.0,
    }
    results.update(extra)
    return results


def make_run(tmp_path: Path, results: dict, name: str = "run", events: list[dict] | None = None) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if events is not None:
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return run


def evals(t: int, every: int = 25) -> list[dict]:
    return [
        {"event": "eval", "step": s, "experience": s // 100, "values": [0.5] * t}
        for s in range(0, 100 * t, every)
    ]


def visible(page: str) -> str:
    """The page's text without images, tags or the config dump (which echoes user input verbatim)."""
    page = re.sub(r'src="data:image/png;base64,[^"]*"', "", page)
    page = page[page.index("<body>") :].split("<h2>Config</h2>")[0]
    return re.sub(r"<[^>]+>", " ", page)


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def series(ax) -> dict:
    """The plotted curves by legend label (the dashed boundaries are unlabelled lines)."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


# ---------------------------------------------------------------------------------------- missing cells

CONTINUED = {
    "metric": "accuracy",
    # experience 2 was added by a continuation: rows 0 and 1 have no value for it, nor has `initial`
    "matrix": [[0.9, 0.1, None], [0.7, 0.85, None], [0.6, 0.75, 0.8]],
    "initial": [0.1, 0.1, None],
}


def test_missing_cells_show_a_dash_in_the_table(tmp_path):
    page = write_report(make_run(tmp_path, CONTINUED)).read_text(encoding="utf-8")
    cells = re.findall(r'<td class="num[^"]*missing[^"]*" title="no value">–</td>', page)
    assert len(cells) == 3  # two matrix cells and one `initial` cell
    assert ">90.0<" in page and ">80.0<" in page
    assert "no value (a row written before the run was continued" in page
    assert ">nan<" not in page  # a missing cell is not a NaN result


def test_missing_cells_are_dashes_and_grey_on_the_heatmap():
    fig = _matrix_figure(CONTINUED)
    ax = fig.axes[0]
    assert texts(ax).count("–") == 2 and "90.0" in texts(ax)
    image = ax.images[0]
    assert image.get_array().mask[0, 2] and image.get_array().mask[1, 2]  # masked: drawn in the grey "bad"
    assert image.get_cmap().get_bad()[:3] == pytest.approx((0xD9 / 255,) * 3)


def test_curves_draw_gaps_for_missing_values(tmp_path):
    events = [
        {
            "event": "eval",
            "step": 0,
            "experience": 0,
            "values": [0.5, 0.1],
        },  # written before the continuation
        {"event": "eval", "step": 10, "experience": 1, "values": [0.4, None, 0.3]},
        {"event": "eval", "step": 20, "experience": 2, "values": [0.6, 0.7, 0.8]},
    ]
    fig = _curves_figure(CONTINUED, events)
    curves = series(fig.axes[0])
    assert list(curves) == ["exp 1", "exp 2", "exp 3"]
    assert [math.isnan(v) for v in curves["exp 3"].get_ydata()] == [True, False, False]  # a gap at step 0
    assert [math.isnan(v) for v in curves["exp 2"].get_ydata()] == [False, True, False]
    page = write_report(make_run(tmp_path, CONTINUED, events=events)).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1  # the curves (the matrix is an HTML heatmap)


# ------------------------------------------------------------------------- class names, per class, confusion


def test_classes_line_in_the_meta_table(tmp_path):
    page = write_report(make_run(tmp_path, classification_results())).read_text(encoding="utf-8")
    assert "<tr><td>classes</td><td>6: T-shirt, Trouser, Pullover, Dress, Coat, Sandal</td></tr>" in page


def test_per_class_table_has_names_and_experience_columns(tmp_path):
    results = classification_results()
    results["per_class_accuracy"][0][5] = None  # no test sample of class 5 yet
    page = write_report(make_run(tmp_path, results)).read_text(encoding="utf-8")
    section = page[page.index("<h2>Per-class accuracy</h2>") : page.index("<h2>Confusion matrix</h2>")]
    assert "<th>after experience 1</th><th>after experience 2</th><th>after experience 3</th>" in section
    assert "after experience 0" not in section
    assert "<th>T-shirt (0)</th>" in section and "<th>Sandal (5)</th>" in section
    assert 'title="no test sample of this class">–<' in section
    assert section.count(">90.0<") == 2 + 4 + 6 - 0  # classes seen so far after each experience
    # the class rows carry the colours of the matrix (fixed 0-100 % viridis)
    assert "background:#" in section


def test_confusion_heatmap_has_class_names_and_counts(tmp_path):
    run = make_run(tmp_path, classification_results())
    page = write_report(run).read_text(encoding="utf-8")
    assert (run / "plots" / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert "<h2>Confusion matrix</h2>" in page and "after the last one (experience 3)" in page
    assert page.count("data:image/png;base64,") == 0  # HTML heatmaps; the PNGs are files in plots/
    table = page[page.index('<table class="confusion">') :]
    table = table[: table.index("</table>")]
    assert all(f"<th>{name}</th>" in table for name in LABELS)
    counts = classification_results()["confusion"][-1]
    assert table.count("<td ") == len(LABELS) ** 2 and f">{counts[0][0]}<" in table

    counts = classification_results()["confusion"][-1]
    import numpy as np

    ax = _confusion_figure(np.array(counts, dtype=float), LABELS, 3).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    assert texts(ax).count("50") == 6 and texts(ax).count("1") == 30  # every count, up to 15 classes
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "after experience 3" in ax.get_title()


def test_confusion_of_fifty_classes_names_every_class_without_numbers():
    import numpy as np

    k = 50
    names = [f"species {c}" for c in range(k)]
    counts = np.eye(k) * 20 + 1
    ax = _confusion_figure(counts, names, 25).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names  # every class named
    assert texts(ax) == []  # 2500 numbers would be unreadable: colour only
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 6


def test_plot_confusion_and_malformed_keys(tmp_path):
    assert plot_confusion(classification_results(), tmp_path / "c.png") == tmp_path / "c.png"
    assert plot_confusion({"metric": "accuracy", "matrix": [[0.5]]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()

    bad = classification_results(per_class_accuracy=[[0.5, "x"]], confusion=[[[1, 2], [3]]])
    run = make_run(tmp_path, bad, name="bad")
    page = write_report(run).read_text(encoding="utf-8")
    assert "&#x27;per_class_accuracy&#x27; is not a list" in page and "per-class table is left out" in page
    assert "&#x27;confusion&#x27; does not end with a square list" in page
    assert not (run / "plots" / "confusion.png").exists()


def test_runs_written_before_have_no_class_sections(tmp_path):
    results = classification_results()
    for key in ("label_names", "per_class_accuracy", "confusion"):
        del results[key]
    run = make_run(tmp_path, results)
    page = write_report(run).read_text(encoding="utf-8")
    assert "Per-class accuracy" not in page and "Confusion matrix" not in page
    assert "<td>classes</td>" not in page
    assert not (run / "plots" / "confusion.png").exists()


# ---------------------------------------------------------------------------------------------- perplexity

PERPLEXITY = {
    "metric": "perplexity",
    "matrix": [[42.17, 310.5], [55.25, 38.9]],
    "initial": [256.0, 256.0],
    "summary": {"acc": 47.08, "bwt": 13.08, "fwt": 54.5, "forgetting": 13.08, "plasticity": 40.54},
    "experience_names": ["tech", "life"],
    "method": "naive",
}


def test_perplexity_summary_says_perplexity_not_accuracy(tmp_path):
    page = write_report(make_run(tmp_path, PERPLEXITY)).read_text(encoding="utf-8")
    text = visible(page)
    assert "<tr><td>Mean perplexity</td>" in page and "<td>ACC</td>" not in page
    assert "lower is better" in text
    assert "accuracy" not in text.lower() and "%" not in text and " pp" not in text


def test_perplexity_comparison_says_perplexity(tmp_path):
    a = make_run(tmp_path, PERPLEXITY, "a")
    b = make_run(tmp_path, {**PERPLEXITY, "method": "lora"}, "b")
    page = write_comparison_report({"naive": a, "lora": b}, tmp_path / "cmp").read_text(encoding="utf-8")
    text = visible(page)
    assert "<th>Mean perplexity</th>" in page and "<th>ACC</th>" not in page
    assert "accuracy" not in text.lower() and "%" not in text
    assert 'alt="Mean perplexity, Forgetting, BWT of each run"' in page


# --------------------------------------------------------------------------------------------------- FWT


def test_fwt_shows_why_it_is_not_meaningful(tmp_path):
    page = write_report(make_run(tmp_path, classification_results())).read_text(encoding="utf-8")
    assert f"n/a ({metrics.FWT_CLASS_INCREMENTAL})" in page
    assert "n/a (meaningless in class-incremental: " in page
    # any note the learner writes is shown as it is
    results = classification_results()
    results["summary"]["fwt_note"] = "each experience brings new classes"
    page = write_report(make_run(tmp_path, results, "own")).read_text(encoding="utf-8")
    assert "n/a (each experience brings new classes)" in page


def test_fwt_definition_explains_it(tmp_path):
    results = classification_results()
    results["summary"] = {"acc": 0.5, "bwt": -0.1, "fwt": None, "forgetting": 0.2, "plasticity": 0.9}
    page = write_report(make_run(tmp_path, results)).read_text(encoding="utf-8")
    row = re.search(r"<tr><td>FWT</td>(.*?)</tr>", page).group(1)
    assert ">n/a<" in row  # no note: plain n/a
    assert "Forward transfer" in row and "R[j−1][j] − initial[j]" in row
    assert "class-incremental" in row and "0 by construction" in row
    # a note is shown only when FWT is missing
    results["summary"].update(fwt=0.05, fwt_note="stale")
    page = write_report(make_run(tmp_path, results, "with_value")).read_text(encoding="utf-8")
    assert "+5.00 pp" in page and "stale" not in page


# ---------------------------------------------------------------------------------------- 1-based numbering


def test_experiences_are_numbered_from_one_in_the_page(tmp_path):
    gaps = [{"experience": 1, "before": 0.9, "min": 0.5, "min_step": 120, "depth": 0.4, "final": 0.7,
             "steps_to_recover": None}]  # fmt: skip
    run = make_run(tmp_path, classification_results(stability_gap=gaps), events=evals(3))
    page = write_report(run).read_text(encoding="utf-8")
    assert "<th>1: classes 0, 1</th>" in page and "<th>3: classes 4, 5</th>" in page
    assert "<td>2: classes 2, 3</td>" in page  # the gap of JSON experience 1 is the 2nd experience
    assert "0: classes" not in page and "after experience 0" not in page


def test_plots_number_experiences_from_one():
    results = classification_results()
    ax = _matrix_figure(results).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "1: classes 0, 1",
        "2: classes 2, 3",
        "3: classes 4, 5",
    ]
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "1: classes 0, 1"
    ax = _curves_figure(results, evals(3)).axes[0]
    assert list(series(ax)) == [
        "1: classes 0, 1",
        "2: classes 2, 3",
        "3: classes 4, 5",
    ]
    assert [t.strip() for t in texts(ax)] == ["e1", "e2", "e3"]


def test_old_names_with_a_zero_based_prefix_are_renumbered():
    old = classification_results(experience_names=["0: classes [0, 1]", "1: classes [2, 3]", "2: x"])
    ax = _matrix_figure(old).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1: classes [0, 1]", "2: classes [2, 3]", "3: x"]


# ------------------------------------------------------------------------------------------- comparisons


def test_comparison_of_runs_with_different_lengths_and_methods(tmp_path):
    two = make_run(tmp_path, classification_results(2, method="naive"), "two", events=evals(2))
    three = make_run(tmp_path, classification_results(3, method="replay"), "three")
    out = write_comparison_report({"mine-naive": two, "mine-replay": three}, tmp_path / "cmp")
    page = out.read_text(encoding="utf-8")
    assert (tmp_path / "cmp" / "comparison.png").read_bytes().startswith(b"\x89PNG")
    rows = re.findall(r"<tr><td>(mine-\w+)</td><td>(\w+)</td>.*?</tr>", page)
    assert rows == [("mine-naive", "naive"), ("mine-replay", "replay")]
    assert "different numbers of experiences (mine-naive: 2, mine-replay: 3)" in page
    assert "naive, 2 experiences" in page and "replay, 3 experiences" in page
    assert "FWT of mine-naive: n/a (meaningless in class-incremental" in page
    assert page.count("data:image/png;base64,") == 1 + 2 + 1  # bars, two matrices, one run's curves


def test_comparison_refuses_mixed_metrics_and_writes_nothing(tmp_path):
    acc = make_run(tmp_path, classification_results(2), "acc")
    ppl = make_run(tmp_path, PERPLEXITY, "ppl")
    with pytest.raises(DataError, match="different metrics"):
        write_comparison_report({"a": acc, "p": ppl}, tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


# --------------------------------------------------------------------------------------------- long streams


def test_fifteen_experiences_stay_readable(tmp_path):
    t = 15
    results = classification_results(t)
    run = make_run(tmp_path, results, events=evals(t, every=10))
    page = write_report(run).read_text(encoding="utf-8")
    assert "<th>15: classes 28, 29</th>" in page and "<th>after experience 15</th>" in page

    ax = _matrix_figure(results).axes[0]
    # past 12 experiences the axes show numbers (the names are in the table), every one, from 1
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in range(1, 16)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(k) for k in range(1, 16)]
    assert len(texts(ax)) == t * t  # still every value in its cell

    ax = _curves_figure(results, evals(t, every=10)).axes[0]
    boundaries = [s.strip() for s in texts(ax)]
    assert boundaries == [f"e{k}" for k in range(1, 16, 2)]  # at most ~12 labels, numbered from 1
    assert len(ax.get_legend().get_texts()) == t

    # 30 classes: named on the confusion axes, no numbers in the cells
    assert (run / "plots" / "confusion.png").exists()


def test_a_page_without_curves_draws_nothing_and_needs_no_matplotlib_or_numpy(tmp_path):
    """The end of every run writes the page: heatmaps are HTML, so only curves need matplotlib."""
    run = tmp_path / "run"
    run.mkdir()
    results = {
        "metric": "accuracy",
        "matrix": [[0.9, 0.1], [0.5, 0.8]],
        "summary": {"acc": 0.65, "bwt": -0.4, "fwt": None, "forgetting": 0.4, "plasticity": 0.85},
        "wall_seconds": 1.0,
        "label_names": ["cat", "dog"],
        "confusion": [[[9, 1], [5, 5]], [[8, 2], [2, 8]]],
        "per_class_accuracy": [[0.9, 0.5], [0.8, 0.8]],
    }
    (run / "results.json").write_text(json.dumps(results))
    code = (
        "import sys; from lifelong.evaluation.report import write_report; "
        f"write_report({str(run)!r}, plots=False); print('matplotlib' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"  # `lifelong report` starts fast: nothing heavy is imported
    html = (run / "report.html").read_text()
    assert 'class="confusion"' in html and ">cat<" in html and "80.0 % of the class" in html
    assert not (run / "plots").exists()
