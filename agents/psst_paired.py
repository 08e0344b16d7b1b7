"""PSST-Paired: PSST with query-controlled pulls on common query sets and paired elimination.

**This agent uses query-controlled pulls** (``uses_query_control = True``): it names the training
query of every pull (``IAPOEnv.pull(prompt, n, query=...)``), which a deployment can do because
it chooses which training queries it sends. In the paper every pull draws a fresh random query,
so most of the noise in comparing two prompts is *which queries each happened to get*; on the
released MATH table the per-query difference between the two best prompts has 13 to 33 times
less variance than two independent draws. Comparing arms on common queries removes that noise.

The structure is PSST's (:mod:`iapo_gym.agents.psst`): rounds, maximal-arm pulls, nested and cross-context
reuse, per-context halving, stockpiling, and the budget never exceeded. What changes:

* **Common query sets.** Each run walks a seeded random permutation of its train split
  cyclically (so queries are covered evenly: no query is used ``k + 1`` times before every query
  was used ``k`` times). Round ``r`` takes the next ``q_r = floor(avail_r / M_r)`` queries of that
  walk (``M_r = sum_p Nmax_r(p)``) and pulls **every** surviving prompt's maximal arm
  ``(p, Nmax_r(p))`` once on **each** of them. Every surviving prompt has therefore been pulled on
  exactly the same multiset of queries.
* **Paired statistics.** A pull of ``(p, N)`` on query ``x`` contributes, for every ``k <= N``, the
  mean of its ``floor(N / k)`` nested blocks -- one per-query estimate of ``Q_x(p, k)`` -- with
  weight one (:class:`PairedStats`). An arm's estimate is the equally weighted mean over its
  queries. Because the nested sizes shrink over rounds, an active arm ``(p, k)`` has ``k <=
  Nmax_r(p)`` in every earlier round, so every active arm's estimate averages over *the same*
  queries: ranking by these means is ranking by paired differences (the query effect cancels).
  PSST's per-block weighting would instead weight a prompt's early rounds (large ``N``: many
  blocks) differently from another prompt's, breaking the pairing.
* **Budget.** Round budgets are ``growth^r``-weighted shares of ``T`` (``growth = 1``: PSST's equal
  rounds), with PSST's carry-forward; a round that cannot afford one common query (``avail < M``)
  pulls nothing, carries its budget forward and does not halve. The remainder of the last round
  (``< M``) is **not** spent on a random subset of prompts (that would break the pairing); it is
  reported unspent in ``policy.info["unspent"]``. Never more than ``T``. Small budgets: a last
  round that cannot afford one common query of every maximal arm caps the pull sizes so that a
  few common queries fit (:func:`shrink_to_fit`) rather than spending nothing.
* **Elimination** is PSST's per-context halving on the paired means (bottom ``ceil(n / 2)`` of the
  active arms, keeping at least one); ties are broken by a seeded random jitter (paired means over
  few queries tie often, and a stable sort would favour low arm indices). The deployed arm is the
  surviving arm with the best mean.

:class:`TopKPaired` (registered as ``topk_paired``) first screens the prompts as Top-K does (PSST+K,
:mod:`iapo_gym.agents.topk`), but on common queries: every prompt at ``N = 1`` on the same
``floor(rho * T / |P|)`` queries; per context the ``k`` best prompts by paired mean stay. Its
trimming phase then continues the query walk with fresh statistics (the ``N = 1`` screening samples
would feed only the ``N = 1`` arms and so break the pairing).

Everything is vectorised over the seeds of a batch (``fit_many``): one permutation matrix
``(S, n_train)``, one sampler call per round and per bucket of pull sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit
from iapo_gym.agents._common import BatchAgent, CompactHalving, best_arms, halve, ranking_key, table_policies
from iapo_gym.agents._engine import NestedStats
from iapo_gym.agents._rounds import Rows, maximal_sizes, run_rounds
from iapo_gym.agents.base import Policy
from iapo_gym.agents.psst import n_rounds
from iapo_gym.runs import RunBatch, RunStreams
from iapo_gym.sampling import Pulls

__all__ = [
    "CommonQueries",
    "PSSTPaired",
    "PairedStats",
    "QuerySchedule",
    "TopKPaired",
    "round_budgets",
    "run_paired_trimming",
]


# ------------------------------------------------------------------------------- query control
class QuerySchedule:
    """Per run, a seeded random permutation of its train split, walked cyclically.

    ``take(count)`` returns the next ``count[s]`` train-split columns of every run ``s`` as a
    ragged pair ``(run (Q,), col (Q,))``; over a run's walk every query is used ``k`` or ``k + 1``
    times after any number of draws.
    """

    def __init__(self, n_train: NDArray[np.int64], streams: RunStreams) -> None:
        self.n_train = np.asarray(n_train, dtype=np.int64)
        width = int(self.n_train.max())
        key = np.full((self.n_train.size, width), np.inf)
        inside = np.arange(width)[None, :] < self.n_train[:, None]
        key[inside] = streams.random(self.n_train)  # each run's own stream, n_train[s] keys
        self.perm = np.argsort(key, axis=1)  # the first n_train[s] entries of row s: a permutation
        self.pos = np.zeros(self.n_train.size, dtype=np.int64)

    def take(self, count: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The next ``count[r]`` queries of each run ``r``'s walk, as ``(run, query)`` arrays."""
        count = np.asarray(count, dtype=np.int64)
        run = np.repeat(np.arange(count.size), count)
        step = np.arange(run.size) - np.repeat(np.cumsum(count) - count, count)
        col = self.perm[run, (self.pos[run] + step) % self.n_train[run]]
        self.pos = (self.pos + count) % self.n_train
        return run, col


# ------------------------------------------------------------------------------ paired tallies
class PairedStats(NestedStats):
    """Nested tallies with one unit of weight per pull (= per query) instead of per block.

    :class:`~iapo_gym.agents._engine.NestedStats` with ``weighting="query"``: for each ``k <= N`` a
    pull of ``(p, N)`` adds the MEAN of its ``floor(N / k)`` nested blocks (gain and cost) and a
    count of 1. ``means()`` is then each arm's average over the queries it was pulled on, each
    query weighted equally -- the paired estimator when all arms share their queries.
    """

    def __init__(self, n_runs: int, n_prompts: int, n_max: int, contexts: Any) -> None:
        super().__init__(n_runs, n_prompts, n_max, contexts, weighting="query")


# ------------------------------------------------------------------------------------- the loop
#: Common queries the last round aims for when it cannot afford one query of every maximal arm.
FALLBACK_QUERIES = 4


def shrink_to_fit(
    sizes: NDArray[np.int64], q: NDArray[np.int64], avail: NDArray[np.int64], n_max: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Small-budget fallback of the last round: cap the pull sizes of runs that afford no common query.

    A run with ``q = 0`` but budget left caps every surviving prompt's pull at the largest ``n``
    for which :data:`FALLBACK_QUERIES` common queries of ``min(Nmax(p), n)`` fit (at least
    ``n = 1``, then as many queries as fit), so small budgets still compare every surviving
    prompt on common queries instead of spending nothing. Returns the new ``(sizes, q)``.
    """
    need = (q == 0) & (sizes.sum(axis=1) > 0)
    if not need.any():
        return sizes, q
    caps = np.arange(1, n_max + 1)
    cost = np.minimum(sizes[:, :, None], caps[None, None, :]).sum(axis=1)  # (S, n_max): one query at cap n
    fits = cost * FALLBACK_QUERIES <= avail[:, None]
    cap = np.where(fits.any(axis=1), n_max - np.argmax(fits[:, ::-1], axis=1), 1)
    capped = np.where(sizes > 0, np.minimum(sizes, cap[:, None]), 0)
    q_cap = avail // np.maximum(capped.sum(axis=1), 1)
    sizes = np.where(need[:, None], capped, sizes)
    q = np.where(need, q_cap, q)
    return sizes, q


def round_budgets(budgets: NDArray[np.int64], rounds: int, growth: float) -> NDArray[np.int64]:
    """``(S, R)`` per-round budgets: ``floor(T * growth^r / sum_j growth^j)`` (``growth = 1``: ``floor(T / R)``)."""
    w = float(growth) ** np.arange(rounds, dtype=np.float64)
    share = w / w.sum()
    return np.floor(np.asarray(budgets, dtype=np.float64)[:, None] * share[None, :] + 1e-9).astype(np.int64)


@dataclass
class CommonQueries:
    """PSST-Paired's allocation for :func:`iapo_gym.agents._rounds.run_rounds`: maximal arms on common queries.

    A round affording ``q = floor(avail / M)`` common queries (0 below ``min_queries``; the last
    round falls back to :func:`shrink_to_fit`) pulls every surviving prompt's maximal arm on each
    of the next ``q`` queries of the run's walk; halving breaks ties by a seeded jitter.
    """

    runs: RunBatch
    stats: PairedStats
    active: NDArray[np.bool_]
    schedule: QuerySchedule
    min_queries: int = 1
    compact: CompactHalving | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # compiled halving on the tallies' arrays, jitter included (the same decisions as halve);
        # while the rounds run, the active arms live in its lists: call sync() when they end
        if _jit.enabled() and self.active.flags.c_contiguous:
            self.compact = CompactHalving(self.active, self.stats)

    def plan(self, avail: NDArray[np.int64], last: bool) -> tuple[NDArray[np.int64], Rows]:
        """``(q (S, 1), rows)``: every surviving prompt's maximal arm on each of ``q`` common queries."""
        avail1, n_max = avail[:, 0], self.runs.n_max
        union = None if self.compact is None else self.compact.live.reshape(self.runs.n_runs, -1, n_max)
        sizes = maximal_sizes(self.active, n_max, union)  # (S, P)
        m = sizes.sum(axis=1)
        q = np.where(m > 0, avail1 // np.maximum(m, 1), 0)
        q = np.where(q >= self.min_queries, q, 0)
        if last:
            sizes, q = shrink_to_fit(sizes, q, avail1, n_max)
        q_run, q_col = self.schedule.take(q)  # (Q,) one common query per row
        row_q, row_p = np.nonzero(sizes[q_run] > 0)  # every surviving prompt of the run on every query
        run_rows = q_run[row_q]
        return q[:, None], Rows(run_rows, row_p, sizes[run_rows, row_p], q_col[row_q])

    def record(self, pulls: Pulls, rows: Rows, sel: NDArray[np.int64]) -> None:
        """Query-weighted nested + cross-context tallies."""
        self.stats.add(pulls, rows.run[sel])

    def trim(self, groups: NDArray[np.bool_]) -> None:
        """Per-context halving on the paired means, ties broken by a seeded jitter.

        Paired means on few queries tie often, and a stable sort would favour low arm indices.
        """
        trim = groups[:, 0]
        rows = np.flatnonzero(trim)
        # the trimmed runs' next C * A uniforms each; only the active arms' ever enter a sum
        draws = self.runs.streams.random(self.active[0].size, rows).reshape(rows.size, *self.active.shape[1:])
        if self.compact is not None:
            self.compact.halve(trim, draws, 1e-9)
            return
        halve(self.active, JitteredMeans(self.stats, draws, rows, 1e-9), trim)  # the active arms' means only

    def sync(self) -> None:
        """Bring ``active`` up to date when the rounds end (the compiled halving keeps the arms in lists)."""
        if self.compact is not None:
            self.compact.sync()


@dataclass
class JitteredMeans:
    """Means of ``stats`` plus a fixed noise ``scale * draws[row of run]`` at the chosen arms, bit for bit.

    ``draws (len(runs), C, A)`` holds the uniforms of the runs ``runs`` (increasing); only arms of
    those runs are asked for. The noise of an arm is the product ``scale * u`` (the same bits as
    scaling the whole array first), added to its mean.
    """

    stats: NestedStats
    draws: NDArray[np.float64]
    runs: NDArray[np.int64]
    scale: float

    def _noise(self, run: NDArray[np.int64], context: NDArray[np.int64], arm: NDArray[np.int64]) -> NDArray[np.float64]:
        return self.scale * self.draws[np.searchsorted(self.runs, run), context, arm]

    def means_at(self, run: NDArray[np.int64], context: NDArray[np.int64], arm: NDArray[np.int64]) -> NDArray[np.float64]:
        """Means of the chosen arms (:meth:`NestedStats.means_at`) plus their noise (NaN where unseen)."""
        return self.stats.means_at(run, context, arm) + self._noise(run, context, arm)

    def ranked_means(
        self,
        idx: NDArray[np.int64],
        n_contexts: int,
        unseen: float,
        row_run: NDArray[np.int64] | None = None,
        row_ctx: NDArray[np.int64] | None = None,
    ) -> NDArray[np.float64]:
        """:meth:`means_at` of arms ``idx (R, n)`` of (run, context) rows, ``unseen`` where unseen (compiled means).

        The same bits as ``means_at`` with NaN replaced by ``unseen``: an unseen arm's ``unseen``
        (``-1e300``) plus a noise below ``1e-9`` rounds back to ``unseen``.
        """
        if row_run is None or row_ctx is None:
            rows = np.arange(idx.shape[0])
            row_run, row_ctx = rows // n_contexts, rows % n_contexts
        key = self.stats.ranked_means(idx, n_contexts, unseen, row_run, row_ctx)
        row = np.searchsorted(self.runs, row_run)  # each (run, context) row's run among the drawn ones
        _add_noise(key, self.draws.reshape(self.draws.shape[0], -1), row, row_ctx * self.draws.shape[2], idx, self.scale)
        return key


@_jit.kernel
def _add_noise(key, draws, row, offset, idx, scale):  # noqa: ANN001, ANN202
    """``key[r, j] += scale * draws[row[r], offset[r] + idx[r, j]]``: :meth:`JitteredMeans.means_at`'s product and sum."""
    for r in range(key.shape[0]):
        for j in range(key.shape[1]):
            key[r, j] += scale * draws[row[r], offset[r] + idx[r, j]]


def run_paired_trimming(
    runs: RunBatch,
    stats: PairedStats,
    active: NDArray[np.bool_],
    budgets: NDArray[np.int64],
    rounds: int,
    growth: float = 1.0,
    schedule: QuerySchedule | None = None,
    min_queries: int = 1,
) -> list[dict[str, Any]]:
    """PSST's loop with every round's pulls on one common query set per run (see the module docstring).

    :func:`iapo_gym.agents._rounds.run_rounds` with the :class:`CommonQueries` allocation.

    Args:
        runs: the batch (pulls are charged to it).
        stats: paired tallies, updated in place (stockpiling).
        active: ``(S, C, P * N_max)`` per-context active flags, trimmed in place.
        budgets: ``(S,)`` completions this phase may spend per run.
        rounds: ``R``.
        growth: ratio of consecutive round budgets (1: equal rounds).
        schedule: the runs' query walk (default: a fresh one from ``runs.streams``); continuing the
            walk of an earlier phase keeps the coverage of the train split even.
        min_queries: a round pulls only if it affords at least this many common queries
            (otherwise it carries its budget forward and does not halve).

    Returns one diagnostics dict per run.
    """
    plan = round_budgets(budgets, rounds, growth)
    schedule = schedule or QuerySchedule(runs.n_train, runs.streams)
    alloc = CommonQueries(runs, stats, active, schedule, int(min_queries))
    log = run_rounds(runs, alloc, np.asarray(budgets, dtype=np.int64)[:, None], plan[:, :, None])
    alloc.sync()
    unspent = budgets - log.used[:, 0]
    columns = zip(  # every run's numbers at once, as Python ints
        plan.tolist(), log.spent[:, :, 0].tolist(), log.units[:, :, 0].tolist(), log.halvings.tolist(), unspent.tolist(),
        np.count_nonzero(active, axis=-1).tolist(), strict=True,
    )  # fmt: skip
    return [
        {
            "rounds": rounds, "round_budgets": plan_s, "spent_per_round": spent, "queries_per_round": units,
            "halvings": halvings, "unspent": left, "survivors": survivors,
        }  # fmt: skip
        for plan_s, spent, units, halvings, left, survivors in columns
    ]


@dataclass
class PSSTPaired(BatchAgent):
    """PSST on common query sets with paired elimination (uses query-controlled pulls).

    Args:
        growth: ratio of consecutive round budgets (1.0: PSST's equal rounds; > 1 spends less in
            the early rounds, where every surviving prompt's ``N_max`` arm is expensive).
        rounds: number of rounds ``R`` (0: Algorithm 1's ``ceil(log2 |A|)`` over the arms in play).
        min_queries: a round pulls (and halves) only if it affords this many common queries.
        k: 0 (default) for no screening; otherwise a paired Top-``k`` screening first (see
            :class:`TopKPaired`).
        rho: share of the budget spent on the screening (``k > 0`` only).
        screen_n: ``N`` of the screening pulls (``k > 0`` only).
        reuse_warmup: keep the screening samples in the trimming phase. Default False: the
            screening pulls (``N = screen_n``) only feed arms ``(p, k <= screen_n)``, so reusing
            them would average those arms over more queries than the others and break the pairing.
    """

    growth: float = 1.0
    rounds: int = 0
    min_queries: int = 1
    k: int = 0
    rho: float = 0.2
    screen_n: int = 1
    reuse_warmup: bool = False
    name: ClassVar[str] = "psst_paired"
    uses_query_control: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not float(self.growth) > 0.0:
            raise ValueError(f"growth must be > 0; got {self.growth}")
        if int(self.rounds) < 0:
            raise ValueError(f"rounds must be >= 0 (0: ceil(log2 of the arm count)); got {self.rounds}")
        if int(self.min_queries) < 1:
            raise ValueError(f"min_queries must be >= 1; got {self.min_queries}")
        if int(self.k) < 0:
            raise ValueError(f"k must be >= 0 prompts (0: no screening); got {self.k}")
        if not 0.0 <= float(self.rho) < 1.0:
            raise ValueError(f"rho must lie in [0, 1); got {self.rho}")
        if int(self.screen_n) < 1:
            raise ValueError(f"screen_n must be >= 1; got {self.screen_n}")

    def _screen(self, runs: RunBatch, stats: PairedStats, schedule: QuerySchedule) -> NDArray[np.bool_]:
        """Paired Top-``k`` screening: every prompt at ``N = screen_n`` on the same queries; ``(S, C, P)`` kept."""
        s_n, p_n, n_max, c_n = runs.n_runs, runs.n_prompts, runs.n_max, len(runs.contexts)
        n0 = min(int(self.screen_n), n_max)
        warm = np.floor(float(self.rho) * runs.budgets).astype(np.int64)
        q_run, q_col = schedule.take(warm // (p_n * n0))
        run_rows = np.repeat(q_run, p_n)
        prompt_rows = np.tile(np.arange(p_n), q_run.size)
        for pulls, rows in runs.pull(run_rows, prompt_rows, np.full(run_rows.size, n0), np.repeat(q_col, p_n)):
            stats.add(pulls, run_rows[rows])
        # a prompt's score: its best arm (p, N <= screen_n); unseen prompts rank last, ties -> lower index
        key = ranking_key(np.ones((s_n, c_n, p_n, n0), bool), stats.means()[..., :n0]).max(axis=-1)
        top = np.argsort(-key, axis=-1, kind="stable")[..., : min(int(self.k), p_n)]
        keep = np.zeros((s_n, c_n, p_n), dtype=bool)
        np.put_along_axis(keep, top, True, axis=-1)
        return keep

    def fit_runs(self, runs: RunBatch) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        s_n, p_n, n_max, c_n = runs.n_runs, runs.n_prompts, runs.n_max, len(runs.contexts)
        stats = PairedStats(s_n, p_n, n_max, runs.contexts)
        schedule = QuerySchedule(runs.n_train, runs.streams)
        keep = np.ones((s_n, c_n, p_n), dtype=bool)
        screened = 0
        if int(self.k) > 0:
            keep = self._screen(runs, stats, schedule)
            screened = min(int(self.k), p_n)
            if not self.reuse_warmup:
                stats = PairedStats(s_n, p_n, n_max, runs.contexts)
        warm_spent = runs.spent.copy()
        active = np.repeat(keep[..., None], n_max, axis=-1).reshape(s_n, c_n, p_n * n_max)
        rounds = int(self.rounds) or n_rounds((screened or p_n) * n_max)
        infos = run_paired_trimming(
            runs, stats, active, runs.budgets - runs.spent, rounds, float(self.growth), schedule, int(self.min_queries)
        )
        arms = best_arms(active, stats.means().reshape(active.shape))
        for s, (info, used) in enumerate(zip(infos, runs.spent.tolist(), strict=True)):
            info["budget_used"] = used
            if screened:
                info.update(warmup_spent=int(warm_spent[s]), screened=[np.flatnonzero(row).tolist() for row in keep[s]])
        return table_policies(runs, arms, infos)


@dataclass
class TopKPaired(PSSTPaired):
    """Top-K screening (PSST+K) on common queries, then :class:`PSSTPaired` (uses query-controlled pulls).

    The screening pulls every prompt at ``N = screen_n`` (default 1) on the same
    ``floor(rho * T / (|P| * screen_n))`` queries of the run's walk and keeps, per context, the
    ``k`` prompts with the best paired mean; the trimming phase then continues the walk (fresh
    queries) with ``R = ceil(log2(k * N_max))`` rounds and, by default, fresh statistics.
    """

    k: int = 4
    name: ClassVar[str] = "topk_paired"
