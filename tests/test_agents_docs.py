"""docs/AGENTS.md stays true to the zoo: every registered agent is in the module table, with its module."""

from __future__ import annotations

import re
from pathlib import Path

from iapo_gym.agents import AGENTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "AGENTS.md"


def _table() -> dict[str, str]:
    """``name -> module path`` of the zoo table (``topk1/4/8`` expands to topk1, topk4, topk8)."""
    text = DOC.read_text()
    section = text[text.index("## The zoo"):]
    section = section[: section.index("\n## ", 4)]
    out: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`agents/"):
            continue
        module = cells[1].strip("`")
        for name in re.findall(r"`([^`]+)`", cells[0]):
            head, *alts = name.split("/")
            stem = re.sub(r"\d+$", "", head)
            for n in [head, *(stem + a for a in alts)]:
                out[n] = module
    return out


def test_the_module_table_lists_every_agent_of_the_zoo() -> None:
    table = _table()
    assert sorted(set(AGENTS) - set(table)) == [], "agents missing from docs/AGENTS.md's table"
    assert sorted(set(table) - set(AGENTS)) == [], "docs/AGENTS.md lists agents the zoo does not register"
    for name, factory in AGENTS.items():
        module = (factory.__doc__ or "").split("(")[0].rsplit(".", 1)[0]  # "iapo_gym.agents.topk.TopK(...)"
        assert table[name] == "agents/" + module.removeprefix("iapo_gym.agents.") + ".py", name


def test_the_batched_example_uses_public_api_only() -> None:
    code = re.findall(r"```python\n# my_batched_agent.py\n(.*?)```", DOC.read_text(), re.S)[0]
    imports = re.findall(r"^(?:from|import) (\S+)", code, re.M)
    assert imports and all(not any(part.startswith("_") for part in m.split(".")) for m in imports), imports
    assert "iapo_gym.agents.engine" in imports and "fit_runs" in code
