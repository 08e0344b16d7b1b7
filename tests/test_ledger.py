"""BudgetLedger: charges, refusals before spending, affordable N, tokens, reset."""

from __future__ import annotations

import pytest

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
    with pytest.raises(ValueError, match="negative"):
        ledger.charge(-1)
    with pytest.raises(ValueError, match="non-negative"):
        ledger.charge(1, prompt_tokens=-3)
    assert ledger.spent == 0 and ledger.tokens == 0
