"""The store guide (docs/store.md) says true things: its five-minute example runs through the command line
(at a smaller size) and every message its troubleshooting table quotes is written by the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_store import cli

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "store.md"


def month1() -> str:
    block = GUIDE.read_text().split("# month1.yaml\n", 1)[1].split("```", 1)[0]
    assert "until: 1" in block and "name: compatible" in block
    small = "train_per_class: 30, test_per_class: 10"
    return block.replace("train_per_class: 500, test_per_class: 100", small)


@pytest.mark.slow
def test_five_minute_example(tmp_path: Path) -> None:
    (tmp_path / "month1.yaml").write_text(month1())
    (tmp_path / "month2.yaml").write_text(month1().replace("until: 1", "until: 2"))
    store = tmp_path / "models" / "fmnist"
    cli("store", "init", store)
    cli("update", store, "--config", tmp_path / "month1.yaml")
    second = cli("update", store, "--config", tmp_path / "month2.yaml", "--json", expect=None)
    assert second.returncode in (0, 3)  # promoted, or refused by the gate: both are recorded
    assert json.loads(second.stdout)["version"] == 2
    assert "v1" in cli("store", "list", store).stdout
    shown = json.loads(cli("store", "show", store, "2", "--json").stdout)
    assert shown["gate"]["flips"]["samples"] > 0 and shown["parent"] == 1
    assert json.loads(cli("store", "diff", store, "1", "2", "--json").stdout)["config"]


def test_troubleshooting_quotes_are_real_messages() -> None:
    text = GUIDE.read_text().split("## Troubleshooting", 1)[1]
    quotes = re.findall(r"^\| `(.*?)` \|", text, flags=re.M)
    assert len(quotes) >= 8
    source = "".join(p.read_text() for p in (ROOT / "src" / "lifelong").rglob("*.py"))
    source = re.sub(r'"\s*\n\s*f?"', "", source)  # implicit string concatenation across lines
    for quote in quotes:
        for piece in re.split(r"\.\.\.|\bN\b|\bF\b|\bDIR\b", quote):
            piece = piece.strip()
            if len(piece) > 6:
                assert piece in source, f"{piece!r} (from the guide) is in no message of the code"
