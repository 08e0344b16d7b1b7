"""Stable-Baselines3 integration: end ``learn()`` when the completion budget is spent, and log it.

:class:`BudgetCallback` works with any SB3 algorithm and any ``VecEnv`` of IAPO envs::

    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from iapo_gym import BudgetLedger
    from iapo_gym.sb3 import BudgetCallback

    ledger = BudgetLedger(2000)  # ONE budget for the whole run
    venv = make_vec_env("IAPO-SynthBernoulli-v0", n_envs=4,
                        env_kwargs={"budget": ledger, "on_exhausted": "truncate"})
    PPO("MlpPolicy", venv).learn(10**6, callback=BudgetCallback())
    assert ledger.spent == 2000

* ``learn`` stops (the callback returns False) right after the step that spends the last
  completion; ``on_exhausted="truncate"`` makes that step clip ``N`` to what is left instead of
  raising, so nothing is raised inside SB3's loop and the spend is exactly the budget.
* It logs ``budget/spent`` and ``budget/remaining`` to TensorBoard with **completions spent** as
  the x-axis (``tensorboard_log=`` of the algorithm), and to SB3's other logger outputs.
* SB3's ``make_vec_env`` calls ``gym.make`` once per sub-env: ``env_kwargs={"budget": T}`` (an
  int) gives EACH sub-env its own budget of ``T``; pass one :class:`~iapo_gym.ledger.BudgetLedger`
  to give the run one budget (the callback warns when it sees separate ledgers).
  ``SubprocVecEnv``: pass ``BudgetLedger.across_processes(T)``, whose counters every process
  shares (a plain ``BudgetLedger`` refuses to be pickled into another process).

Needs the ``rl`` extra (``pip install iapo-gym[rl]``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from iapo_gym._checks import whole_number

try:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import TensorBoardOutputFormat
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("iapo_gym.sb3 needs Stable-Baselines3: pip install iapo-gym[rl]") from err

__all__ = ["BudgetCallback"]


class BudgetCallback(BaseCallback):
    """Stops SB3's ``learn()`` when the completion budget is spent; logs ``budget/spent`` and ``budget/remaining``.

    The spend is read from the ``info`` of every sub-env step (``budget_used`` / ``budget_left``),
    so it works for ``DummyVecEnv`` and ``SubprocVecEnv`` alike without extra inter-process calls.

    Args:
        budget: an optional cap on the completions spent during this ``learn()`` (counted from the
            spend at its start); ``None``: only the envs' ledgers limit the run.
        verbose: SB3 verbosity.

    Attributes:
        spent: completions spent by the training env since ``learn()`` started.
        remaining: completions left (``None`` when unlimited).
        shared: whether the sub-envs share one ledger.
    """

    def __init__(self, budget: int | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.budget = None if budget is None else whole_number(budget, "budget", minimum=0)
        self.spent = 0
        self.remaining: int | None = None
        self.shared = False
        self._used: np.ndarray = np.zeros(0, dtype=np.int64)
        self._left: np.ndarray = np.zeros(0, dtype=np.int64)
        self._start = 0
        self._writer: Any = None
        self._last_logged = -1

    # ------------------------------------------------------------------ SB3 hooks
    def _on_training_start(self) -> None:
        env = self.training_env
        try:
            ledgers = env.get_attr("ledger")
        except AttributeError:
            raise TypeError("BudgetCallback needs IAPO envs (whose unwrapped env has a budget ledger)") from None
        n = len(ledgers)
        self.shared = n > 1 and all(_same_ledger(ledger, ledgers[0]) for ledger in ledgers)
        if n > 1 and not self.shared and any(ledger.budget is not None for ledger in ledgers):
            warnings.warn(
                f"the {n} sub-envs have separate budget ledgers, so the run may spend the sum of their budgets; "
                "to give the run ONE budget pass one ledger: env_kwargs={'budget': iapo_gym.BudgetLedger(T)}",
                stacklevel=2,
            )
        if self.budget is None and "raise" in set(env.get_attr("on_exhausted")):
            warnings.warn(
                "a step that does not fit the budget raises BudgetExceededError inside learn(); make the env with "
                "on_exhausted='truncate' to clip the last step instead",
                stacklevel=2,
            )
        self._used = np.array([ledger.spent for ledger in ledgers], dtype=np.int64)
        self._left = np.array([-1 if ledger.remaining is None else ledger.remaining for ledger in ledgers], dtype=np.int64)
        self._start = self._total_used()
        self._writer = next(
            (f.writer for f in self.logger.output_formats if isinstance(f, TensorBoardOutputFormat)), None
        )
        self._update()
        self._log(force=True)

    def _on_step(self) -> bool:
        for i, info in enumerate(self.locals.get("infos", ())):
            if "budget_used" in info:
                self._used[i] = info["budget_used"]
                self._left[i] = info["budget_left"]
        self._update()
        self._log()
        return self.remaining is None or self.remaining > 0

    def _on_training_end(self) -> None:
        self._log()
        if self._writer is not None:
            self._writer.flush()

    # ------------------------------------------------------------------ bookkeeping
    def _total_used(self) -> int:
        return int(self._used.max(initial=0)) if self.shared else int(self._used.sum())

    def _update(self) -> None:
        self.spent = self._total_used() - self._start
        if self.shared:
            left = None if self._left.size == 0 or self._left.min() < 0 else int(self._left.min())
        else:
            left = None if self._left.size == 0 or self._left.min() < 0 else int(self._left.sum())
        if self.budget is not None:
            cap = self.budget - self.spent
            left = cap if left is None else min(left, cap)
        self.remaining = None if left is None else max(int(left), 0)

    def _log(self, force: bool = False) -> None:
        if self.spent == self._last_logged and not force:
            return
        self._last_logged = self.spent
        remaining = -1 if self.remaining is None else self.remaining
        self.logger.record("budget/spent", self.spent, exclude="tensorboard")
        self.logger.record("budget/remaining", remaining, exclude="tensorboard")
        if self._writer is not None:  # x-axis: completions spent
            self._writer.add_scalar("budget/spent", self.spent, global_step=self.spent)
            self._writer.add_scalar("budget/remaining", remaining, global_step=self.spent)


def _same_ledger(a: Any, b: Any) -> bool:
    """One ledger: the same object, or the same process-shared ledger seen from two processes."""
    path = getattr(a, "path", None)
    return a is b or (path is not None and path == getattr(b, "path", None))
