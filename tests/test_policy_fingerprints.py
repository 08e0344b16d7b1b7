"""Every batch agent's decisions are pinned: the same seed gives the same policy as at commit 05a16dd.

The fingerprints (``tests/data/policy_fingerprints.json``) hash each policy's arm per context,
its ``budget_used`` and its ``info``; ``scripts/policy_fingerprints.py`` wrote them from the engine
before the round loop and the PSST kernel were rewritten, and recomputes them here. A failure names
every (agent, task, budget, seed) whose decisions changed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "data" / "policy_fingerprints.json"


def _script():
    spec = importlib.util.spec_from_file_location("policy_fingerprints", REPO / "scripts" / "policy_fingerprints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_agent_decides_as_pinned() -> None:
    pinned = json.loads(PINNED.read_text())
    script = _script()
    assert len(pinned) == len(script.AGENTS) * len(script.CASES) * len(script.SEEDS)
    now = script.fingerprints()
    assert now.keys() == pinned.keys()
    changed = sorted(k for k in pinned if now[k] != pinned[k])
    assert not changed, f"{len(changed)} policies changed: {changed[:20]}"


def test_fingerprint_sees_one_arm_change() -> None:
    """The fingerprint is sensitive to a single context's arm (so the pin can fail)."""
    import numpy as np

    from iapo_gym.agents.base import TablePolicy
    from iapo_gym.tasks import load_task_table

    script = _script()
    contexts = load_task_table("SmolArith").contexts
    a = TablePolicy(contexts, np.zeros(len(contexts), np.int64), n_max=4, budget_used=10)
    arms = np.zeros(len(contexts), np.int64)
    arms[-1] = 1
    b = TablePolicy(contexts, arms, n_max=4, budget_used=10)
    w = contexts.weights
    assert script.policy_fingerprint(a, w, 8) != script.policy_fingerprint(b, w, 8)
    c = TablePolicy(contexts, np.zeros(len(contexts), np.int64), n_max=4, budget_used=11)
    assert script.policy_fingerprint(a, w, 8) != script.policy_fingerprint(c, w, 8)
