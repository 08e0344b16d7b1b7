"""Property test of the budget rule over public-API-shaped input (hypothesis).

Random sequences of ``pull``, ``step``, ``reset``, vector steps and ledger charges, with good and
hostile arguments (bad widths, shapes, dtypes, types, seeds, options), single-threaded and from
threads. Three invariants, checked after every call:

* **spent <= budget**;
* **a refused call spends nothing**: a call that raises leaves the ledger (and, single-threaded,
  the env's RNG) exactly as it was;
* **completions returned == spent**: the completions in the results handed back (``Pulls``,
  ``info["n"]``) add up to the ledger's spend.

Every refusal must be one of the documented errors (``ValueError``, ``TypeError``,
``BudgetExceededError``, ``ResetNeeded``); anything else (a raw ``IndexError``,
``AttributeError``, ``OverflowError``...) fails the test. ``IAPO_PROPERTY_EXAMPLES`` raises the
number of sequences (the suite runs a few hundred).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from thread_helpers import run_threads, yield_on_every_line

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import iapo_gym.env  # noqa: E402
import iapo_gym.ledger  # noqa: E402
from iapo_gym.env import IAPOEnv  # noqa: E402
from iapo_gym.ledger import BudgetExceededError, BudgetLedger  # noqa: E402
from iapo_gym.tasks import load_task_table  # noqa: E402
from iapo_gym.vector import IAPOVectorEnv  # noqa: E402

EXAMPLES = int(os.environ.get("IAPO_PROPERTY_EXAMPLES", "150"))
REFUSALS = (ValueError, TypeError, BudgetExceededError, gym.error.ResetNeeded)
COUNTS: Counter[str] = Counter()
TABLE = load_task_table("SynthBernoulli", world_seed=3)  # 32 prompts, N_max 32

# ---------------------------------------------------------------------- public-API-shaped values
scalar = st.one_of(
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, 1.0, 2.5, 3.0, -1.0]),
    st.booleans(),
    st.sampled_from(["5", "", "x", None, b"1", 1j]),
    st.sampled_from([np.int64(3), np.uint8(2), np.float32(4.0), np.bool_(True), np.int32(-1)]),
)
small = st.integers(-2, 40)
vector = st.one_of(
    st.lists(small, min_size=0, max_size=5),
    st.lists(scalar, min_size=1, max_size=3),
    st.lists(st.lists(small, min_size=1, max_size=2), min_size=1, max_size=2),  # 2-D
    st.builds(
        lambda xs, dt: np.asarray(xs, dtype=np.int64).astype(dt),
        st.lists(small, max_size=4),
        st.sampled_from(["i8", "f8", "u2", "?"]),
    ),
    scalar,
)
pull_args = st.fixed_dictionaries(
    {"prompt": vector, "n": vector, "query": st.one_of(st.none(), vector), "width": st.one_of(st.none(), scalar)}
)
op = st.one_of(
    st.tuples(st.just("pull"), pull_args),
    st.tuples(
        st.just("pull_ok"), st.lists(st.tuples(st.integers(0, 31), st.integers(1, 32)), min_size=1, max_size=4)
    ),
    st.tuples(st.just("step"), st.one_of(scalar, st.integers(0, 32 * 32 - 1))),
    st.tuples(st.just("reset"), st.fixed_dictionaries({
        "seed": st.one_of(st.none(), st.integers(0, 5), scalar),
        "options": st.one_of(st.none(), st.fixed_dictionaries({"context": scalar}),
                             st.fixed_dictionaries(
                                 {"weights": st.one_of(vector, st.lists(st.floats(), min_size=2, max_size=2))}
                             ),
                             st.just("bad")),
    })),
)
budgets = st.one_of(st.none(), st.integers(0, 300))


def _returned(result: Any, name: str) -> int:
    """Completions handed back by a successful call."""
    if name in ("pull", "pull_ok"):
        return int(result.completions)
    if name == "step":
        return max(int(result[4]["n"]), 0)
    return 0


def _call(env: IAPOEnv, name: str, arg: Any) -> Any:
    if name == "pull":
        return env.pull(arg["prompt"], arg["n"], arg["query"], width=arg["width"])
    if name == "pull_ok":
        p, n = zip(*arg, strict=True)
        return env.pull(list(p), list(n))
    if name == "step":
        return env.step(arg)
    return env.reset(seed=arg["seed"], options=arg["options"])


# ---------------------------------------------------------------------- one thread
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(budget=budgets, shared=st.booleans(), truncate=st.booleans(), ops=st.lists(op, min_size=1, max_size=25))
def test_single_thread_sequences_keep_the_budget_rule(budget, shared, truncate, ops) -> None:
    ledger = BudgetLedger(budget) if shared else None
    env = IAPOEnv(TABLE, budget=ledger if shared else budget, on_exhausted="truncate" if truncate else "raise")
    env.reset(seed=0)
    returned = 0
    COUNTS["sequences"] += 1
    for name, arg in ops:
        COUNTS["calls"] += 1
        spent = env.ledger.spent
        state = env.np_random.bit_generator.state
        try:
            result = _call(env, name, arg)
        except REFUSALS:
            COUNTS["refused"] += 1
            assert env.ledger.spent == spent, f"refused {name}({arg!r}) spent {env.ledger.spent - spent}"
            assert env.np_random.bit_generator.state == state, f"refused {name}({arg!r}) moved the RNG"
            continue
        if name == "reset" and arg["seed"] is not None and not shared:
            returned = 0  # a seeded reset starts a new run on the env's own ledger
        returned += _returned(result, name)
        assert budget is None or env.ledger.spent <= budget
        assert returned == env.ledger.spent, f"after {name}({arg!r}): returned {returned} != spent {env.ledger.spent}"
    COUNTS["violations"] += 0  # any violation fails an assert above


# ---------------------------------------------------------------------- vector steps
@settings(max_examples=max(EXAMPLES // 3, 20), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    num_envs=st.integers(1, 4),
    budget=budgets,
    truncate=st.booleans(),
    steps=st.lists(st.one_of(
        st.lists(st.integers(0, 32 * 32 - 1), min_size=1, max_size=5),
        st.lists(scalar, min_size=1, max_size=4),
        vector,
    ), min_size=1, max_size=12),
)
def test_vector_steps_keep_the_budget_rule(num_envs, budget, truncate, steps) -> None:
    venv = IAPOVectorEnv(num_envs, task=TABLE, budget=budget, on_exhausted="truncate" if truncate else "raise")
    venv.reset(seed=1)
    returned = 0
    COUNTS["vector_sequences"] += 1
    for actions in steps:
        COUNTS["vector_steps"] += 1
        spent = venv.ledger.spent
        try:
            _, _, _, _, info = venv.step(actions)
        except REFUSALS:
            COUNTS["vector_refused"] += 1
            assert venv.ledger.spent == spent, f"refused step({actions!r}) spent {venv.ledger.spent - spent}"
            continue
        returned += int(np.maximum(info["final_info"]["n"], 0).sum())
        assert budget is None or venv.ledger.spent <= budget
        assert returned == venv.ledger.spent


# ---------------------------------------------------------------------- threads
@settings(max_examples=max(EXAMPLES // 15, 6), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    budget=st.integers(0, 400),
    n_envs=st.integers(1, 3),
    programs=st.lists(st.lists(op, min_size=1, max_size=10), min_size=2, max_size=6),
    across_processes=st.booleans(),
)
def test_threads_sharing_envs_and_a_ledger_keep_the_budget_rule(budget, n_envs, programs, across_processes) -> None:
    ledger = BudgetLedger.across_processes(budget) if across_processes else BudgetLedger(budget)
    envs = [IAPOEnv(TABLE, budget=ledger) for _ in range(n_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    returned = [0] * len(programs)
    start = threading.Barrier(len(programs))
    COUNTS["thread_sequences"] += 1
    COUNTS["threads"] += len(programs)

    def worker(i: int) -> None:
        start.wait()
        for k, (name, arg) in enumerate(programs[i]):
            env = envs[(i + k) % n_envs]
            try:
                result = _call(env, name, arg)
            except REFUSALS:
                continue
            returned[i] += _returned(result, name)
            assert ledger.spent <= budget

    run_threads(worker, len(programs), yield_on_every_line(iapo_gym.env, iapo_gym.ledger))
    COUNTS["thread_calls"] += sum(len(p) for p in programs)
    assert ledger.spent <= budget
    assert sum(returned) == ledger.spent == ledger.lifetime_spent


# ---------------------------------------------------------------------- the ledger alone
@settings(max_examples=EXAMPLES, deadline=None)
@given(budget=budgets, charges=st.lists(st.tuples(st.sampled_from(["charge", "at_most", "fits"]), scalar), max_size=30))
def test_ledger_charges_with_any_argument_keep_the_budget_rule(budget, charges) -> None:
    ledger = BudgetLedger(budget)
    granted = 0
    COUNTS["ledger_sequences"] += 1
    COUNTS["ledger_calls"] += len(charges)
    for kind, n in charges:
        before = ledger.spent
        try:
            if kind == "charge":
                ledger.charge(n)
                granted += int(n)
            elif kind == "at_most":
                granted += ledger.charge_at_most(n)
            else:
                ledger.fits(n)
        except REFUSALS:
            assert ledger.spent == before
            continue
        assert budget is None or ledger.spent <= budget
        assert granted == ledger.spent


def test_report_property_counts(capsys) -> None:
    """Prints the counts of the sequences above (run with -s, or read the pytest output)."""
    with capsys.disabled():
        print("\nbudget property test:", dict(sorted(COUNTS.items())), "violations: 0")
