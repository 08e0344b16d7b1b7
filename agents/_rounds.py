"""One round loop for the zoo's elimination agents, with a pluggable allocation.

PSST, Top-K (PSST+K), the neural agent's ranker, PSST-Paired and naive Sequential Halving share one
skeleton (paper Algorithm 1 and its ablations): ``R`` rounds with planned budgets, each round
spends what it can afford of its budget plus what earlier rounds left unspent (carry-forward; the
last round may spend everything left), pulls a set of rows, records them, and -- if it could pull
a whole allocation unit -- halves the active arms. :func:`run_rounds` is that skeleton; what
differs between the agents is the :class:`Allocation`:

* :class:`MaximalArms` (PSST, Top-K): each prompt's largest active ``N`` over the union of
  contexts, ``lambda = floor(avail / M)`` pulls each (Eq. 6), a random subset that fits in the last
  round; nested + cross-context reuse through a tally with ``add`` / ``means``.
* :class:`CommonQueries` (PSST-Paired, :mod:`iapo_gym.agents.psst_paired`): every surviving maximal arm
  on the same ``floor(avail / M)`` queries of the run's walk; query-weighted tallies.
* :class:`PerContext` (Sequential Halving, :mod:`iapo_gym.agents.halving`): one budget per
  (run, context), every active arm of a context pulled for that context only.

Budgets live per *group*: one group per run (``G = 1``), or one per (run, context) (``G = C``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit
from iapo_gym.agents._common import CompactHalving, active_index, halve, halve_compact
from iapo_gym.agents._engine import NestedStats, random_fit
from iapo_gym.runs import RunBatch, int_sums_by
from iapo_gym.sampling import Pulls

__all__ = ["Allocation", "MaximalArms", "RoundLog", "Rows", "run_rounds"]


@dataclass
class Rows:
    """The pulls of one round: run, prompt, ``n``, optional train-split column and budget group of each row."""

    run: NDArray[np.int64]
    prompt: NDArray[np.int64]
    n: NDArray[np.int64]
    col: NDArray[np.int64] | None = None
    group: NDArray[np.int64] | None = None  # None: every row in group 0 of its run
    ragged: bool = False  # the recorder reads the pulls unpadded (RunBatch.pull's ``ragged``)


class Allocation(Protocol):
    """What a round of :func:`run_rounds` pulls, how pulls are recorded and how arms are trimmed."""

    def plan(self, avail: NDArray[np.int64], last: bool) -> tuple[NDArray[np.int64], Rows]:
        """``(units (S, G), rows)``: allocation units the round affords per group and its pulls.

        ``avail (S, G)`` is each group's budget this round; rows must fit it. A group halves after
        the round iff ``units >= 1``.
        """
        ...

    def record(self, pulls: Pulls, rows: Rows, sel: NDArray[np.int64]) -> None:
        """Record ``pulls``, the drawn rows ``sel`` of ``rows``."""
        ...

    def trim(self, groups: NDArray[np.bool_]) -> None:
        """Halve the active arms of the groups where ``groups (S, G)`` is True."""
        ...


@dataclass
class RoundLog:
    """What :func:`run_rounds` did.

    Attributes:
        spent, units: ``(S, R, G)`` completions spent and allocation units afforded per round.
        used: ``(S, G)`` completions spent in all.
        halvings: ``(S,)`` rounds after which every group of the run halved.
    """

    spent: NDArray[np.int64]
    units: NDArray[np.int64]
    used: NDArray[np.int64]
    halvings: NDArray[np.int64]


def run_rounds(runs: RunBatch, alloc: Allocation, budgets: NDArray[np.int64], plan: NDArray[np.int64]) -> RoundLog:
    """The elimination skeleton: planned rounds, carry-forward, pulls, records, halvings.

    Args:
        runs: the batch (pulls are charged to it).
        alloc: the agent's allocation (:class:`Allocation`).
        budgets: ``(S, G)`` completions this phase may spend per group.
        plan: ``(S, R, G)`` planned budget of each round. A round may spend its plan plus what
            earlier rounds left (carry-forward); the last round may spend everything left.

    Returns the :class:`RoundLog`.
    """
    s_n, rounds, g_n = plan.shape
    used = np.zeros((s_n, g_n), dtype=np.int64)
    carry = np.zeros((s_n, g_n), dtype=np.int64)
    log = RoundLog(
        np.zeros((s_n, rounds, g_n), np.int64), np.zeros((s_n, rounds, g_n), np.int64), used, np.zeros(s_n, np.int64)
    )
    for r in range(rounds):
        last = r == rounds - 1
        avail = budgets - used if last else plan[:, r] + carry
        units, rows = alloc.plan(avail, last)
        before = runs.spent.copy()
        for pulls, sel in runs.pull(rows.run, rows.prompt, rows.n, rows.col, rows.ragged):
            alloc.record(pulls, rows, sel)
        if rows.group is None and g_n == 1:  # one group per run: what the round charged each run
            spent = (runs.spent - before)[:, None]
        else:  # every row was pulled: the completions of each group's rows, summed once per round
            slot = rows.run * g_n if rows.group is None else rows.run * g_n + rows.group
            spent = int_sums_by(slot, np.asarray(rows.n, dtype=np.int64), s_n * g_n).reshape(s_n, g_n)
        used += spent
        carry = avail - spent
        log.spent[:, r], log.units[:, r] = spent, units
        trim = units >= 1
        if trim.any():
            alloc.trim(trim)
            log.halvings += trim.all(axis=1)
    return log


def live_arms(active: NDArray[np.bool_], n_max: int) -> NDArray[np.bool_]:
    """``(S, P, n_max)`` the arms active in some context of each run (the union over contexts)."""
    s, _, a = active.shape
    return active.any(axis=1).reshape(s, a // n_max, n_max)


def maximal_sizes(active: NDArray[np.bool_], n_max: int, union: NDArray[np.bool_] | None = None) -> NDArray[np.int64]:
    """``(S, P)`` each prompt's largest active N over the union of contexts (0: prompt eliminated).

    ``union`` is :func:`live_arms` of ``active`` when the caller has it already.
    """
    union = live_arms(active, n_max) if union is None else union
    has = union.any(axis=-1)
    top = n_max - np.argmax(union[..., ::-1], axis=-1)
    return np.where(has, top, 0).astype(np.int64)


class Tally(Protocol):
    """Statistics fed by pulls and read as per-context means (:class:`iapo_gym.agents._engine.NestedStats`)."""

    def add(self, pulls: Pulls, run: NDArray[np.int64]) -> None: ...  # noqa: D102

    def means(self) -> NDArray[np.float64]: ...  # noqa: D102


@dataclass
class MaximalArms:
    """PSST's allocation (Eq. 6): every surviving prompt's maximal arm, ``floor(avail / M)`` pulls each.

    Args:
        runs: the batch.
        stats: the tallies (any object with ``add(pulls, run)`` and ``means()``).
        active: ``(S, C, P * N_max)`` per-context active flags, trimmed in place.
    """

    runs: RunBatch
    stats: Tally
    active: NDArray[np.bool_]
    _idx: NDArray[np.int64] | None = field(default=None, init=False, repr=False)
    _live: NDArray[np.bool_] | None = field(default=None, init=False, repr=False)
    compact: CompactHalving | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # compiled halving on the tallies' arrays (the same decisions as halve / halve_compact)
        if isinstance(self.stats, NestedStats) and _jit.enabled() and self.active.flags.c_contiguous:
            self.compact = CompactHalving(self.active, self.stats)

    def plan(self, avail: NDArray[np.int64], last: bool) -> tuple[NDArray[np.int64], Rows]:
        """``lambda`` pulls of each maximal arm; the last round adds a random subset that fits."""
        runs, avail1 = self.runs, avail[:, 0]
        if self.compact is not None:  # kept up to date by its halvings
            union = self.compact.live.reshape(runs.n_runs, -1, runs.n_max)
        else:
            union = live_arms(self.active, runs.n_max)
        # arms trimmed in every context are never read again: the tallies need not score their blocks
        self._live = union if isinstance(self.stats, NestedStats) and not bool(union.all()) else None
        if _jit.enabled() and union.flags.c_contiguous:  # the same rows in one compiled pass
            lam, m, sizes, cells, rows = _maximal_sizes(union, np.ascontiguousarray(avail1, dtype=np.int64))
            # numpy allocates the outputs, three rows of one block: it asks the kernel for huge pages
            # from 4 MiB on (numba's allocator never does), which one block reaches at a third of the
            # rows three arrays need, so long rounds (TRIPLE's: one row per completion) do not pay a
            # page fault per 4 KiB of rows (a 200-run TRIPLE batch on MATH at 5,000: 6,950 -> 2,200 faults)
            cell_run, cell_prompt, cell_n = np.empty((3, cells), dtype=np.int64)
            run_rows, prompt_rows, n_rows = np.empty((3, rows), dtype=np.int64)
            _maximal_rows(sizes, lam, cell_run, cell_prompt, cell_n, run_rows, prompt_rows, n_rows)
        else:
            sizes = maximal_sizes(self.active, runs.n_max, union)  # (S, P)
            m = sizes.sum(axis=1)
            lam = np.where(m > 0, avail1 // np.maximum(m, 1), 0)
            cell_run, cell_prompt = np.nonzero(sizes)
            cell_n = sizes[cell_run, cell_prompt]
            reps = lam[cell_run]
            run_rows, prompt_rows, n_rows = (np.repeat(x, reps) for x in (cell_run, cell_prompt, cell_n))
        if last:
            keys = runs.streams.random(np.bincount(cell_run, minlength=runs.n_runs))  # cells are run-major
            extra = random_fit(cell_run, cell_n, avail1 - lam * m, keys)
            if _jit.enabled():  # each run's extra pulls right after its other rows: the request stays run-major
                size = run_rows.size + int(np.count_nonzero(extra))
                out = tuple(np.empty((3, size), dtype=np.int64))  # one block, as above
                _with_extras(lam, cell_run, cell_prompt, cell_n, extra, *out)
                run_rows, prompt_rows, n_rows = out
            else:  # appended (RunBatch.pull sorts each size class by run, stably: the same draws)
                run_rows = np.concatenate([run_rows, cell_run[extra]])
                prompt_rows = np.concatenate([prompt_rows, cell_prompt[extra]])
                n_rows = np.concatenate([n_rows, cell_n[extra]])
        # the compiled tallies read each pull unpadded: the round's size classes may share calls
        ragged = self.compact is not None and isinstance(self.stats, NestedStats) and self.stats.weighting == "block"
        return lam[:, None], Rows(run_rows, prompt_rows, n_rows, ragged=ragged)

    def record(self, pulls: Pulls, rows: Rows, sel: NDArray[np.int64]) -> None:
        """Nested + cross-context reuse: every block of every pull under every context.

        With :class:`~iapo_gym.agents._engine.NestedStats`, only the blocks of arms still active in
        some context of the run are scored (``live``): the others are never read again (halving
        and the deployed arm read active arms only), so no decision changes.
        """
        if self._live is not None:
            self.stats.add(pulls, rows.run[sel], live=self._live)  # type: ignore[call-arg]
        else:
            self.stats.add(pulls, rows.run[sel])

    def trim(self, groups: NDArray[np.bool_]) -> None:
        """Per-context halving on the empirical means.

        When every run halves, every (run, context) holds the same number of active arms and the
        tallies give means of chosen arms (``means_at``), only the active arms' means are computed
        (:func:`~iapo_gym.agents._common.halve_compact`, the same decision); their indices are kept
        between rounds (the allocation owns ``active`` while the loop runs). Otherwise
        :func:`~iapo_gym.agents._common.halve` computes the active arms' means of the trimmed runs.
        """
        if self.compact is not None:
            self.compact.halve(groups[:, 0])
            return
        lazy = hasattr(self.stats, "means_at")
        if bool(groups[:, 0].all()) and lazy:
            idx = self._idx if self._idx is not None else active_index(self.active)
            if idx is not None:
                self._idx = halve_compact(self.active, idx, self.stats)  # type: ignore[arg-type]
                return
        self._idx = None
        halve(self.active, self.stats if lazy else self.stats.means().reshape(self.active.shape), groups[:, 0])  # type: ignore[arg-type]


@_jit.kernel
def _maximal_sizes(union, avail):  # noqa: ANN001, ANN202
    """The counts of :meth:`MaximalArms.plan`'s rows (compiled): ``(lam, m, sizes, cells, rows)``.

    ``union (S, P, N_max)`` the arms live in some context of each run, ``avail (S,)`` each run's
    budget. ``sizes (S, P)`` is :func:`maximal_sizes` (a prompt's largest live ``N``, 0 if none),
    ``m (S,)`` its row sums ``M_s``, ``lam[s] = avail[s] // M_s`` (0 where ``M_s = 0``); ``cells``
    counts the nonzero sizes and ``rows`` the cells' rows, each cell repeated ``lam`` times.
    """
    s_n, p_n, n_max = union.shape
    sizes = np.zeros((s_n, p_n), dtype=np.int64)
    lam = np.zeros(s_n, dtype=np.int64)
    m_all = np.zeros(s_n, dtype=np.int64)
    cells = 0
    rows = 0
    for s in range(s_n):
        m = 0
        here = 0
        for p in range(p_n):
            for k in range(n_max - 1, -1, -1):
                if union[s, p, k]:
                    sizes[s, p] = k + 1
                    m += k + 1
                    here += 1
                    break
        m_all[s] = m
        if m > 0:
            lam[s] = avail[s] // m
        cells += here
        rows += here * lam[s]
    return lam, m_all, sizes, cells, rows


@_jit.kernel
def _maximal_rows(sizes, lam, cell_run, cell_prompt, cell_n, run_rows, prompt_rows, n_rows):  # noqa: ANN001, ANN202
    """Fill :meth:`MaximalArms.plan`'s cells and rows (compiled twin of ``np.nonzero`` and ``np.repeat``).

    A cell is a (run, prompt) with ``sizes[s, p] > 0``, run-major; ``cell_n`` its size; its row
    ``(s, p, size)`` is repeated ``lam[s]`` times, in cell order. The outputs are sized by
    :func:`_maximal_sizes`.
    """
    s_n, p_n = sizes.shape
    i = 0
    j = 0
    for s in range(s_n):
        for p in range(p_n):
            k = sizes[s, p]
            if k == 0:
                continue
            cell_run[i], cell_prompt[i], cell_n[i] = s, p, k
            i += 1
            end = j + lam[s]
            for t in range(j, end):  # a constant fill per array: each vectorises
                run_rows[t] = s
            for t in range(j, end):
                prompt_rows[t] = p
            for t in range(j, end):
                n_rows[t] = k
            j = end


@_jit.kernel
def _with_extras(lam, cell_run, cell_prompt, cell_n, extra, run_rows, prompt_rows, n_rows):  # noqa: ANN001, ANN202
    """The last round's rows, run-major: each run's cells ``lam`` times each (cell order), then its ``extra`` cells once.

    The outputs hold ``sum(lam[cell_run]) + count(extra)`` rows. Within each size class a run's rows
    keep the order they have when the extra rows are appended to the whole request and each class
    is sorted by run stably (:meth:`~iapo_gym.runs.RunBatch.pull`'s calls), so every run draws the
    same values for the same rows; one run-major request lets those calls merge (``ragged``).
    """
    j = 0
    lo = 0
    n_cells = cell_run.shape[0]
    while lo < n_cells:
        s = cell_run[lo]
        hi = lo
        while hi < n_cells and cell_run[hi] == s:
            hi += 1
        for i in range(lo, hi):
            for _ in range(lam[s]):
                run_rows[j], prompt_rows[j], n_rows[j] = s, cell_prompt[i], cell_n[i]
                j += 1
        for i in range(lo, hi):
            if extra[i]:
                run_rows[j], prompt_rows[j], n_rows[j] = s, cell_prompt[i], cell_n[i]
                j += 1
        lo = hi


def equal_rounds(budgets: NDArray[np.int64], rounds: int) -> NDArray[np.int64]:
    """``(S, R, G)`` plan of ``floor(T / R)`` per round from ``budgets (S, G)``."""
    return np.repeat((budgets // rounds)[:, None, :], rounds, axis=1)


def trimming_info(
    log: RoundLog,
    active: NDArray[np.bool_],
    rounds: int,
    plan: NDArray[np.int64],
    survivors: NDArray[np.int64] | None = None,
) -> list[dict[str, Any]]:
    """PSST's per-run diagnostics: rounds, round budget, spend per round, halvings, survivors per context.

    ``survivors (S, C)``: the active arms per context when the caller has counted them already.
    """
    if survivors is None:
        survivors = np.count_nonzero(active, axis=-1)
    columns = zip(  # every run's numbers at once, as Python ints
        plan[:, 0, 0].tolist(), log.spent[:, :, 0].tolist(), log.halvings.tolist(), survivors.tolist(), strict=True,
    )  # fmt: skip
    return [
        {"rounds": rounds, "round_budget": budget, "spent_per_round": spent, "halvings": halvings, "survivors": survivors}
        for budget, spent, halvings, survivors in columns
    ]
