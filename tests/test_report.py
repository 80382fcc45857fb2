"""The report reads a run directory's files alone and writes PNG plots and a self-contained HTML page."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from lifelong.errors import DataError, StateError
from lifelong.evaluation.report import (
    plot_comparison,
    plot_curves,
    plot_matrix,
    write_comparison_report,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def accuracy_results(method: str = "replay", **extra) -> dict:
    results = {
        "metric": "accuracy",
        "matrix": [[0.982, 0.113, 0.097], [0.874, 0.955, 0.121], [0.801, 0.862, 0.967]],
        "initial": [0.101, 0.098, 0.103],
        "summary": {"acc": 0.87667, "bwt": -0.12734, "fwt": 0.0155, "forgetting": 0.137, "plasticity": 0.968},
        "stability_gap": [
            {
                "experience": 1,
                "before": 0.982,
                "min": 0.412,
                "min_step": 390,
                "depth": 0.57,
                "final": 0.874,
                "steps_to_recover": 120,
            },
            {
                "experience": 2,
                "before": 0.874,
                "min": 0.5,
                "min_step": 760,
                "depth": 0.374,
                "final": 0.801,
                "steps_to_recover": None,
            },
        ],
        "experience_names": ["0: classes [0, 1]", "1: classes [2, 3]", "2: classes [4, 5]"],
        "experience_start_steps": [0, 375, 750],
        "method": method,
        "config": {"method": {"name": method, "memory": 500}, "lr": 0.01},
        "seed": 7,
        "wall_seconds": 12.3,
        "lifelong_version": "0.1.0",
    }
    results.update(extra)
    return results


def perplexity_results(**extra) -> dict:
    results = {
        "metric": "perplexity",
        "matrix": [[42.17, 310.5], [55.25, 38.9]],
        "summary": {"acc": 47.08, "bwt": 13.08, "fwt": None, "forgetting": 13.08, "plasticity": 40.54},
        "stability_gap": None,
        "method": "naive",
        "config": {"model": "tiny-gpt"},
        "seed": 0,
        "wall_seconds": 95.0,
        "lifelong_version": "0.1.0",
    }
    results.update(extra)
    return results


def eval_events(n_tests: int = 3, starts=(0, 375, 750), every: int = 25, end: int = 1125) -> list[dict]:
    events = [{"event": "start", "step": 0}]
    for step in range(0, end + 1, every):
        exp = sum(step >= s for s in starts) - 1
        values = [max(0.0, 0.9 - 0.3 * abs(j - exp)) for j in range(n_tests)]
        events.append({"event": "eval", "step": step, "experience": exp, "values": values})
        if step in starts[1:]:
            events.append({"event": "experience_end", "experience": exp - 1, "step": step})
    events.append({"event": "checkpoint", "step": end, "path": "ckpt"})
    return events


def make_run(
    tmp_path: Path, results: dict | None, events: list[dict] | None = None, name: str = "run"
) -> Path:
    run = tmp_path / name
    run.mkdir()
    if results is not None:
        (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if events is not None:
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return run


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page


def no_temp_files(directory: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in directory.rglob("*"))


# ------------------------------------------------------------------------------------------ write_report


def test_accuracy_report_with_evals(tmp_path):
    run = make_run(tmp_path, accuracy_results(), eval_events())
    out = write_report(run)

    assert out == run / "report.html"
    assert_png(run / "plots" / "matrix.png")
    assert_png(run / "plots" / "curves.png")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert page.count('src="data:image/png;base64,') == 1  # the curves; the matrix is an HTML heatmap
    # matrix numbers, in percent with one decimal
    for number in ("98.2", "11.3", "87.4", "95.5", "80.1", "86.2", "96.7", "10.1"):
        assert f">{number}<" in page
    assert "<th>untrained model</th>" in page
    # summary values and their definitions
    for value in ("87.67%", "-12.73 pp", "+1.55 pp", "+13.70 pp", "96.80%"):
        assert value in page
    for name in (
        "ACC",
        "BWT",
        "FWT",
        "Forgetting",
        "Plasticity",
        "mean of the last row",
        "R[T][j] − R[j][j]",  # experiences numbered from 1 on the page
    ):
        assert name.lower() in page.lower()
    # stability gap table, names, config, metadata
    assert "Stability gap" in page and "not recovered" in page and ">390<" in page and ">57.0<" in page
    assert "1: classes [0, 1]" in page and "0: classes" not in page  # old 0-based prefix dropped
    assert "&quot;memory&quot;: 500" in page
    assert ">7<" in page and "12.3 s" in page and "0.1.0" in page
    assert no_temp_files(run)


def test_perplexity_report_without_events(tmp_path):
    run = make_run(tmp_path, perplexity_results())
    out = write_report(run)

    page = out.read_text(encoding="utf-8")
    assert_png(run / "plots" / "matrix.png")
    assert not (run / "plots" / "curves.png").exists()
    assert_self_contained(page)
    assert page.count('src="data:image/png;base64,') == 0  # no curves; the matrix is an HTML heatmap
    for number in ("42.2", "310.5", "55.2", "38.9"):  # raw perplexity, one decimal
        assert f">{number}<" in page
    assert ">47.08<" in page and ">+13.08<" in page and ">40.54<" in page and ">n/a<" in page
    assert "lower is better" in page
    assert "No eval events" in page
    assert "Stability gap" not in page
    assert "exp 1" in page and "exp 2" in page and "exp 0" not in page  # fallback names, from 1
    assert "<th>untrained model</th>" not in page  # no `initial`


def test_perplexity_report_with_evals_and_empty_events_file(tmp_path):
    events = [
        {"event": "eval", "step": s, "experience": int(s >= 100), "values": [900.0 / (s + 1) + 30, 400.0]}
        for s in range(0, 200, 20)
    ]
    run = make_run(tmp_path, perplexity_results(), events)
    write_report(run)
    assert_png(run / "plots" / "curves.png")

    empty = make_run(tmp_path, accuracy_results(), [], name="empty")
    page = write_report(empty).read_text(encoding="utf-8")
    assert not (empty / "plots" / "curves.png").exists()
    assert "No eval events" in page


def test_malicious_text_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    results = accuracy_results(
        method=evil, experience_names=[evil, "b&b", '"q"'], config={"note": evil}, lifelong_version=evil
    )
    page = write_report(make_run(tmp_path, results, eval_events())).read_text(encoding="utf-8")
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "b&amp;b" in page
    assert_self_contained(page)


def test_missing_results_raises_state_error_with_hint(tmp_path):
    run = make_run(tmp_path, None, eval_events())
    with pytest.raises(StateError) as info:
        write_report(run)
    message = str(info.value)
    assert str(run / "results.json") in message
    assert "not finished" in message
    assert f"lifelong resume {run}" in message
    assert not (run / "report.html").exists() and not (run / "plots").exists()

    with pytest.raises(StateError, match="does not exist"):
        write_report(tmp_path / "nowhere")


def test_damaged_results_raise_state_error(tmp_path):
    run = make_run(tmp_path, None)
    (run / "results.json").write_text('{"metric": "accuracy", "matr', encoding="utf-8")
    with pytest.raises(StateError, match="damaged"):
        write_report(run)
    (run / "results.json").write_text(json.dumps({"metric": "bleu", "matrix": [[1.0]]}), encoding="utf-8")
    with pytest.raises(StateError, match="metric"):
        write_report(run)
    (run / "results.json").write_text(json.dumps({"metric": "accuracy", "matrix": [[1.0], [1.0, 2.0]]}))
    with pytest.raises(StateError, match="matrix"):
        write_report(run)


def test_minimal_results_and_torn_events(tmp_path):
    """Only metric and matrix; a torn last events line, duplicated steps after a resume, NaN cells."""
    results = {"metric": "accuracy", "matrix": [[0.9, None], [float("nan"), 0.8]]}
    lines = [
        json.dumps({"event": "eval", "step": 0, "experience": 0, "values": [0.1, 0.1]}),
        json.dumps({"event": "resume", "step": 10}),
        json.dumps({"event": "eval", "step": 10, "experience": 1, "values": [0.5, 0.2]}),
        json.dumps({"event": "eval", "step": 10, "experience": 1, "values": [0.6, 0.3]}),
        '{"event": "eval", "step": 2',
    ]
    run = make_run(tmp_path, None)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    (run / "events.jsonl").write_text("\n".join(lines), encoding="utf-8")
    page = write_report(run).read_text(encoding="utf-8")
    assert_png(run / "plots" / "curves.png")
    assert ">90.0<" in page and ">nan<" in page and "n/a" in page
    assert "1 unreadable line" in page


def test_single_experience_run(tmp_path):
    """A Joint-style run: one experience, so BWT/FWT have nothing to average over."""
    results = {
        "metric": "accuracy",
        "matrix": [[0.912]],
        "initial": [0.1],
        "summary": {"acc": 0.912, "bwt": 0.0, "fwt": None, "forgetting": 0.0, "plasticity": 0.912},
        "stability_gap": None,
        "method": "joint",
    }
    run = make_run(tmp_path, results)
    page = write_report(run).read_text(encoding="utf-8")
    assert_png(run / "plots" / "matrix.png")
    assert ">91.2<" in page and "91.20%" in page and ">n/a<" in page


def test_curves_accept_bare_eval_records(tmp_path):
    """The learner's in-memory evals carry no "event" key; they are evals all the same."""
    bare = [{k: v for k, v in e.items() if k != "event"} for e in eval_events() if e["event"] == "eval"]
    assert plot_curves(accuracy_results(), bare, tmp_path / "c.png") == tmp_path / "c.png"
    assert_png(tmp_path / "c.png")


def test_report_is_deterministic(tmp_path):
    run = make_run(tmp_path, accuracy_results(), eval_events())
    first = write_report(run).read_bytes()
    second = write_report(run).read_bytes()
    assert first == second


# ---------------------------------------------------------------------------------------------- plots


def test_plot_functions_write_pngs(tmp_path):
    assert plot_matrix(accuracy_results(), tmp_path / "a" / "m.png") == tmp_path / "a" / "m.png"
    assert_png(tmp_path / "a" / "m.png")
    plot_matrix(perplexity_results(initial=[50000.0, 49000.0]), tmp_path / "p.png")
    assert_png(tmp_path / "p.png")

    assert plot_curves(accuracy_results(), eval_events(), tmp_path / "c.png") == tmp_path / "c.png"
    assert_png(tmp_path / "c.png")
    assert (
        plot_curves(accuracy_results(), [{"event": "checkpoint", "step": 3}], tmp_path / "none.png") is None
    )
    assert not (tmp_path / "none.png").exists()

    # no experience_start_steps: boundaries come from the events
    results = accuracy_results()
    del results["experience_start_steps"], results["experience_names"]
    assert plot_curves(results, eval_events(), tmp_path / "c2.png") is not None

    runs = {
        "Naive": accuracy_results("naive"),
        "Replay": accuracy_results(),
        "Joint": accuracy_results("joint"),
    }
    runs["Joint"]["summary"] = {"acc": 0.95, "bwt": None, "fwt": None, "forgetting": 0.0, "plasticity": 0.95}
    assert plot_comparison(runs, tmp_path / "cmp.png") == tmp_path / "cmp.png"
    assert_png(tmp_path / "cmp.png")
    assert no_temp_files(tmp_path)


def test_comparison_rejects_mixed_metrics_and_nothing(tmp_path):
    with pytest.raises(DataError, match="different metrics"):
        plot_comparison({"a": accuracy_results(), "b": perplexity_results()}, tmp_path / "x.png")
    with pytest.raises(DataError):
        plot_comparison({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_large_stream_plots_fast(tmp_path):
    n = 20
    results = {
        "metric": "accuracy",
        "matrix": [[(i + j) % 10 / 10 for j in range(n)] for i in range(n)],
        "experience_start_steps": [100 * i for i in range(n)],
    }
    events = [
        {
            "event": "eval",
            "step": s,
            "experience": s // 100,
            "values": [((s + j) % 97) / 97 for j in range(n)],
        }
        for s in range(0, 100 * n, 10)
    ]
    plot_matrix(results, tmp_path / "warm.png")  # first call pays matplotlib's import
    for draw in (
        lambda: plot_matrix(results, tmp_path / "m.png"),
        lambda: plot_curves(results, events, tmp_path / "c.png"),
    ):
        start = time.perf_counter()
        draw()
        assert time.perf_counter() - start < 5.0  # budget 0.5 s; headroom for slow, shared CI machines


# ------------------------------------------------------------------------------------ comparison page


def test_comparison_report(tmp_path):
    naive = make_run(tmp_path, accuracy_results("naive"), eval_events(), name="naive")
    replay = make_run(tmp_path, accuracy_results("replay"), name="replay")
    evil = "<script>alert(1)</script>"
    out = write_comparison_report({"Naive": naive, "Replay": replay, evil: replay}, tmp_path / "cmp")

    assert out == tmp_path / "cmp" / "report.html"
    assert_png(tmp_path / "cmp" / "comparison.png")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert evil not in page and "&lt;script&gt;" in page
    assert "Naive" in page and "Replay" in page and "87.67%" in page and "-12.73 pp" in page
    # comparison plot + 3 matrices + 1 curves (only naive has eval events)
    assert page.count('src="data:image/png;base64,') == 5


def test_comparison_report_missing_run(tmp_path):
    done = make_run(tmp_path, accuracy_results(), name="done")
    unfinished = make_run(tmp_path, None, name="unfinished")
    with pytest.raises(StateError, match="lifelong resume"):
        write_comparison_report({"done": done, "unfinished": unfinished}, tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
