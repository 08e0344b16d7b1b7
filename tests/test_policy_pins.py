"""Every batch agent decides as pinned: the same seed gives the same policy as the pinned engine.

The cases, the fingerprint and the pinned engine are described in ``tests/policy_pins.py``; the
pins are ``tests/data/policy_pins.json``. MATH cases skip when the released table is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from policy_pins import CASES, PINS, UNPINNED, ZOO_AGENTS, Case, compute, fingerprint, load_math

PINNED = json.loads(PINS.read_text())


def test_the_pins_cover_every_case_and_every_batch_agent():
    from iapo_gym.agents import AGENTS

    assert sorted(PINNED) == sorted(c.key for c in CASES)
    assert all(sorted(PINNED[c.key], key=int) == [str(s) for s in c.seeds] for c in CASES)
    assert set(ZOO_AGENTS) == set(AGENTS) - UNPINNED, "a batch agent of the zoo is not pinned"


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_policies_match_the_pinned_engine(case: Case):
    if case.task == "MATH" and load_math() is None:
        pytest.skip("the released MATH table is absent (../shared/data/published/MATH_final.pkl)")
    assert compute(case) == PINNED[case.key]


@pytest.mark.parametrize("agent", ["uniform", "triple_n1", "ucb"])
def test_pins_hold_under_the_smallest_memory_budget(agent):
    """1 MiB of working memory cuts the sampling into many calls; no decision may change."""
    case = max((c for c in CASES if (c.task, c.agent, c.kwargs) == ("SynthCategorical", agent, {})), key=lambda c: c.budget)
    assert compute(case, memory_budget=1 << 20) == PINNED[case.key]


def test_the_pins_tell_seeds_apart():
    """A fingerprint that ignored the run would pass trivially: seeds of one case must differ."""
    for key, prints in PINNED.items():
        distinct = len(set(prints.values()))
        if "/random(" in key:  # uniform over all arms whatever the run
            assert distinct == 1, key
        elif "/triple" in key:  # TRIPLE's info holds no means: seeds may deploy the same prompts
            continue
        elif key.startswith("SmolArith/"):  # a small table: some runs agree
            assert distinct >= 2, key
        else:
            assert distinct == len(prints), key


def test_fingerprint_sees_one_arm_and_one_completion():
    """The fingerprint changes with a single context's arm and with one completion of budget (so the pin can fail)."""
    from iapo_gym.agents.base import TablePolicy
    from iapo_gym.tasks import load_task_table

    contexts = load_task_table("SmolArith").contexts
    w = contexts.weights
    a = TablePolicy(contexts, np.zeros(len(contexts), np.int64), n_max=4, budget_used=10)
    arms = np.zeros(len(contexts), np.int64)
    arms[-1] = 1
    b = TablePolicy(contexts, arms, n_max=4, budget_used=10)
    c = TablePolicy(contexts, np.zeros(len(contexts), np.int64), n_max=4, budget_used=11)
    assert len({fingerprint(p, w, 8) for p in (a, b, c)}) == 3
