"""UCB baseline (paper section 3.5): fully sequential optimism with nested + cross-context reuse.

Each step (see :mod:`iapo_gym.agents._sequential`) picks, among feasible arms, the argmax of
``mean(c, a) + c_ucb * sqrt(ln t / n(a))``, where ``n(a)`` counts the arm's samples including
the virtual samples from nested blocks and ``t`` is the total number of block samples recorded
(the authors' convention; it is the same for every context because every pull updates every
context). An unseen arm scores ``+inf``. ``c_ucb = 0.1`` is the paper's tuned value (the authors'
code defaults to 2.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym._checks import finite_real
from iapo_gym.agents._sequential import SequentialAgent


@dataclass
class UCB(SequentialAgent):
    """UCB1-style selection with exploration constant ``c`` (paper: 0.1)."""

    c: float = 0.1
    name: ClassVar[str] = "ucb"

    def __post_init__(self) -> None:
        finite_real(self.c, "the exploration constant c", minimum=0.0)

    def choose(
        self,
        mean: NDArray[np.float64],
        count: NDArray[np.int64],
        feasible: NDArray[np.bool_],
        priority: NDArray[np.float64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """The feasible arm with the highest upper confidence bound (unseen arms first)."""
        t = np.maximum(count.sum(axis=1, keepdims=True), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = float(self.c) * np.sqrt(np.log(t) / count)
        score = np.where(count > 0, mean + bonus, np.inf)
        score = np.where(feasible, score, -np.inf)
        return self.argmax_tiebreak(score, priority)
