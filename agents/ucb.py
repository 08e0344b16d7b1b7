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
from iapo_gym.agents import _sequential_kernels as kernels
from iapo_gym.agents._sequential import KernelStep, SequentialAgent, Step


@dataclass
class UCB(SequentialAgent):
    """UCB1-style selection with exploration constant ``c`` (paper: 0.1)."""

    c: float = 0.1
    name: ClassVar[str] = "ucb"
    kernel_needs_invsqrt: ClassVar[bool] = True

    def __post_init__(self) -> None:
        finite_real(self.c, "the exploration constant c", minimum=0.0)

    def choose(self, step: Step) -> NDArray[np.int64]:
        """The feasible arm with the highest upper confidence bound (unseen arms first)."""
        rows, first_unseen = step.unseen_choice()
        if rows.size == step.mean.shape[0]:  # every row still has a feasible unseen arm
            return first_unseen
        logt = np.log(np.maximum(step.total, 1))
        score = step.mean
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.divide(logt[:, None], step.count)
            np.sqrt(bonus, out=bonus)
            bonus *= float(self.c)  # unseen arms with c = 0: inf * 0 = NaN, overwritten below
        score += bonus  # mean + c * sqrt(ln t / n), the same bits as written that way
        step.mask_infeasible(score)
        arm = self.argmax_tiebreak(score, step.priority)
        arm[rows] = first_unseen
        return arm

    def loop_rule(self) -> tuple[int, float]:
        """UCB with ``c`` in the compiled whole loop (:meth:`SequentialAgent.loop_rule`)."""
        return kernels.UCB, float(self.c)

    def choose_kernel(self, step: KernelStep) -> NDArray[np.int64]:
        """:meth:`choose` in one compiled pass per row (:func:`iapo_gym.agents._sequential_kernels.best_arm`)."""
        on = step.online
        out = np.empty(step.live.size, dtype=np.int64)
        logt = np.log(np.maximum(on.total[step.live], 1))  # numpy's log, as in choose
        skip = np.zeros(step.live.size, dtype=np.bool_)
        kernels.best_arm(on.kernel_state, step.live, step.ctx, step.limit, logt, float(self.c), True, skip, out)
        return out
