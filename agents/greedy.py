"""Epsilon-greedy and Softmax baselines (paper section 3.6; the authors' ``AdaptiveAgent``).

Both run the shared online loop (:mod:`iapo_gym.agents._sequential`): random context per step, feasible
arms only, every pull shared across scales and contexts, final arm = empirical best.

* **Epsilon-greedy**: with probability ``epsilon`` a uniformly random feasible arm, otherwise the
  feasible arm with the highest empirical mean. ``epsilon = 0.15`` is the paper's tuned value
  (the authors' code defaults to 0.1).
* **Softmax**: a feasible arm drawn with probability proportional to ``exp(mean / tau)``
  (Gumbel-max sampling). The paper does not state the temperature; ``tau = 0.05`` is the
  authors' code default and is used here.

Unseen arms: the authors give them mean 0, which is arbitrary (utilities can be negative: a
cost-heavy context makes every seen arm look worse than an unseen one, or vice versa). Here unseen
feasible arms are tried first (optimistic initialisation, ties broken by the run's seeded random
priority); with nested reuse one pull of ``(p, N)`` makes every ``(p, k <= N)`` seen, so this costs
at most one sweep over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym._checks import finite_real
from iapo_gym.agents import _sequential_kernels as kernels
from iapo_gym.agents._sequential import KernelStep, SequentialAgent, Step, random_feasible


@dataclass
class EpsilonGreedy(SequentialAgent):
    """Epsilon-greedy with probability ``epsilon`` of a uniformly random feasible arm (paper: 0.15)."""

    epsilon: float = 0.15
    name: ClassVar[str] = "egreedy"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1]; got {self.epsilon}")

    def choose(self, step: Step) -> NDArray[np.int64]:
        """The best feasible arm per row, or with probability ``epsilon`` a uniformly random one."""
        u = step.rng.random((step.mean.shape[0], 2))  # per run: the explore coin, then the random arm
        rows, first_unseen = step.unseen_choice()
        score = step.mean
        step.mask_infeasible(score)
        greedy = self.argmax_tiebreak(score, step.priority)
        greedy[rows] = first_unseen
        return np.where(u[:, 0] < float(self.epsilon), step.random_feasible(u[:, 1]), greedy)

    def loop_rule(self) -> tuple[int, float]:
        """Epsilon-greedy with ``epsilon`` in the compiled whole loop (:meth:`SequentialAgent.loop_rule`)."""
        return kernels.GREEDY, float(self.epsilon)

    def choose_kernel(self, step: KernelStep) -> NDArray[np.int64]:
        """:meth:`choose` with the greedy arm of the exploiting rows from one compiled pass per row."""
        on = step.online
        u = step.rng.random((step.live.size, 2))  # the same draws, in the same order, as choose
        explore = u[:, 0] < float(self.epsilon)
        out = np.empty(step.live.size, dtype=np.int64)
        kernels.best_arm(on.kernel_state, step.live, step.ctx, step.limit, np.empty(0), 0.0, False, explore, out)
        if explore.any():
            out[explore] = random_feasible(u[explore, 1], step.limit[explore], on.p_n, on.n_max)
        return out


@dataclass
class Softmax(SequentialAgent):
    """Boltzmann exploration with temperature ``tau`` (paper: unstated; authors' code: 0.05)."""

    tau: float = 0.05
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        finite_real(self.tau, "the temperature tau", minimum=0.0, strict=True)

    def choose(self, step: Step) -> NDArray[np.int64]:
        """An unseen feasible arm first, else a Boltzmann draw at temperature ``tau`` (Gumbel-max)."""
        gumbel = step.rng.gumbel(size=step.mean.shape)
        rows, first_unseen = step.unseen_choice()
        logits = step.mean
        logits /= float(self.tau)
        logits += gumbel
        step.mask_infeasible(logits)
        arm = np.argmax(logits, axis=1)
        arm[rows] = first_unseen
        return arm

    def loop_rule(self) -> tuple[int, float]:
        """Softmax with ``tau`` in the compiled whole loop (:meth:`SequentialAgent.loop_rule`)."""
        return kernels.SOFTMAX, float(self.tau)

    def choose_kernel(self, step: KernelStep) -> NDArray[np.int64]:
        """:meth:`choose` computing the Gumbel noise (numpy's ``log``) only for the arms that can win.

        :func:`iapo_gym.agents._sequential_kernels.softmax_candidates` bounds each arm's logit from a
        table of Gumbel values; numpy computes the exact logits of the arms within reach of the
        best (``mean / tau + g``, the same operations as :meth:`choose`), and the first maximum wins.
        Endgame rows (some arm infeasible) are scored as in :meth:`choose`.
        """
        on = step.online
        b, a_n = step.live.size, on.countf.shape[1]
        u = step.rng.random((b, a_n))  # the uniforms rng.gumbel would draw
        upper, lower = kernels.gumbel_table()
        out = np.empty(b, dtype=np.int64)
        cand = np.empty(b * a_n, dtype=np.int64)
        start = np.empty(b + 1, dtype=np.int64)
        tau = float(self.tau)
        kernels.softmax_candidates(on.kernel_state, step.live, step.ctx, step.limit, u, tau, upper, lower, out, cand, start)
        cand = cand[: start[-1]]
        row = np.repeat(np.arange(b), np.diff(start))
        with np.errstate(divide="ignore"):
            logit = on.mean[step.live[row], step.ctx[row], cand] / tau
            logit += -np.log(-np.log1p(-u[row, cand]))
        kernels.first_max(logit, start, cand, out)
        slow = np.flatnonzero(out == -2)
        if slow.size:  # the endgame: every arm's logit, infeasible arms masked
            with np.errstate(divide="ignore"):
                logits = on.mean[step.live[slow], step.ctx[slow]] / tau
                logits += -np.log(-np.log1p(-u[slow]))
            feasible = np.arange(a_n) % on.n_max < step.limit[slow, None]
            np.copyto(logits, -np.inf, where=~feasible)
            out[slow] = np.argmax(logits, axis=1)
        return out
