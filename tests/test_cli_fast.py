"""The command line starts fast: `import lifelong`, `import lifelong.cli` and the commands that only explain
(--help, -h, --version, init) import no torch, numpy or matplotlib. Checked through `sys.modules` in a
fresh interpreter, not by timing (bench/startup.py times them: docs/BENCHMARKS.md, "CLI start-up")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lifelong

HEAVY = ("torch", "safetensors", "numpy", "pandas", "pydantic", "matplotlib")
# typer (0.29) converts a command's arguments with pydantic, so every command but the top-level --help and
# --version imports pydantic (~0.1 s): the commands are held to the rest.
WITHOUT_PYDANTIC = [m for m in HEAVY if m != "pydantic"]


def heavy_imports(code: str, cwd: Path | None = None) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `code`."""
    probe = (
        f"{code}\nimport sys\n"
        f"print('HEAVY=' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import json\n" + probe], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    marker = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert marker, proc.stderr[-2000:]
    return json.loads(marker[-1].removeprefix("HEAVY="))


def cli_imports(*args: str, cwd: Path | None = None) -> list[str]:
    code = (
        "from lifelong.cli import app\n"
        "try:\n"
        f"    app({list(args)!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
    )
    return heavy_imports(code, cwd)


def test_import_lifelong_is_cheap():
    assert heavy_imports("import lifelong, lifelong.errors, lifelong.version") == []


def test_import_cli_is_cheap():
    assert heavy_imports("import lifelong.cli") == []


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"]], ids=" ".join)
def test_help_and_version_import_nothing_heavy(args):
    assert cli_imports(*args) == []


@pytest.mark.parametrize("args", [["run", "--help"], ["report", "-h"], ["init"]], ids=" ".join)
def test_commands_that_explain_import_no_torch(args):
    assert set(cli_imports(*args)).isdisjoint(WITHOUT_PYDANTIC)


def test_init_writes_a_config_without_torch(tmp_path):
    assert set(cli_imports("init", "first", cwd=tmp_path)).isdisjoint(WITHOUT_PYDANTIC)
    assert (tmp_path / "first.yaml").exists()


def test_the_probe_sees_heavy_imports():
    """The check above can fail: a command that needs torch is seen importing it."""
    assert "torch" in cli_imports("methods")


def test_public_names_resolve_lazily():
    from lifelong import Learner, TrainConfig, datasets, load, seed  # noqa: F401  (the `from` form works)
    from lifelong.inference import load as inference_load
    from lifelong.learner import Learner as learner_class
    from lifelong.seeding import seed as seeding_seed

    assert Learner is learner_class and load is inference_load and seed is seeding_seed
    assert lifelong.datasets is datasets and lifelong.streams.__name__ == "lifelong.streams"
    for name in lifelong.__all__:
        assert getattr(lifelong, name) is not None, name
    assert set(lifelong.__all__) <= set(dir(lifelong))
    with pytest.raises(AttributeError, match="no attribute 'Lerner'"):
        lifelong.Lerner  # noqa: B018


def test_datasets_imports_no_torch():
    assert "torch" not in cli_imports("datasets")


def test_report_imports_no_torch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    results = {
        "metric": "accuracy",
        "matrix": [[0.9, 0.1], [0.5, 0.8]],
        "summary": {"acc": 0.65, "bwt": -0.4, "fwt": None, "forgetting": 0.4, "plasticity": 0.85},
        "wall_seconds": 1.0,
    }
    (run / "results.json").write_text(json.dumps(results))
    assert "torch" not in cli_imports("report", str(run))


@pytest.mark.slow
def test_startup_bench_smoke():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "bench/startup.py", "--repeats", "1", "--no-write"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| `")}
    assert set(rows) >= {f"`lifelong {c}`" for c in ("--help", "-h", "--version", "datasets", "report RUN")}
    assert "| no |" in rows["`lifelong --help`"]  # the probe of imports agrees with the tests above
