"""BudgetLedger: charges, refusals before spending, affordable N, tokens, reset."""

from __future__ import annotations

import pytest
from thread_helpers import run_threads, yield_on_every_line

from iapo_gym.ledger import BudgetExceededError, BudgetLedger


def test_charges_accumulate_and_remaining_counts_down() -> None:
    ledger = BudgetLedger(100)
    ledger.charge(30)
    ledger.charge(45)
    assert (ledger.spent, ledger.remaining) == (75, 25)
    assert ledger.fits(25) and not ledger.fits(26)


def test_refused_charge_spends_nothing_and_names_the_check() -> None:
    ledger = BudgetLedger(10)
    ledger.charge(7, prompt_tokens=5, completion_tokens=9)
    with pytest.raises(BudgetExceededError) as err:
        ledger.charge(4, prompt_tokens=100, completion_tokens=100)
    message = str(err.value)
    assert "needs 4 completions but only 3" in message and "budget of 10" in message
    assert "env.unwrapped.ledger.remaining" in message and "action_mask" in message
    assert (ledger.spent, ledger.tokens) == (7, 14)
    ledger.charge(3)
    assert ledger.remaining == 0
    with pytest.raises(BudgetExceededError):
        ledger.charge(1)
    ledger.charge(0)  # an empty batch always fits
    assert ledger.spent == 10


def test_affordable_n_is_capped_by_budget_and_n_max() -> None:
    ledger = BudgetLedger(40)
    assert ledger.affordable_n(32) == 32
    ledger.charge(35)
    assert ledger.affordable_n(32) == 5
    ledger.charge(5)
    assert ledger.affordable_n(32) == 0


def test_unlimited_budget() -> None:
    ledger = BudgetLedger(None)
    ledger.charge(10**9)
    assert ledger.remaining is None and ledger.fits(10**9) and ledger.affordable_n(16) == 16
    assert ledger.spent == 10**9


def test_tokens_are_recorded_and_reset_clears_everything() -> None:
    ledger = BudgetLedger(50)
    ledger.charge(4, prompt_tokens=120, completion_tokens=300)
    ledger.record_tokens(completion_tokens=20)
    assert (ledger.prompt_tokens, ledger.completion_tokens, ledger.tokens) == (120, 320, 440)
    ledger.reset()
    assert (ledger.spent, ledger.remaining, ledger.tokens) == (0, 50, 0)


@pytest.mark.parametrize("budget", [-1, 2.5, "ten", True])
def test_bad_budgets_are_refused(budget: object) -> None:
    with pytest.raises(ValueError, match="non-negative whole number"):
        BudgetLedger(budget)  # type: ignore[arg-type]


def test_whole_numpy_and_float_budgets_are_accepted() -> None:
    import numpy as np

    assert BudgetLedger(np.int64(12)).budget == 12 and BudgetLedger(12.0).remaining == 12


def test_negative_charges_are_refused() -> None:
    ledger = BudgetLedger(5)
    with pytest.raises(ValueError, match=r"n \(completions to charge\) must be >= 0"):
        ledger.charge(-1)
    with pytest.raises(ValueError, match="prompt_tokens must be >= 0"):
        ledger.charge(1, prompt_tokens=-3)
    assert ledger.spent == 0 and ledger.tokens == 0


# ---------------------------------------------------------------------- strict types, atomicity, sharing
@pytest.mark.parametrize("bad", [1.9, "5", True, None, float("nan"), [2]])
def test_charge_refuses_non_whole_counts_and_spends_nothing(bad: object) -> None:
    ledger = BudgetLedger(10)
    with pytest.raises((TypeError, ValueError), match="n \\(completions to charge\\)"):
        ledger.charge(bad)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match="n \\(completions to charge\\)"):
        ledger.charge_at_most(bad)  # type: ignore[arg-type]
    assert (ledger.spent, ledger.lifetime_spent) == (0, 0)
    ledger.charge(2.0)  # a whole float is a whole number
    assert ledger.spent == 2


def test_counters_are_read_only() -> None:
    ledger = BudgetLedger(10)
    for attr in ("budget", "spent", "lifetime_spent", "prompt_tokens", "completion_tokens"):
        with pytest.raises(AttributeError):
            setattr(ledger, attr, 0)
    assert ledger.budget == 10 and ledger.spent == 0


def test_charge_at_most_clips_to_what_is_left_and_lifetime_survives_reset() -> None:
    ledger = BudgetLedger(10)
    assert ledger.charge_at_most(7) == 7 and ledger.charge_at_most(7) == 3 and ledger.charge_at_most(7) == 0
    assert ledger.spent == 10
    ledger.reset()
    ledger.charge(4)
    assert (ledger.spent, ledger.lifetime_spent) == (4, 14)
    assert BudgetLedger(None).charge_at_most(10**6) == 10**6


def test_threads_never_overspend_and_every_granted_charge_is_counted() -> None:
    import threading

    import numpy as np

    import iapo_gym.ledger

    tracer = yield_on_every_line(iapo_gym.ledger)
    overspent = 0
    for trial in range(6):
        ledger = BudgetLedger(300)
        granted = [0] * 8
        start = threading.Barrier(8)

        def worker(i: int, ledger=ledger, granted=granted, start=start, seed=trial) -> None:
            rng = np.random.default_rng([seed, i])
            start.wait()
            for n in rng.integers(1, 9, size=60):
                try:
                    ledger.charge(int(n))
                    granted[i] += int(n)
                except BudgetExceededError:
                    pass

        run_threads(worker, 8, tracer)
        overspent += ledger.spent > 300
        assert sum(granted) == ledger.spent == ledger.lifetime_spent
        assert ledger.spent >= 300 - 8  # the threads wanted far more: only the last charges can miss
    assert overspent == 0


def test_pickling_copies_an_env_ledger_but_refuses_a_shared_one() -> None:
    import copy
    import pickle

    own = BudgetLedger.owned(20)
    own.charge(5)
    back = pickle.loads(pickle.dumps(own))
    back.charge(15)  # the copy has its own lock and counters
    assert (back.spent, own.spent) == (20, 5)
    shared = BudgetLedger(20)
    with pytest.raises(TypeError, match="cannot be sent to another process"):
        pickle.dumps(shared)
    clone = copy.deepcopy(shared)
    clone.charge(3)
    assert (clone.spent, shared.spent) == (3, 0)


# ---------------------------------------------------------------------- processes
def _charge_many(args: tuple) -> int:
    """Worker of the multi-process test: charge a process-shared ledger; returns what was granted."""
    import numpy as np

    ledger, seed = args
    granted = 0
    for n in np.random.default_rng(seed).integers(1, 9, size=80):
        try:
            ledger.charge(int(n))
            granted += int(n)
        except BudgetExceededError:
            pass
    return granted


def test_a_process_ledger_is_one_budget_for_several_processes() -> None:
    import multiprocessing
    import os

    ledger = BudgetLedger.across_processes(500)
    ledger.charge(20, prompt_tokens=7)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        granted = pool.map(_charge_many, [(ledger, seed) for seed in range(6)])
    assert ledger.spent == 20 + sum(granted) <= 500 and ledger.spent >= 500 - 8
    assert ledger.lifetime_spent == ledger.spent and ledger.prompt_tokens == 7
    with multiprocessing.get_context("fork").Pool(2) as pool:  # forked children reopen the file
        more = pool.map(_charge_many, [(ledger, 9), (ledger, 10)])
    assert sum(more) == 0 and ledger.remaining == 500 - ledger.spent
    ledger.reset()
    assert ledger.spent == 0 and ledger.lifetime_spent >= 492
    path = ledger.path
    del ledger
    import gc

    gc.collect()
    assert not os.path.exists(path)  # the maker's ledger removes its file


def test_charge_many_charges_all_or_none_and_sums_a_shared_ledger() -> None:
    import numpy as np

    from iapo_gym.ledger import charge_many

    a, b, shared = BudgetLedger(10), BudgetLedger(None), BudgetLedger(9)
    charge_many([a, b, shared, shared], np.array([4, 100, 5, 4]))
    assert (a.spent, b.spent, shared.spent, shared.remaining) == (4, 100, 9, 0)
    with pytest.raises(BudgetExceededError, match="refuses 7 more completions \\(remaining: 6\\)"):
        charge_many([b, a], np.array([1, 7]))  # b fits, a does not: neither is charged
    assert (a.spent, b.spent) == (4, 100)
    with pytest.raises(BudgetExceededError):
        charge_many([shared, a], [1, 0])
    for bad in ([1.5, 1], [-1, 1], [1]):
        with pytest.raises(ValueError, match="amounts"):
            charge_many([a, b], np.array(bad))
    assert (a.spent, b.spent, a.lifetime_spent) == (4, 100, 4)
    charge_many([], np.array([], dtype=np.int64))


def test_charge_many_with_a_process_ledger_checks_every_ledger_first() -> None:
    import numpy as np

    from iapo_gym.ledger import charge_many

    proc, plain = BudgetLedger.across_processes(5), BudgetLedger(5)
    with pytest.raises(BudgetExceededError):
        charge_many([proc, plain], np.array([2, 6]))
    assert (proc.spent, plain.spent) == (0, 0)
    charge_many([proc, plain], np.array([2, 5]))
    assert (proc.spent, plain.spent) == (2, 5)


def test_charge_many_never_lets_threads_overspend() -> None:
    import threading

    import numpy as np

    import iapo_gym.ledger as ledger_module
    from iapo_gym.ledger import charge_many

    ledgers = [BudgetLedger(300) for _ in range(4)]
    done = {"many": 0, "single": 0}
    count_lock = threading.Lock()

    def work(_: int) -> None:
        for _ in range(40):
            try:
                charge_many(ledgers, np.array([1, 2, 3, 1]))
                with count_lock:
                    done["many"] += 1
            except BudgetExceededError:
                pass
            try:
                ledgers[2].charge(2)
                with count_lock:
                    done["single"] += 1
            except BudgetExceededError:
                pass

    run_threads(work, 4, yield_on_every_line(ledger_module))
    n, single = done["many"], done["single"]
    # all or none: every ledger saw the same number of batch charges; the third is the binding one
    assert [led.spent for led in ledgers] == [n, 2 * n, 3 * n + 2 * single, n]
    assert ledgers[2].spent <= 300 and ledgers[2].spent >= 297 and n < 160
