"""The one round loop (run_rounds) with a user's allocation, and the MV block credits on every path."""

from __future__ import annotations

import numpy as np
import pytest

from iapo_gym.agents._engine import ContextSplit, nested_gains
from iapo_gym.agents.engine import Rows, RunBatch, equal_rounds, run_rounds
from iapo_gym.contexts import cost_contexts
from iapo_gym.sampling import Pulls
from iapo_gym.utility import nested_sums
from tests.agents_helpers import make_env, small_table

CONTEXTS = cost_contexts({"low": 0.0, "mid": 0.2, "high": 1.0})


def mv_pulls(rows: int, width: int, categories: int, seed: int, unit: bool) -> Pulls:
    """Random MV pulls; ``unit``: one cost per pull given as ``unit_cost`` (costs built lazily)."""
    rng = np.random.default_rng(seed)
    n = rng.integers(0, width + 1, size=rows)
    n[0] = width
    mask = np.arange(width)[None, :] < n[:, None]
    outcome = np.where(mask, rng.integers(0, categories, size=(rows, width)), -1)
    gold = rng.integers(0, categories, size=rows)
    c = rng.uniform(0.001, 0.02, size=rows)
    cost = None if unit else np.where(mask, c[:, None], 0.0)
    return Pulls("mv", rng.integers(0, 3, rows), n, rng.integers(0, 9, rows), outcome, None, cost, gold, mask, categories,
                 unit_cost=c if unit else None)


@pytest.mark.parametrize(
    "categories,width",
    [(2, 40), (5, 32), (9, 12), (12, 20), (30, 9)],  # packed int32 / int64 words, and one count per answer
)
@pytest.mark.parametrize("unit", [True, False])
def test_mv_credit_matches_the_reference_on_every_path(categories, width, unit):
    pulls = mv_pulls(150, width, categories, seed=categories * width, unit=unit)
    split = ContextSplit(CONTEXTS)
    gain, count, cost = nested_gains(pulls, split.obj_weights, width)
    ours = gain[split.group] - split.cost_weight[:, None, None] * cost[None]
    ref, ref_count = nested_sums(pulls, CONTEXTS.weights, width)  # reads pulls.values / pulls.cost (built lazily)
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)  # credits are float32 1 / t


class OnePromptAtN1:
    """A user's allocation: every unit is one pull of (prompt 0, N = 1); trims are recorded."""

    def __init__(self, runs: RunBatch, unit_cost: int = 1) -> None:
        self.runs, self.pulled, self.trims = runs, np.zeros(runs.n_runs, np.int64), []
        self.unit_cost = unit_cost

    def plan(self, avail, last):
        units = avail // self.unit_cost
        run = np.repeat(np.arange(self.runs.n_runs), units[:, 0] * self.unit_cost)
        return units, Rows(run, np.zeros_like(run), np.ones_like(run))

    def record(self, pulls, rows, sel):
        self.pulled += np.bincount(rows.run[sel], minlength=self.runs.n_runs)

    def trim(self, groups):
        self.trims.append(groups[:, 0].copy())


def test_run_rounds_carries_unspent_budget_and_trims_only_after_a_whole_unit():
    table = small_table("mv")
    runs = RunBatch([make_env(table, s) for s in (0, 1)], 100, [0, 1], "rounds-test")
    alloc = OnePromptAtN1(runs, unit_cost=4)
    budgets = np.array([[10], [23]])
    plan = equal_rounds(budgets, 3)  # 3 and 7 per round
    np.testing.assert_array_equal(plan[:, :, 0], [[3, 3, 3], [7, 7, 7]])
    log = run_rounds(runs, alloc, budgets, plan)
    # run 0: round 1 affords no unit (3 < 4), carries 3; round 2 spends 4 of 6, carries 2; last round spends 4 of 6
    np.testing.assert_array_equal(log.spent[0, :, 0], [0, 4, 4])
    np.testing.assert_array_equal(log.units[0, :, 0], [0, 1, 1])
    # run 1: 7 -> 4 (carry 3), 10 -> 8 (carry 2), last: 23 - 12 = 11 -> 8
    np.testing.assert_array_equal(log.spent[1, :, 0], [4, 8, 8])
    np.testing.assert_array_equal(log.used[:, 0], [8, 20])
    np.testing.assert_array_equal(runs.spent, [8, 20])
    np.testing.assert_array_equal(alloc.pulled, [8, 20])
    # a group halves only after a round that afforded a whole unit
    np.testing.assert_array_equal(np.array(alloc.trims), [[False, True], [True, True], [True, True]])
    np.testing.assert_array_equal(log.halvings, [2, 3])
