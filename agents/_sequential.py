"""The online loop shared by UCB, epsilon-greedy and Softmax, vectorised across seeds.

Every step, each run that still has budget (all ``S`` runs of a batch at once):

1. draws a context from the context distribution (the authors draw uniformly; the two coincide on
   every released task);
2. picks a *feasible* arm (``N <= remaining budget``) with the agent's rule (:meth:`choose`);
3. pulls it (one uniformly drawn train query) and records every nested block under every context
   (the paper: "all baselines share data across contexts and scales").

The loop ends when every run has spent its budget exactly (an ``N = 1`` arm is always feasible
while budget remains), so these agents never exceed ``T`` and waste nothing. The deployed arm of a
context is the arm with the highest empirical mean (unseen arms rank last): the paper's and the
authors' rule, kept as the default (``lcb = 0``).

That rule has a winner's curse that makes these agents *lose* ACR as the budget grows on MATH
(docs/BEYOND.md, "The UCB / epsilon-greedy / Softmax anomaly"): the adaptive loop leaves many
large-``N`` arms with a handful of blocks from a handful of queries, their means sit near the
maximal credit, and the empirical best over all ``|P| N_max`` arms picks one of them once the
well-sampled arms have regressed towards their true values. ``lcb > 0`` deploys the arm with the
highest ``mean - lcb / sqrt(count)`` instead (a lower confidence bound on the utility scale).

Ties in the selection rule are broken by a per-run random priority over arms drawn once from the
seed (the authors flip coins; both are uniform over tied arms for a run).

Speed: the loop keeps every run's per-context means, counts (as floats), total count and number of
unseen arms up to date *incrementally*: a step touches one prompt per run, so only those
``(run, prompt)`` rows are recomputed (with the same floating-point operations as a full
recomputation, hence the same bits). A step then costs one gather of the drawn contexts' means
plus the agent's rule on ``(B, |P| N_max)`` arrays; rows with a feasible unseen arm or a budget
below ``N_max`` (the endgame) take separate, smaller paths, and the runs' ledgers are charged in
one call (:func:`iapo_gym.ledger.charge_many`).

With numba installed (:mod:`iapo_gym._jit`), the rule and the refresh run as compiled kernels
(:mod:`iapo_gym.agents._sequential_kernels`) that read the runs' state in place: one pass per
row instead of several numpy passes over gathered ``(B, |P| N_max)`` copies, with the same
decisions bit for bit (``IAPO_GYM_JIT=0`` keeps the numpy step; tests compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit
from iapo_gym.agents import _sequential_kernels as kernels
from iapo_gym.agents._common import BatchAgent, best_arms, table_policies
from iapo_gym.agents._engine import NestedStats, nested_gains
from iapo_gym.agents.base import Policy
from iapo_gym.runs import RunBatch


@dataclass
class Step:
    """What a run's selection rule sees at one step, for the ``B`` live runs (row ``i`` = run ``live[i]``).

    Attributes:
        mean: ``(B, A)`` empirical means under each row's drawn context, NaN where unseen (a fresh
            array the rule may overwrite).
        count: ``(B, A)`` nested-block counts as floats (read only).
        total: ``(B,)`` total block count of each run (the sum of ``count``).
        limit: ``(B,)`` largest feasible ``N`` (``min(remaining budget, N_max)``): arm ``(p, N)`` is
            feasible when ``N <= limit``.
        n_unseen: ``(B,)`` number of unseen arms (feasible or not).
        priority: ``(B, A)`` the runs' tie-break priorities (read only).
        rng: the rows' random streams (:class:`iapo_gym.runs.RowGenerator`).
        n_max: ``N_max``.
    """

    mean: NDArray[np.float64]
    count: NDArray[np.float64]
    total: NDArray[np.int64]
    limit: NDArray[np.int64]
    n_unseen: NDArray[np.int64]
    priority: NDArray[np.float64]
    rng: Any
    n_max: int

    @property
    def constrained(self) -> NDArray[np.int64]:
        """Rows whose remaining budget rules out some arms (``limit < N_max``)."""
        return np.flatnonzero(self.limit < self.n_max)

    def feasible_rows(self, rows: NDArray[np.int64]) -> NDArray[np.bool_]:
        """``(len(rows), A)`` feasibility of every arm for the given rows."""
        n_idx = np.arange(self.mean.shape[1]) % self.n_max
        return n_idx[None, :] < self.limit[rows, None]

    def mask_infeasible(self, score: NDArray[np.float64], fill: float = -np.inf) -> None:
        """Set the infeasible arms of ``score`` (``(B, A)``, in place) to ``fill``."""
        rows = self.constrained
        if rows.size:
            sub = score[rows]
            np.copyto(sub, fill, where=~self.feasible_rows(rows))
            score[rows] = sub

    def unseen_choice(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Rows with a feasible unseen arm, and for each the one with the highest priority.

        What ``argmax_tiebreak`` gives when every feasible unseen arm scores ``+inf``.
        """
        rows = np.flatnonzero(self.n_unseen > 0)
        if rows.size == 0:
            return rows, rows
        cand = self.count[rows] == 0
        limited = self.limit[rows] < self.n_max
        if limited.any():
            cand &= self.feasible_rows(rows)
            keep = cand.any(axis=1)
            rows, cand = rows[keep], cand[keep]
        return rows, np.argmax(np.where(cand, self.priority[rows], -1.0), axis=1)

    def random_feasible(self, u: NDArray[np.float64]) -> NDArray[np.int64]:
        """The ``floor(u * k)``-th of a row's ``k`` feasible arms in index order (one uniform per row)."""
        return random_feasible(u, self.limit, self.mean.shape[1] // self.n_max, self.n_max)


def random_feasible(u: NDArray[np.float64], limit: NDArray[np.int64], n_prompts: int, n_max: int) -> NDArray[np.int64]:
    """Per row, the ``floor(u * k)``-th of its ``k = n_prompts * limit`` feasible arms in index order."""
    k = n_prompts * limit
    j = np.minimum((u * k).astype(np.int64), k - 1)
    return np.asarray((j // limit) * n_max + j % limit, dtype=np.int64)


@dataclass
class KernelStep:
    """What a compiled selection rule reads at one step: the runs' state in place, nothing gathered.

    Attributes:
        online: the runs' statistics (means ``(S, C, A)``, counts, ...; read only).
        live: ``(B,)`` the live runs; row ``i`` is run ``live[i]``.
        ctx: ``(B,)`` each row's drawn context.
        limit: ``(B,)`` largest feasible ``N``.
        priority: ``(S, A)`` every run's tie-break priorities.
        rng: the rows' random streams (:class:`iapo_gym.runs.RowGenerator`).
    """

    online: _OnlineStats
    live: NDArray[np.int64]
    ctx: NDArray[np.int64]
    limit: NDArray[np.int64]
    priority: NDArray[np.float64]
    rng: Any


def argmax_tiebreak(score: NDArray[np.float64], priority: NDArray[np.float64]) -> NDArray[np.int64]:
    """Row-wise argmax of ``score`` (no NaN); among tied maxima the highest ``priority`` wins.

    The same arm as ``argmax(where(score == max, priority, -1))``, without a full pass over the
    priorities unless a row has a tie.
    """
    arm = np.argmax(score, axis=1)
    best = score[np.arange(score.shape[0]), arm]
    tied = score == best[:, None]
    rows = np.flatnonzero(np.count_nonzero(tied, axis=1) > 1)
    if rows.size:
        arm[rows] = np.argmax(np.where(tied[rows], priority[rows], -1.0), axis=1)
    return arm


class _OnlineStats:
    """Nested tallies (:class:`NestedStats`) plus incrementally kept per-context means and counts."""

    def __init__(self, runs: RunBatch, priority: NDArray[np.float64]) -> None:
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        self.p_n, self.n_max = p_n, n_max
        self.stats = NestedStats(s_n, p_n, n_max, runs.contexts)
        self.c_n = len(runs.contexts)
        self.mean = np.full((s_n, self.c_n, p_n * n_max), np.nan)  # (S, C, A)
        self.countf = np.zeros((s_n, p_n * n_max))  # (S, A)
        self.total = np.zeros(s_n, dtype=np.int64)
        self.n_unseen = np.full(s_n, p_n * n_max, dtype=np.int64)
        self.jit = _jit.enabled()
        # what the compiled kernels read and update in place: the arrays above plus the bounds and
        # bookkeeping of their choice (kernels.Online); UCB's 1 / sqrt(count) only once a rule asks (keep_invsqrt)
        split = self.stats.split
        self.kernel_state = kernels.Online(
            gain=self.stats.gain, cost=self.stats.cost, n_blocks=self.stats.count, countf=self.countf, total=self.total,
            n_unseen=self.n_unseen, mean=self.mean, group=split.group, cost_weight=split.cost_weight, priority=priority,
            unseen_best=priority.reshape(s_n, p_n, n_max).argmax(axis=2) + np.arange(p_n) * n_max,
            pmax=np.full((s_n, self.c_n, p_n), -np.inf), invsqrt=np.empty((0, 0)), pinv=np.empty((0, 0)),
            last=np.empty((0, 0, 0, 2)),
        )  # fmt: skip

    @property
    def invsqrt(self) -> NDArray[np.float64]:
        """``1 / sqrt(count)`` per arm (``inf`` where unseen), kept by the kernels after :meth:`keep_invsqrt`."""
        return self.kernel_state.invsqrt

    def keep_invsqrt(self) -> None:
        """Keep ``1 / sqrt(count)`` and the per-prompt bounds of UCB up to date from now on (compiled path)."""
        with np.errstate(divide="ignore"):
            invsqrt = 1.0 / np.sqrt(self.countf)
        s_n = invsqrt.shape[0]
        self.kernel_state = self.kernel_state._replace(
            invsqrt=invsqrt,
            pinv=invsqrt.reshape(s_n, self.p_n, self.n_max).max(axis=2),
            last=np.full((s_n, self.c_n, self.p_n, 2), -1.0),
        )

    def record_kernel(self, runs: RunBatch, live: NDArray[np.int64], arm: NDArray[np.int64]) -> None:
        """:meth:`record` by the compiled kernels (:mod:`iapo_gym.agents._sequential_kernels`): the same bits."""
        n_max = self.n_max
        prompt = arm // n_max
        n = arm % n_max + 1
        drawn = runs.step_draws(live, prompt, n) if runs.strategy == "mv" else None
        if drawn is not None:  # a shared MV table: draw, score and record in one kernel
            table, query, u, start = drawn
            tab = kernels.mv_table(table, self.stats.split.obj_weights[:, 0], n_max)
            kernels.step_mv(self.kernel_state, tab, live, prompt, query, n, u, start)
            return
        for pulls, rows in runs.pull(live, prompt, n):
            gain, count, cost = nested_gains(pulls, self.stats.split.obj_weights, n_max)
            kernels.record(self.kernel_state, live[rows], prompt[rows], gain, count, cost)

    def record(self, runs: RunBatch, live: NDArray[np.int64], arm: NDArray[np.int64]) -> None:
        """Pull ``arm`` for every live run (one pull each) and refresh the touched ``(run, prompt)`` rows."""
        if self.jit:
            self.record_kernel(runs, live, arm)
            return
        st, n_max = self.stats, self.n_max
        prompt = arm // n_max
        old = st.count[live, prompt]  # (B, N_max) copy
        for pulls, rows in runs.pull(live, prompt, arm % n_max + 1):
            # One pull per run, so per (run, prompt) cell: NestedStats.add's per-cell sums are the
            # pull's own rows (0.0 + x == x); added here directly, the same bits without the
            # cell bookkeeping a batch of many pulls per cell needs.
            r, p = live[rows], prompt[rows]
            gain, count, cost = nested_gains(pulls, st.split.obj_weights, n_max)
            width = gain.shape[-1]
            st.gain[r, :, p, :width] += gain.transpose(1, 0, 2)
            st.cost[r, p, :width] += cost
            st.count[r, p, :width] += count
        new = st.count[live, prompt]
        self.total[live] += (new - old).sum(axis=1)
        self.n_unseen[live] -= np.count_nonzero((old == 0) & (new > 0), axis=1)
        self.countf.reshape(-1, self.p_n, n_max)[live, prompt] = new
        # the means of the touched rows under every context, exactly as NestedStats.means computes them
        split = st.split
        total = st.gain[live, :, prompt][:, split.group]  # (B, C, N_max)
        total -= split.cost_weight[None, :, None] * st.cost[live, prompt][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            total /= new[:, None]
        self.mean.reshape(-1, self.c_n, self.p_n, n_max)[live, :, prompt] = total


@dataclass(kw_only=True)
class SequentialAgent(BatchAgent):
    """Base of the online baselines: subclasses implement :meth:`choose`.

    Args:
        lcb: deployment rule. 0 (default, the paper's): the empirical-best arm per context;
            ``> 0``: the arm with the highest ``mean - lcb / sqrt(count)`` (count = nested blocks).
    """

    lcb: float = 0.0
    #: Whether :meth:`choose_kernel` reads ``1 / sqrt(count)`` (kept only when some rule needs it).
    kernel_needs_invsqrt: ClassVar[bool] = False

    def choose(self, step: Step) -> NDArray[np.int64]:
        """The flat arm each live run pulls at this step (a feasible one; see :class:`Step`)."""
        raise NotImplementedError

    def choose_kernel(self, step: KernelStep) -> NDArray[np.int64] | None:
        """:meth:`choose` by compiled kernels (the same arms, the same draws), or None where there is none.

        Used when the kernels are enabled (:func:`iapo_gym._jit.enabled`) and the class that
        defines :meth:`choose` also defines this method (a subclass that overrides only
        :meth:`choose` keeps its own rule).
        """
        return None

    def loop_rule(self) -> tuple[int, float] | None:
        """The rule for the compiled whole loop (:func:`iapo_gym.agents._sequential_kernels.run_steps`), or None.

        ``(rule, parameter)``: ``(kernels.UCB, c)``, ``(kernels.GREEDY, epsilon)`` or
        ``(kernels.SOFTMAX, tau)``. Used, like :meth:`choose_kernel`, only by the class that defines
        :meth:`choose`, and only where the runs share a majority-voting table
        (:meth:`iapo_gym.runs.RunBatch.loop_table`).
        """
        return None

    def _has_kernel(self, method: str = "choose_kernel") -> bool:
        mro = type(self).__mro__
        owner = next(c for c in mro if "choose" in c.__dict__)
        return owner is next(c for c in mro if method in c.__dict__) and owner is not SequentialAgent

    #: Softmax's whole loop leaves a step to numpy unless its winner leads by this much, relative
    #: (numba's ``log`` may differ from numpy's in the last bits: a few ulps, ~1e-15).
    softmax_margin: ClassVar[float] = 1e-9

    def _run_loop(self, runs: RunBatch, online: _OnlineStats, steps: NDArray[np.int64]) -> bool:
        """Every step of every run by the compiled loop, where it applies (else False and nothing done).

        The loop runs each run until its budget is spent or (UCB) its table of ``ln t`` is too
        short, drawing from the run's stream itself (its buffered values, then its PCG64 generator,
        stepped in the kernel and handed back: :meth:`iapo_gym.runs.RunStreams.pcg_states`); then the
        drawn completions are charged, the table extended, and the loop resumes. A Softmax step that
        numpy's ``log`` must settle is taken on the one-step path (:meth:`_step`). The same draws, in
        the same order, and the same arithmetic as the one-step path: the same policies.
        """
        spec = self.loop_rule() if self._has_kernel("loop_rule") else None
        table = runs.loop_table() if spec is not None else None
        if spec is None or table is None:
            return False
        rule, param = spec
        tab = kernels.mv_table(table, online.stats.split.obj_weights[:, 0], runs.n_max)
        kernels.install_pcg()
        jumps = kernels.pcg_jumps(1 + runs.n_prompts * runs.n_max)  # Softmax passes over its context and arm values at once
        pcg = np.zeros((runs.n_runs, 4), dtype=np.int64)
        upper, lower = kernels.gumbel_table()
        context_cdf = np.cumsum(runs.contexts.probs)  # what contexts.sample searches
        logs = np.empty(0)  # logs[t] = numpy's log(max(t, 1)), the one-step path's ln t
        drawn = np.zeros(runs.n_runs, dtype=np.int64)
        deferred = np.zeros(runs.n_runs, dtype=np.bool_)
        while (live := np.flatnonzero(runs.remaining > 0)).size:
            if rule == kernels.UCB and int(online.total[live].max()) >= logs.size:
                logs = np.log(np.maximum(np.arange(2 * int(online.total.max()) + 4096), 1))
            drawn[:] = 0
            deferred[:] = False
            pcg[live] = runs.streams.pcg_states(live)  # the kernel steps the runs' generators itself
            kernels.run_steps(
                online.kernel_state, tab, context_cdf, live, runs.streams.buffer, runs.streams.position, pcg, jumps,
                runs.budgets, runs.spent, drawn, steps, deferred, runs.train, runs.n_train, rule, float(param), logs,
                upper, lower, float(self.softmax_margin),
            )  # fmt: skip
            runs.streams.set_pcg_states(live, pcg[live])  # before anything else draws from them
            runs.charge_drawn(drawn)
            if deferred.any():
                self._step(runs, online, np.flatnonzero(deferred), steps, fast=True)
        return True

    def _step(
        self, runs: RunBatch, online: _OnlineStats, live: NDArray[np.int64], steps: NDArray[np.int64], fast: bool
    ) -> None:
        """One step of every run in ``live``: a context each, the rule's arm (compiled if ``fast``), the pulls."""
        rng: Any = runs.streams.rows(live)  # Generator-like (random, gumbel): row i draws from run live[i]
        ctx = np.asarray(runs.contexts.sample(rng, size=live.size), dtype=np.int64)
        limit = np.minimum(runs.remaining[live], runs.n_max)
        priority = online.kernel_state.priority
        arm = self.choose_kernel(KernelStep(online, live, ctx, limit, priority, rng)) if fast else None
        if arm is None:
            every = live.size == runs.n_runs  # all runs live: views instead of gathers
            arm = self.choose(
                Step(
                    mean=online.mean[live, ctx],
                    count=online.countf if every else online.countf[live],
                    total=online.total[live],
                    limit=limit,
                    n_unseen=online.n_unseen[live],
                    priority=priority if every else priority[live],
                    rng=rng,
                    n_max=runs.n_max,
                )
            )
        online.record(runs, live, arm)
        steps[live] += 1

    @staticmethod
    def argmax_tiebreak(score: NDArray[np.float64], priority: NDArray[np.float64]) -> NDArray[np.int64]:
        """Row-wise argmax of ``score`` (no NaN); among tied maxima the highest ``priority`` wins."""
        return argmax_tiebreak(score, priority)

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        s_n, p_n, n_max = runs.n_runs, runs.n_prompts, runs.n_max
        a_n = p_n * n_max
        priority = runs.streams.random_rows(np.arange(s_n), a_n)
        online = _OnlineStats(runs, priority)
        stats = online.stats
        steps = np.zeros(s_n, dtype=np.int64)
        fast = online.jit and self._has_kernel()
        if fast and self.kernel_needs_invsqrt:
            online.keep_invsqrt()
        if fast:
            self._run_loop(runs, online, steps)  # every step at once where it applies
        while (live := np.flatnonzero(runs.remaining > 0)).size:
            self._step(runs, online, live, steps, fast)
        active = np.ones((s_n, len(runs.contexts), a_n), dtype=bool)
        mean = stats.means()  # read only below: the deployment rule and the infos share it
        emp = mean.reshape(s_n, len(runs.contexts), a_n)
        if float(self.lcb) > 0:
            with np.errstate(divide="ignore"):
                mean = mean - float(self.lcb) / np.sqrt(stats.count[:, None])
        arms = best_arms(active, mean.reshape(active.shape))
        counts = stats.count.reshape(s_n, a_n)
        infos: list[dict[str, Any]] = [
            {
                "steps": int(steps[s]),
                "budget_used": int(runs.spent[s]),
                # per context: the deployed arm's empirical mean and its nested-block count
                "deployed_mean": emp[s, np.arange(arms.shape[1]), arms[s]].tolist(),
                "deployed_count": counts[s, arms[s]].tolist(),
            }
            for s in range(s_n)
        ]
        return table_policies(runs, arms, infos)
