"""UCB, epsilon-greedy, Softmax, Uniform and TRIPLE decide exactly as the engine they were pinned to.

Every case of ``tests/sequential_pins.py`` (real MATH when the data is present, the synthetic
MV and BoN tasks always) is refitted and each seed's policy fingerprint (arms or distribution,
budget used, info incl. deployed means) must equal the one the pinning script wrote from commit
05a16dd, before the incremental sequential loop and the chunked Uniform / TRIPLE sampling.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
from sequential_pins import CASES, PINS, case_key, compute, load_math

PINNED = json.loads(PINS.read_text())["pins"]


@cache
def math_table():
    table = load_math()
    if table is None:
        pytest.skip("the released MATH table is absent (../shared/data/published/MATH_final.pkl)")
    return table


PARAMS = [
    pytest.param(task, agent, kwargs, budget, id=case_key(task, agent, kwargs, budget))
    for task, agent, kwargs, budgets in CASES
    for budget in budgets
]


@pytest.mark.parametrize(("task", "agent", "kwargs", "budget"), PARAMS)
def test_policies_match_the_pinned_engine(task, agent, kwargs, budget):
    table = math_table() if task == "MATH" else None
    assert compute(task, agent, kwargs, budget, table) == PINNED[case_key(task, agent, kwargs, budget)]


@pytest.mark.parametrize("agent", ["uniform", "triple_n1", "ucb"])
def test_pins_hold_under_the_smallest_memory_budget(agent):
    """1 MiB of working memory cuts the sampling into many calls; no decision may change."""
    kwargs: dict = {}
    budget = next(b for t, a, k, bs in CASES if (t, a, k) == ("SynthCategorical", agent, kwargs) for b in bs[-1:])
    got = compute("SynthCategorical", agent, kwargs, budget, memory_budget=1 << 20)
    assert got == PINNED[case_key("SynthCategorical", agent, kwargs, budget)]


def test_the_pins_tell_seeds_apart():
    """A fingerprint that ignored the run would pass trivially: seeds of one case must differ."""
    for key, prints in PINNED.items():
        if "triple" not in key:  # TRIPLE's info holds no means: two seeds may deploy the same prompts
            assert len(set(prints)) == len(prints), key
