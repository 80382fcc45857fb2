"""The guide docs/selftrain.md: its Python example runs, and its config snippets are valid configs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lifelong.config import parse_config

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "selftrain.md"


def test_python_example_runs() -> None:
    code = GUIDE.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, str(GUIDE), "exec"), scope)
    rounds = scope["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and all(0 <= r["accuracy"] <= 1 for r in rounds)


def test_config_snippets_parse() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.S)
    scenario = yaml.safe_load(blocks[0])["scenario"]
    method = yaml.safe_load(blocks[1])["method"]
    cfg = parse_config(
        {"data": {"name": "fashion_mnist"}, "scenario": scenario, "model": {"name": "mlp"}, "method": method}
    )
    assert cfg.scenario.label_fraction == 0.1 and [m.name for m in cfg.methods] == ["replay", "pseudo_label"]
