"""The report of a language-modelling run: the perplexity heatmap on a log colour scale, tokens, throughput,
peak memory and forgetting in log perplexity, and the loss and learning-rate curves drawn as inline SVG.
Every run here is a hand-written results.json and events.jsonl in tmp_path; nothing is trained."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from lifelong.evaluation import metrics
from lifelong.evaluation.report import _hex, _lm_boundaries, _lm_curves, _lut, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DOMAINS = ["wiki", "code", "law"]
STEPS = [30, 20, 40]  # optimizer steps per experience
TOKENS_PER_STEP = 1000
# R[i][j]: perplexity on domain j after training on experience i
MATRIX = [
    [10.0, 500.0, 1000.0],
    [20.0, 12.0, 800.0],
    [40.0, 15.0, 11.0],
]
# forgetting in log perplexity: wiki log(40 / 10) = +1.386 (x4.000), code log(15 / 12) = +0.223 (x1.250)
# mean (log 4 + log 1.25) / 2 = log(5) / 2 = +0.805 (x2.236); final mean perplexity (40 + 15 + 11) / 3 = 22.0


def lm_results(**extra) -> dict:
    results = {
        "metric": "perplexity",
        "matrix": MATRIX,
        "initial": [5000.0, 5000.0, 5000.0],
        "summary": metrics.summary(MATRIX, [5000.0] * 3, higher_is_better=False),
        "stability_gap": None,
        "experience_names": DOMAINS,
        "experience_start_steps": [0, 30, 50],
        "method": "naive",
        "config": {"train": {"scheduler": "cosine", "lr": 0.001}},
        "seed": 0,
        "wall_seconds": 12.0,
        "tokens_seen": [s * TOKENS_PER_STEP for s in STEPS],
        "tokens_per_second": [1000.0, 2000.0, 4000.0],
        "peak_memory_bytes": 3 * 1024**3,
        "experience_steps": STEPS,
        "schedule": "cosine",
    }
    results.update(extra)
    return results


def lm_events(tokens: bool = True, evals: bool = True, train: bool = True) -> list[dict]:
    """What the learner writes: a train event every 5 steps, an eval every 10, an experience_end each."""
    events: list[dict] = [{"event": "start", "step": 0}]
    step = 0
    for i, n in enumerate(STEPS):
        for local in range(n):
            step += 1
            extra = {"tokens": step * TOKENS_PER_STEP} if tokens else {}
            lr = 0.001 * 0.5 * (1 + math.cos(math.pi * local / n))
            if train and step % 5 == 0:
                loss = math.log(MATRIX[i][i]) + 1.0 - local / n
                event = {"event": "train", "step": step, "experience": i, "loss": loss, "lr": lr}
                events.append({**event, **extra})
            if evals and step % 10 == 0:
                values = [MATRIX[i][j] * (1.2 if j == i else 1.0) for j in range(3)]
                events.append({"event": "eval", "step": step, "experience": i, "values": values, **extra})
        extra = {"tokens": step * TOKENS_PER_STEP} if tokens else {}
        events.append({"event": "experience_end", "step": step, "experience": i, "row": MATRIX[i], **extra})
        events.append({"event": "checkpoint", "step": step, "name": f"exp-{i + 1:04d}"})
    events.append({"event": "end", "step": step, "summary": {}})
    return events


def make_run(tmp_path: Path, results: dict, events: list[dict] | None = None, name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if events is not None:
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return run


def lm_page(tmp_path: Path) -> str:
    """The page of the full language-modelling run, written without plots."""
    return write_report(make_run(tmp_path, lm_results(), lm_events()), plots=False).read_text(
        encoding="utf-8"
    )


def svgs(page: str) -> list[ET.Element]:
    """Every inline SVG of the page, parsed: each must be well-formed XML."""
    return [ET.fromstring(s) for s in re.findall(r"<svg .*?</svg>", page, re.DOTALL)]


def chart(page: str, title_start: str) -> ET.Element:
    (found,) = [s for s in svgs(page) if s.get("aria-label", "").startswith(title_start)]
    return found


def legend(svg: ET.Element) -> list[str]:
    """The labels of a chart's legend (the texts right of the plot area)."""
    return [t.text or "" for t in svg.iter("text") if float(t.get("x", 0)) > 600]


def lines(svg: ET.Element) -> dict[str, list[tuple[float, float]]]:
    """Each polyline's points by stroke colour (series are drawn in legend order, one colour each)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in svg.iter("polyline"):
        pts = [tuple(map(float, xy.split(","))) for xy in p.get("points", "").split()]
        out.setdefault(p.get("stroke", ""), []).extend(pts)
    return out


def visible(page: str) -> str:
    page = page[page.index("<body>") :].split("<h2>Config</h2>")[0]
    return re.sub(r"<[^>]+>", " ", page)


# --------------------------------------------------------------------------------------------- the page


def test_lm_page_has_its_sections_and_numbers(tmp_path):
    run = make_run(tmp_path, lm_results(), lm_events())
    page = write_report(run, plots=False).read_text(encoding="utf-8")

    for heading in (
        "<h2>Tokens, throughput and forgetting</h2>",
        "<h2>During training</h2>",
        "<h3>Loss on each domain</h3>",
        "<h3>Learning rate</h3>",
    ):
        assert heading in page
    assert len(svgs(page)) == 3  # colour key, loss, learning rate
    assert "<img" not in page and not (run / "plots").exists()  # no PNG, no matplotlib

    # summary: the log-perplexity figures next to the existing ones
    assert re.search(r"<td>Forgetting \(log perplexity\)</td><td [^>]*>\+0\.805</td>", page)
    assert re.search(r"<td>Final mean log perplexity</td><td [^>]*>2\.932</td>", page)
    assert "<tr><td>Mean perplexity</td>" in page and ">22.00<" in page

    # peak memory in binary units, schedule, and the per-experience table
    assert "<td>peak memory</td><td>3 GiB (3,221,225,472 bytes)</td>" in page
    assert "<td>LR schedule</td><td>cosine</td>" in page
    rows = {
        m.group(1): re.findall(r">([^<>]*)</td>", m.group(2))
        for m in re.finditer(r"<tr><(?:td|th)>([^<]+)</(?:td|th)>(.*?)</tr>", page)
    }
    # tokens, steps, tokens/s, when learnt, best, final, forgetting, final / best
    assert rows["1: wiki"] == ["30k", "30", "1,000", "10.0", "10.0", "40.0", "+1.386", "×4.000"]
    assert rows["2: code"] == ["20k", "20", "2,000", "12.0", "12.0", "15.0", "+0.223", "×1.250"]
    assert rows["3: law"] == ["40k", "40", "4,000", "11.0", "–", "11.0", "–", "–"]
    # 90k tokens in 30 + 10 + 10 = 50 s: 1,800 tokens/s over the run
    assert rows["all"] == ["90k", "90", "1,800", "", "", "22.0", "+0.805", "×2.236"]


def test_lm_page_says_nothing_of_accuracy_and_is_self_contained(tmp_path):
    page = lm_page(tmp_path)
    text = visible(page)
    assert "accuracy" not in text.lower() and "%" not in text and " pp" not in text
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)


def test_perplexity_heatmap_is_coloured_on_a_log_scale(tmp_path):
    # 10, 100, 1000: on a log scale 100 sits halfway (linear would put it at 0.09, near the bright end)
    matrix = [[10.0, 1000.0], [100.0, 10.0]]
    results = lm_results(matrix=matrix, initial=None, experience_names=["a", "b"])
    page = write_report(make_run(tmp_path, results), plots=False).read_text(encoding="utf-8")
    halfway = _hex(_lut("viridis_r", 0.5))
    assert re.search(rf'title="100.0" style="background:{halfway};', page)
    assert re.search(rf'title="10.0" style="background:{_hex(_lut("viridis_r", 0.0))};', page)  # brightest
    assert re.search(rf'title="1000.0" style="background:{_hex(_lut("viridis_r", 1.0))};', page)
    # the colour key says so, with its ends and round values between
    key = chart(page, "perplexity colour key")
    texts = [t.text for t in key.iter("text")]
    assert "perplexity, log colour scale" in texts and "brighter is lower (better)" in texts
    assert {"10", "100", "1k"} <= set(texts)
    # and the numbers are still shown in the cells
    for number in ("10.0", "1000.0", "100.0"):
        assert f">{number}<" in page


def test_loss_curves_per_domain_over_tokens(tmp_path):
    page = lm_page(tmp_path)
    loss = chart(page, "Loss on each domain")
    assert legend(loss) == ["1: wiki", "2: code", "3: law", "training loss (batches)"]
    texts = [t.text for t in loss.iter("text")]
    assert "tokens trained on" in texts and "loss = log perplexity (nats)" in texts
    assert ["e1", "e2", "e3"] == [t for t in texts if t and re.fullmatch(r"e\d+", t)]
    assert len([e for e in loss.iter("line") if e.get("class") == "boundary"]) == 3
    by_color = lines(loss)
    assert len(by_color) == 4  # three domains and the training loss, each its own colour

    axis, domains, train, has_evals = _lm_curves(lm_results(), lm_events())
    assert axis == "tokens" and has_evals
    # wiki: untrained at 0, evals at 10k, 20k, 30k, its end at 30k (same x: the later event wins), ...
    xs = [x for x, _ in domains[0]]
    assert xs == sorted(set(xs)) and xs[0] == 0.0 and xs[-1] == 90_000.0
    assert domains[0][0][1] == math.log(5000.0)
    assert dict(domains[0])[30_000.0] == math.log(10.0)  # the experience_end row, not the eval before it
    assert dict(domains[0])[90_000.0] == math.log(40.0)
    assert len(train) == 90 // 5 and train[0][0] == 5_000.0
    # experience k starts where k-1 ended
    assert _lm_boundaries(lm_results(), lm_events(), "tokens") == [0.0, 30_000.0, 50_000.0]


def test_learning_rate_over_steps_titled_with_the_schedule(tmp_path):
    page = lm_page(tmp_path)
    lr = chart(page, "Learning rate over steps: cosine")
    texts = [t.text for t in lr.iter("text")]
    assert "global training step" in texts and "learning rate" in texts
    assert len([e for e in lr.iter("line") if e.get("class") == "boundary"]) == 3
    (points,) = lines(lr).values()
    assert len(points) == 90 // 5
    # the cosine restarts at each experience: the LR jumps up right after each boundary
    ys = [y for _, y in points]  # SVG y grows downwards
    jumps = [k for k in range(1, len(ys)) if ys[k] < ys[k - 1] - 50]
    assert len(jumps) == 2


def test_schedule_from_the_config_when_results_have_none(tmp_path):
    results = lm_results()
    del results["schedule"]
    page = write_report(make_run(tmp_path, results, lm_events()), plots=False).read_text(encoding="utf-8")
    assert chart(page, "Learning rate over steps: cosine") is not None
    results["config"] = {}
    page = write_report(make_run(tmp_path, results, lm_events(), "bare"), plots=False).read_text("utf-8")
    assert chart(page, "Learning rate over steps: schedule not recorded") is not None
    assert "<td>LR schedule</td><td>not recorded</td>" in page


# ------------------------------------------------------------------------------------- older, odd runs


def test_run_without_token_counts_falls_back_to_steps(tmp_path):
    """A run written before the learner recorded tokens: no token columns, curves over steps."""
    results = lm_results()
    for key in ("tokens_seen", "tokens_per_second", "peak_memory_bytes", "experience_steps", "schedule"):
        del results[key]
    page = write_report(make_run(tmp_path, results, lm_events(tokens=False)), plots=False).read_text("utf-8")
    assert "<th>tokens trained</th>" not in page and "tokens/s" not in page and "optimizer steps" not in page
    assert "<td>peak memory</td><td>not recorded</td>" in page
    assert "no token counts" in page
    loss = chart(page, "Loss on each domain")
    assert "global training step" in [t.text for t in loss.iter("text")]
    assert "so the x axis is the optimizer step" in page
    # forgetting still comes from the matrix
    assert ">+1.386<" in page and ">×4.000<" in page
    # one event without tokens is enough to draw every curve over steps
    events = lm_events()
    del events[3]["tokens"]
    axis, *_ = _lm_curves(lm_results(), events)
    assert axis == "step"


def test_run_without_events(tmp_path):
    page = write_report(make_run(tmp_path, lm_results()), plots=False).read_text(encoding="utf-8")
    assert "No eval events in events.jsonl" in page and "so there is no curve" in page
    assert "No train events with a learning rate" in page
    assert "<h3>Loss on each domain</h3>" not in page  # the untrained model alone is not a curve
    assert len(svgs(page)) == 1  # the colour key
    assert "<h2>Tokens, throughput and forgetting</h2>" in page


def test_run_without_periodic_evaluation_has_a_point_per_experience_end(tmp_path):
    run = make_run(tmp_path, lm_results(), lm_events(evals=False))
    page = write_report(run, plots=False).read_text(encoding="utf-8")
    assert "No eval events in events.jsonl" in page and "a point per experience end only" in page
    _, domains, _, has_evals = _lm_curves(lm_results(), lm_events(evals=False))
    assert not has_evals
    assert [x for x, _ in domains[2]] == [0.0, 30_000.0, 50_000.0, 90_000.0]
    assert len(list(chart(page, "Loss on each domain").iter("circle"))) == 3 * 4  # markers: few points


def test_continued_run_with_missing_cells(tmp_path):
    """Experience 3 was added by a continuation: earlier rows have no value for it, earlier evals only two."""
    matrix = [[10.0, 500.0, None], [20.0, 12.0, None], [40.0, 15.0, 11.0]]
    results = lm_results(matrix=matrix, initial=[5000.0, 5000.0, None])
    events = [e for e in lm_events() if e["event"] != "eval"]
    for e in events:
        if e["event"] == "experience_end" and e["experience"] < 2:
            e["row"] = e["row"][:2]
    page = write_report(make_run(tmp_path, results, events), plots=False).read_text(encoding="utf-8")
    assert page.count('class="num missing"') >= 3  # the dashes of the matrix
    assert ">+1.386<" in page and ">+0.223<" in page
    _, domains, _, _ = _lm_curves(results, events)
    # law: the untrained model and the rows before the continuation have no value for it (NaN breaks
    # the line), only the final row has one
    assert [x for x, y in domains[2] if math.isfinite(y)] == [90_000.0]
    svg = chart(page, "Loss on each domain")
    assert len(list(svg.iter("circle"))) >= 1  # a lone point is still drawn


def test_malformed_extras_are_ignored(tmp_path):
    results = lm_results(tokens_seen="many", tokens_per_second=[None, "fast"], peak_memory_bytes="big")
    events = lm_events()
    events.insert(3, {"event": "train", "step": 4, "lr": "high", "loss": None, "tokens": 4000})
    page = write_report(make_run(tmp_path, results, events), plots=False).read_text(encoding="utf-8")
    assert "<th>tokens trained</th>" not in page  # not a list: left out
    assert "<td>peak memory</td><td>not recorded</td>" in page
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td>(\d: \w+)</td>(.*?)</tr>", page)}
    assert rows["1: wiki"].count(">n/a<") == 1  # its tokens/s; law's is missing from the list
    (points,) = lines(chart(page, "Learning rate")).values()
    assert len(points) == 90 // 5


def test_names_are_escaped_in_the_svg(tmp_path):
    evil = "<script>alert(1)</script>"
    results = lm_results(experience_names=[evil, "a&b", "c" * 40], schedule='"wsd"<')
    page = write_report(make_run(tmp_path, results, lm_events()), plots=False).read_text(encoding="utf-8")
    assert evil not in page and "&lt;script&gt;" in page
    loss = chart(page, "Loss on each domain")  # parses: nothing broke the XML
    assert legend(loss)[:3] == ["1: " + evil, "2: a&b", "3: " + "c" * 24 + "…"]  # long names shortened
    assert chart(page, 'Learning rate over steps: "wsd"<') is not None


def test_long_runs_are_thinned(tmp_path):
    events = [
        {"event": "train", "step": s, "experience": s // 2500, "loss": 3.0, "lr": 0.001, "tokens": 100 * s}
        for s in range(1, 5001)
    ]
    page = write_report(make_run(tmp_path, lm_results(), events), plots=False).read_text(encoding="utf-8")
    (points,) = lines(chart(page, "Learning rate")).values()
    assert 1000 < len(points) <= 1501
    assert len(page) < 400_000


def test_report_is_deterministic(tmp_path):
    run = make_run(tmp_path, lm_results(), lm_events())
    assert write_report(run, plots=False).read_bytes() == write_report(run, plots=False).read_bytes()


# ------------------------------------------------------------------------------------------ PNG, imports


def test_plots_adds_the_same_figures_as_pngs(tmp_path):
    run = make_run(tmp_path, lm_results(), lm_events())
    page = write_report(run, plots=True).read_text(encoding="utf-8")
    for name in ("matrix", "curves", "loss", "lr"):
        assert (run / "plots" / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE), name
    assert "<img" not in page and len(svgs(page)) == 3  # the page draws its own SVG either way
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))


def test_lm_page_needs_no_matplotlib_or_numpy(tmp_path):
    run = make_run(tmp_path, lm_results(), lm_events())
    code = (
        "import sys; from lifelong.evaluation.report import write_report; "
        f"write_report({str(run)!r}, plots=False); print('matplotlib' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
    assert "<h3>Loss on each domain</h3>" in (run / "report.html").read_text(encoding="utf-8")


def test_classification_pages_have_no_lm_sections(tmp_path):
    results = {
        "metric": "accuracy",
        "matrix": [[0.9, 0.1], [0.5, 0.8]],
        "summary": metrics.summary([[0.9, 0.1], [0.5, 0.8]]),
        "tokens_seen": [10, 20],  # ignored: only language models get these sections
    }
    events = [{"event": "train", "step": 1, "loss": 1.0, "lr": 0.1}]
    page = write_report(make_run(tmp_path, results, events), plots=False).read_text(encoding="utf-8")
    assert "<svg" not in page and "Tokens, throughput" not in page and "log perplexity" not in page
    assert "No eval events" in page
