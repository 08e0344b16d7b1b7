"""The budget ledger: completions spent against a fixed training budget.

The budget unit is one LLM completion; a pull of ``(p, N)`` costs ``N`` (DESIGN §2). Live runs
also record tokens. A charge that does not fit is refused *before* anything is spent or sampled.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass


class BudgetExceededError(RuntimeError):
    """A pull asked for more completions than the ledger has left."""


@dataclass
class BudgetLedger:
    """Completions spent against ``budget`` (``None`` = unlimited).

    Attributes:
        budget: total completions allowed, or ``None``.
        spent: completions charged so far.
        prompt_tokens, completion_tokens: tokens recorded by live backends.
    """

    budget: int | None = None
    spent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        if self.budget is not None:
            b = self.budget
            whole = isinstance(b, numbers.Integral) or (isinstance(b, numbers.Real) and float(b).is_integer())
            if isinstance(b, bool) or not whole or b < 0:
                raise ValueError(f"budget must be a non-negative whole number of completions (or None); got {b!r}")
            self.budget = int(b)

    @property
    def tokens(self) -> int:
        """Tokens recorded so far (prompt + completion; 0 for simulated pulls)."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def remaining(self) -> int | None:
        """Completions left, or ``None`` when unlimited."""
        return None if self.budget is None else self.budget - self.spent

    def fits(self, n: int) -> bool:
        """Whether a charge of ``n`` completions fits."""
        return self.budget is None or self.spent + int(n) <= self.budget

    def affordable_n(self, n_max: int) -> int:
        """Largest ``N <= n_max`` a single pull can still afford (0 when none)."""
        return n_max if self.budget is None else max(0, min(n_max, self.budget - self.spent))

    def charge(self, n: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Record ``n`` completions (and tokens); raise :class:`BudgetExceededError` if they do not fit."""
        n = int(n)
        if n < 0:
            raise ValueError(f"cannot charge a negative number of completions ({n})")
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"token counts must be non-negative; got {prompt_tokens}, {completion_tokens}")
        if not self.fits(n):
            raise BudgetExceededError(
                f"this pull needs {n} completions but only {self.remaining} of the budget of {self.budget} are left; "
                "check env.unwrapped.ledger.remaining (or info['action_mask']) before pulling"
            )
        self.spent += n
        self.record_tokens(prompt_tokens, completion_tokens)

    def record_tokens(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Add tokens of completions already charged (live backends learn them after generating)."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"token counts must be non-negative; got {prompt_tokens}, {completion_tokens}")
        self.prompt_tokens += int(prompt_tokens)
        self.completion_tokens += int(completion_tokens)

    def reset(self) -> None:
        """Forget all charges (a new training run on the same env)."""
        self.spent = self.prompt_tokens = self.completion_tokens = 0
