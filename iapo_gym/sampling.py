"""Vectorised draws of LLM completions from an outcome table.

``Pulls`` is the one record of raw outcomes that the sampler, the environment, the live backends
and the utilities exchange. A batch of ``B`` pulls is padded to a common width ``L``; ``mask``
marks the real completions (the first ``n[b]`` of row ``b``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from iapo_gym import _jit

if TYPE_CHECKING:
    from iapo_gym.tables.format import OutcomeTable


#: A pending inverse-CDF draw ``(u, start, cdf, cdf_p, cdf_q)`` (see :class:`Pulls`).
PendingDraw = tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]


class Pulls:
    """Raw outcomes of ``B`` pulls, padded to width ``L`` (read-only after construction).

    Attributes:
        strategy: ``"mv"`` or ``"bon"``.
        prompt, n, query: ``(B,)`` int64 prompt index, completions drawn, query index.
        outcome: ``(B, L)`` int64, the answer category (MV) or outcome index (BoN); -1 where masked.
        values: ``(B, L, K)`` float64 objective values per completion (MV: 1.0 when the answer is
            the gold one); 0 where masked.
        cost: ``(B, L)`` float64 cost of each completion; 0 where masked.
        gold: ``(B,)`` int64 gold category (MV); -1 for BoN.
        mask: ``(B, L)`` bool, True for real completions.
        n_categories: answer categories ``A`` (MV), outcomes ``M`` (BoN).
        unit_cost: ``(B,)`` cost of every completion of each pull when it is one constant per pull
            (table draws: the table's per-(prompt, query) cost), else None (live pulls: costs vary).

    ``values`` and ``cost`` may be passed as None when they follow from the rest (MV values from
    ``outcome == gold``; costs from ``unit_cost``): they are then built on first access only, so
    a consumer that never reads them (the nested-block statistics) never pays for them. Likewise
    ``outcome`` and ``mask`` may be None when ``draw`` holds the inverse-CDF draw that gives them
    (``(u, start, cdf, cdf_p, cdf_q)``: row ``b``'s completion ``j`` is the outcome of
    ``u[start[b] + j]`` under the cumulative probabilities ``cdf[cdf_p[b], cdf_q[b]]``, a table's
    whole ``(P, Q, A)`` array read in place or ``(B, 1, A)`` rows; :func:`draw_pulls`): a compiled
    consumer may read the draw itself (:attr:`pending_draw`) instead of a materialised ``(B, L)``
    outcome array.
    """

    __slots__ = (
        "strategy", "prompt", "n", "query", "_outcome", "_values", "_cost", "gold", "_mask", "n_categories",
        "unit_cost", "_draw", "_width",
    )

    def __init__(
        self,
        strategy: str,
        prompt: NDArray[np.int64],
        n: NDArray[np.int64],
        query: NDArray[np.int64],
        outcome: NDArray[np.int64] | None,
        values: NDArray[np.float64] | None,
        cost: NDArray[np.float64] | None,
        gold: NDArray[np.int64],
        mask: NDArray[np.bool_] | None,
        n_categories: int,
        unit_cost: NDArray[np.float64] | None = None,
        draw: PendingDraw | None = None,
    ) -> None:
        if values is None and strategy != "mv":
            raise ValueError("best-of-N pulls need their values (only MV values follow from outcome and gold)")
        if cost is None and unit_cost is None:
            raise ValueError("pulls need cost, or unit_cost to derive it from")
        if (outcome is None or mask is None) and draw is None:
            raise ValueError("pulls need outcome and mask, or the draw to derive them from")
        self.strategy, self.prompt, self.n, self.query = strategy, prompt, n, query
        self._outcome, self._mask, self._draw = outcome, mask, draw if outcome is None or mask is None else None
        self._values, self._cost = values, cost
        self.gold, self.n_categories, self.unit_cost = gold, n_categories, unit_cost
        self._width = int(mask.shape[1]) if mask is not None else int(n.max(initial=0)) if n.size else 0

    def _materialise(self) -> None:
        assert self._draw is not None
        u, start, cdf, cdf_p, cdf_q = self._draw
        self._outcome, self._mask, _ = _outcomes(u, cdf[cdf_p, cdf_q], self.n, start)
        self._draw = None

    @property
    def outcome(self) -> NDArray[np.int64]:
        """``(B, L)`` int64 answer category (MV) or outcome index (BoN); -1 where masked."""
        if self._outcome is None:
            self._materialise()
        return self._outcome  # type: ignore[return-value]

    @property
    def mask(self) -> NDArray[np.bool_]:
        """``(B, L)`` bool, True for real completions."""
        if self._mask is None:
            self._materialise()
        return self._mask  # type: ignore[return-value]

    @property
    def pending_draw(self) -> PendingDraw | None:
        """``(u, start, cdf, cdf_p, cdf_q)`` while ``outcome`` is not materialised yet (see the class docstring), else None."""
        return self._draw

    @property
    def values(self) -> NDArray[np.float64]:
        """``(B, L, K)`` objective values per completion (built on first access for MV)."""
        if self._values is None:
            self._values = ((self.outcome == self.gold[:, None]) & self.mask)[:, :, None].astype(np.float64)
        return self._values

    @property
    def cost(self) -> NDArray[np.float64]:
        """``(B, L)`` cost per completion, 0 where masked (built on first access from ``unit_cost``)."""
        if self._cost is None:
            assert self.unit_cost is not None
            self._cost = np.where(self.mask, self.unit_cost[:, None], 0.0)
        return self._cost

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def __repr__(self) -> str:
        return f"Pulls({self.strategy!r}, B={len(self)}, L={self.width})"

    @property
    def width(self) -> int:
        """Padded width ``L``."""
        return self._width

    @property
    def completions(self) -> int:
        """Total completions in the batch (its budget charge)."""
        return int(self.n.sum())


def sample_pulls(
    table: OutcomeTable,
    prompt: NDArray[np.integer],
    query: NDArray[np.integer],
    n: NDArray[np.integer],
    rng: np.random.Generator,
    width: int | None = None,
) -> Pulls:
    """Draw ``n[b]`` i.i.d. completions of ``(prompt[b], query[b])`` for every pull ``b`` at once.

    Inverse-CDF sampling: one uniform per completion slot, compared with the row's cumulative
    outcome probabilities. The uniforms of a batch are drawn in one call, so a given ``rng`` state
    always yields the same outcomes, bit for bit.

    Args:
        table: the outcome table.
        prompt: ``(B,)`` prompt indices.
        query: ``(B,)`` query row indices into the table.
        n: ``(B,)`` completions per pull (or one count for every pull).
        rng: the generator that drives the draw.
        width: padded width ``L`` (default ``n.max()``); must be ``>= n.max()``.
    """
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    query = np.asarray(query, dtype=np.int64).reshape(-1)
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), prompt.shape).copy()
    if not (prompt.shape == query.shape == n.shape):
        raise ValueError(f"prompt, query and n must have one entry per pull; got {prompt.shape}, {query.shape}, {n.shape}")
    if prompt.size and (prompt.min() < 0 or prompt.max() >= table.n_prompts):
        raise ValueError(f"prompt indices must lie in 0..{table.n_prompts - 1}")
    if query.size and (query.min() < 0 or query.max() >= table.n_queries):
        raise ValueError(f"query indices must lie in 0..{table.n_queries - 1}")
    if n.size and (n.min() < 1 or n.max() > table.n_max):
        raise ValueError(f"N must lie in 1..{table.n_max}")
    L = int(n.max(initial=0)) if width is None else int(width)
    if n.size and L < n.max():
        raise ValueError(f"width {L} is smaller than the largest N {n.max()}")
    return _draw(table, prompt, query, n, rng, L)


def _draw(
    table: OutcomeTable,
    prompt: NDArray[np.int64],
    query: NDArray[np.int64],
    n: NDArray[np.int64],
    rng: np.random.Generator,
    L: int,
) -> Pulls:
    """:func:`sample_pulls` on arguments already checked (``(B,)`` int64 arrays, ``L >= n.max()``)."""
    return draw_pulls(table, prompt, query, n, rng.random((prompt.size, L)))


def draw_pulls(
    table: OutcomeTable,
    prompt: NDArray[np.int64],
    query: NDArray[np.int64],
    n: NDArray[np.int64],
    u: NDArray[np.float64],
    start: NDArray[np.int64] | None = None,
    *,
    gold: NDArray[np.int64] | None = None,
    unit_cost: NDArray[np.float64] | None = None,
) -> Pulls:
    """Pulls from given uniforms: completion ``j < n[b]`` of row ``b`` is the inverse-CDF draw of ``u[b, j]``.

    The engine of :func:`sample_pulls`, for callers that own the random streams
    (:class:`iapo_gym.runs.RunBatch` draws each run's uniforms from that run's stream). Arguments are
    not checked: ``(B,)`` int64 indices inside the table, ``u`` of shape ``(B, L)`` with
    ``L >= n.max()``; entries of ``u`` past ``n[b]`` are ignored. With ``start (B,)``, ``u`` is
    flat instead and completion ``j`` of row ``b`` draws ``u[start[b] + j]`` (no padded copy).
    ``gold`` and ``unit_cost`` (majority voting, ``(B,)``), when the caller has gathered them already,
    must be the table's ``gold[query]`` (as int64) and ``cost[prompt, query]``.
    """
    mv = table.strategy == "mv"
    if gold is None:
        gold = table.mv_arrays()[1][query].astype(np.int64) if mv else np.full(prompt.size, -1, dtype=np.int64)
    if unit_cost is None:
        unit_cost = table.cost[prompt, query]
    if mv and start is not None and _jit.enabled():  # outcomes on first access: the compiled tallies read the draw
        whole = _cdf_table(table)  # read in place at (prompt, query) when the table keeps it: no per-row copy
        draw = (u, start, whole, prompt, query) if whole is not None else _row_draw(u, start, _cdf_rows(table, prompt, query))
        return Pulls(table.strategy, prompt, n, query, None, None, None, gold, None, table.n_outcomes,
                     unit_cost=unit_cost, draw=draw)
    cdf = _cdf_rows(table, prompt, query)
    outcome, mask, full = _outcomes(u, cdf, n, start)
    values: NDArray[np.float64] | None = None  # MV: built on first access (from outcome == gold)
    if not mv and _jit.enabled():  # the gather and the zeros past each row's n in one pass
        table_values = table.bon_arrays()[0]
        values = np.empty(outcome.shape + table_values.shape[-1:], dtype=table_values.dtype)
        _bon_values_kernel(values, 0, prompt.size, table_values, prompt, query, outcome, n)
    elif not mv:
        values = table.bon_arrays()[0][prompt[:, None], query[:, None], np.maximum(outcome, 0)]  # (B, L, K)
        if not full:
            values = np.where(mask[:, :, None], values, 0.0)
    return Pulls(table.strategy, prompt, n, query, outcome, values, None, gold, mask, table.n_outcomes,
                 unit_cost=unit_cost)


def draw_pulls_worlds(
    tables: list[OutcomeTable],
    bounds: NDArray[np.int64],
    prompt: NDArray[np.int64],
    query: NDArray[np.int64],
    local: NDArray[np.int64],
    n: NDArray[np.int64],
    u: NDArray[np.float64],
    start: NDArray[np.int64] | None = None,
    arrays: WorldArrays | None = None,
    world_of: NDArray[np.int64] | None = None,
) -> Pulls:
    """:func:`draw_pulls` for rows that come from several tables of one shape (one world per run).

    Rows ``bounds[j]:bounds[j + 1]`` are drawn from ``tables[j]`` at its query ``local``; the
    pulls record ``query`` (the caller's index, e.g. into the worlds stacked along the query axis).
    The same outcomes, values and costs as :func:`draw_pulls` on the stacked tables, without
    building the stack: only the rows' own entries are gathered from each world.

    ``arrays`` (best-of-N, compiled path): the worlds' arrays kept by the caller (:class:`WorldArrays`),
    ``tables[j]`` being its world ``world_of[j]``: one kernel call draws every segment.
    """
    first = tables[0]
    mv = first.strategy == "mv"
    b = prompt.size
    if not mv and start is not None and arrays is not None and world_of is not None and _jit.enabled():
        width = int(n.max(initial=0)) if n.size else 0
        outcome = np.empty((b, width), dtype=np.int64)
        mask = np.empty((b, width), dtype=np.bool_)
        drawn = np.empty((b, width, arrays.n_objectives), dtype=np.float64)
        unit_cost = np.empty(b)
        _bon_worlds_kernel(np.asarray(bounds, dtype=np.int64), np.asarray(world_of, dtype=np.int64), arrays.cdf, arrays.cost,
                           arrays.values, prompt, local, n, u, start, outcome, mask, drawn, unit_cost)  # fmt: skip
        gold = np.full(b, -1, dtype=np.int64)
        return Pulls(first.strategy, prompt, n, query, outcome, drawn, None, gold, mask, first.n_outcomes, unit_cost=unit_cost)
    ends = np.append(bounds[1:], b).tolist()
    segments = list(zip(tables, bounds.tolist(), ends, strict=True))
    if not mv and start is not None and _jit.enabled():
        cdfs = [_cdf_table(t) for t in tables]
        if all(c is not None for c in cdfs):  # one kernel per world: draws, values and costs of its rows
            width = int(n.max(initial=0)) if n.size else 0
            table_values = first.bon_arrays()[0]
            outcome = np.empty((b, width), dtype=np.int64)
            mask = np.empty((b, width), dtype=np.bool_)
            drawn = np.empty((b, width, table_values.shape[-1]), dtype=table_values.dtype)
            unit_cost = np.empty(b)
            for (t, lo, hi), cdf_t in zip(segments, cdfs, strict=True):
                _bon_world_rows_kernel(lo, hi, cdf_t, t.cost, t.bon_arrays()[0], prompt, local, n, u, start, outcome, mask,
                                       drawn, unit_cost)  # fmt: skip
            gold = np.full(b, -1, dtype=np.int64)
            return Pulls(first.strategy, prompt, n, query, outcome, drawn, None, gold, mask, first.n_outcomes,
                         unit_cost=unit_cost)  # fmt: skip
    cdf = np.empty((b, first.n_outcomes))
    unit_cost = np.empty(b)
    gold = np.full(b, -1, dtype=np.int64)
    for t, lo, hi in segments:
        p, q = prompt[lo:hi], local[lo:hi]
        cdf[lo:hi] = _cdf_rows(t, p, q)
        unit_cost[lo:hi] = t.cost[p, q]
        if mv:
            gold[lo:hi] = t.mv_arrays()[1][q]
    if mv and start is not None and _jit.enabled():  # outcomes on first access (see draw_pulls)
        return Pulls(first.strategy, prompt, n, query, None, None, None, gold, None, first.n_outcomes,
                     unit_cost=unit_cost, draw=_row_draw(u, start, cdf))
    outcome, mask, full = _outcomes(u, cdf, n, start)
    values: NDArray[np.float64] | None = None
    if not mv:
        table_values = first.bon_arrays()[0]
        if _jit.enabled():  # one pass per world: the real completions' values, 0.0 past each row's n
            values = np.empty(outcome.shape + table_values.shape[-1:], dtype=table_values.dtype)
            for t, lo, hi in segments:
                _bon_values_kernel(values, lo, hi, t.bon_arrays()[0], prompt, local, outcome, n)
            return Pulls(first.strategy, prompt, n, query, outcome, values, None, gold, mask, first.n_outcomes,
                         unit_cost=unit_cost)
        values = np.empty(outcome.shape + table_values.shape[-1:], dtype=table_values.dtype)
        pos = np.maximum(outcome, 0)
        for t, lo, hi in segments:
            values[lo:hi] = t.bon_arrays()[0][prompt[lo:hi, None], local[lo:hi, None], pos[lo:hi]]
        if not full:
            values = np.where(mask[:, :, None], values, 0.0)
    return Pulls(first.strategy, prompt, n, query, outcome, values, None, gold, mask, first.n_outcomes,
                 unit_cost=unit_cost)


def _outcomes(
    u: NDArray[np.float64], cdf: NDArray[np.float64], n: NDArray[np.int64], start: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.int64], NDArray[np.bool_], bool]:
    """Inverse-CDF outcome of each uniform (``-1`` past each row's ``n``), the mask of real ones, whether all are real.

    ``u (B, L)``, or flat with ``start (B,)``: row ``b``'s uniforms are ``u[start[b] : start[b] + n[b]]``
    (the compiled kernel reads them in place; the numpy path gathers them into ``(B, n.max())``).
    """
    if start is not None:
        L = int(n.max(initial=0)) if n.size else 0
        if _jit.enabled():
            outcome, mask = _outcomes_flat_kernel(u, start, cdf, n, L)
            return outcome, mask, bool(n.size == 0 or int(n.min()) == L)
        if n.size and int(n.min()) == L and u.size == n.size * L and bool(np.all(start == np.arange(n.size) * L)):
            u = u.reshape(n.size, L)  # every row full and in order (PSST's maximal arms, Uniform): no gather
        else:
            u = u[np.minimum(start[:, None] + np.arange(L)[None, :], max(u.size - 1, 0))]
    L = u.shape[1]
    if _jit.enabled():
        outcome, mask = _outcomes_kernel(u, cdf, n)
        return outcome, mask, bool(n.size == 0 or int(n.min()) == L)
    if cdf.shape[1] <= 16:
        # Few outcomes: count the thresholds each uniform passes, one (B, L) pass per outcome
        # (same result as the (B, L, A) comparison below, without the 3-D temporary).
        passed = np.zeros(u.shape, dtype=np.int8)
        above = np.empty(u.shape, dtype=bool)
        for j in range(cdf.shape[1] - 1):  # u < 1 = cdf[:, -1] always
            passed += np.greater_equal(u, cdf[:, j : j + 1], out=above)
        outcome = passed.astype(np.int64)
    else:
        outcome = (u[:, :, None] >= cdf[:, None, :]).sum(-1).astype(np.int64)  # (B, L)
    mask = np.arange(L)[None, :] < n[:, None]
    full = bool(n.size == 0 or int(n.min()) == L)
    if not full:
        np.copyto(outcome, -1, where=~mask)
    return outcome, mask, full


@_jit.helper
def _bon_world_rows(lo, hi, cdf, cost, table_values, prompt, query, n, u, start, outcome, mask, values, unit_cost):  # noqa: ANN001, ANN202, E501
    """Rows ``lo:hi`` drawn from one world (:func:`_bon_world_rows_kernel`'s body); returns :func:`_touch_rows`' sum."""
    width = outcome.shape[1]
    k_n = values.shape[2]
    a1 = cdf.shape[2] - 1  # u < 1 = cdf[..., -1] always
    touched = _touch_rows(lo, hi, cdf, cost, table_values, prompt, query)
    for b in range(lo, hi):
        p, q = prompt[b], query[b]
        unit_cost[b] = cost[p, q]
        nb = min(n[b], width)
        s0 = start[b]
        for j in range(nb):
            x = u[s0 + j]
            o = 0
            for c in range(a1):
                o += x >= cdf[p, q, c]
            outcome[b, j] = o
            mask[b, j] = True
            for k in range(k_n):
                values[b, j, k] = table_values[p, q, o, k]
        for j in range(nb, width):
            outcome[b, j] = -1
            mask[b, j] = False
            for k in range(k_n):
                values[b, j, k] = 0.0
    return touched


@_jit.helper
def _touch_rows(lo, hi, cdf, cost, table_values, prompt, query):  # noqa: ANN001, ANN202
    """Read one entry per 64-byte line of rows ``lo:hi``'s cumulative probabilities, values and cost; returns their sum.

    Why: a world's arrays are large (a 32 x 512 x 8 table: 1 MiB of probabilities, 2 MiB of
    values) and a batch holds one world per run, so the rows a call draws from are rarely in
    cache. Drawn row after row, each row waits for its own misses (a row's completions depend on
    its probabilities). These reads depend on nothing, so the processor has the misses of many
    rows in flight at once, and the draws then find the rows in cache: on Synth-Categorical
    (T = 5,000, 200 runs) the draws take about half the time. The sum is returned so that the
    compiler keeps the reads; nobody uses it.
    """
    acc = 0.0
    last = cdf.shape[2]
    step = max(1, 8 // table_values.shape[3])  # outcomes per line of values
    for b in range(lo, hi):
        p, q = prompt[b], query[b]
        acc += cost[p, q]
        for c in range(0, last, 8):
            acc += cdf[p, q, c]
        for o in range(0, last, step):
            acc += table_values[p, q, o, 0]
    return acc


@_jit.kernel
def _bon_world_rows_kernel(lo, hi, cdf, cost, table_values, prompt, query, n, u, start, outcome, mask, values, unit_cost):  # noqa: ANN001, ANN202, E501
    """Rows ``lo:hi`` of best-of-N pulls drawn from one world: outcomes, mask, values and unit costs, in place.

    Completion ``j`` of row ``b`` is the inverse-CDF draw of ``u[start[b] + j]`` under the world's
    cached ``cdf[prompt[b], query[b]]`` (the comparisons of :func:`_outcomes_flat_kernel` on the
    same values as :func:`_cdf_rows`); values and cost are the world's entries
    (:func:`_bon_values_kernel`); past ``n[b]``: outcome -1, mask False, values 0.0. Returns the
    sum of :func:`_touch_rows` (unused: it only keeps the reads that bring the rows into cache).
    """
    return _bon_world_rows(lo, hi, cdf, cost, table_values, prompt, query, n, u, start, outcome, mask, values, unit_cost)


@_jit.kernel
def _bon_worlds_kernel(bounds, world_of, cdfs, costs, tables, prompt, query, n, u, start, outcome, mask, values, unit_cost):  # noqa: ANN001, ANN202, E501
    """:func:`_bon_world_rows_kernel` for every segment at once: segment ``j``'s rows from world ``world_of[j]``.

    Segment ``j`` is rows ``bounds[j]:bounds[j + 1]`` (the last one to the end); ``cdfs``,
    ``costs`` and ``tables`` are the worlds' arrays (:class:`WorldArrays`): the same draws, values
    and costs as one call per world. Returns the sum of :func:`_touch_rows` (unused).
    """
    b_n = prompt.shape[0]
    touched = 0.0
    for j in range(bounds.shape[0]):
        hi = bounds[j + 1] if j + 1 < bounds.shape[0] else b_n
        w = world_of[j]
        lo = bounds[j]
        touched += _bon_world_rows(lo, hi, cdfs[w], costs[w], tables[w], prompt, query, n, u, start, outcome, mask, values,
                                   unit_cost)  # fmt: skip
    return touched


class WorldArrays:
    """The best-of-N worlds of a batch as compiled-code lists (cumulative probabilities, costs, values), built once.

    For :func:`draw_pulls_worlds`: one kernel call draws the rows of many worlds (instead of one
    call per world). Build only when :func:`iapo_gym._jit.enabled`; :meth:`of` returns None for
    worlds it cannot hold (majority-voting tables, tables above :data:`CDF_CACHE_ENTRIES`).
    """

    def __init__(self, cdf: Any, cost: Any, values: Any, n_objectives: int) -> None:
        self.cdf, self.cost, self.values, self.n_objectives = cdf, cost, values, n_objectives

    @classmethod
    def of(cls, tables: list[OutcomeTable]) -> WorldArrays | None:
        """The lists of ``tables`` (world ``i`` = ``tables[i]``), or None."""
        if not tables or tables[0].strategy == "mv":
            return None
        cdfs = [_cdf_table(t) for t in tables]
        if any(c is None for c in cdfs):
            return None
        import importlib

        List = importlib.import_module("numba.typed").List  # noqa: N806  # numba only here: the compiled path
        values = [np.ascontiguousarray(t.bon_arrays()[0], dtype=np.float64) for t in tables]
        costs = [np.ascontiguousarray(t.cost, dtype=np.float64) for t in tables]
        return cls(List(cdfs), List(costs), List(values), int(values[0].shape[-1]))


@_jit.kernel
def _bon_values_kernel(out, lo, hi, table_values, prompt, query, outcome, n):  # noqa: ANN001, ANN202
    """Rows ``lo:hi`` of a best-of-N pull's ``values (B, L, K)``: ``table_values[prompt, query, outcome]``, 0.0 past ``n``.

    The compiled twin of the gather and ``np.where`` of :func:`draw_pulls_worlds` (copies: the same values).
    """
    width = out.shape[1]
    k_n = out.shape[2]
    for b in range(lo, hi):
        p, q = prompt[b], query[b]
        nb = min(n[b], width)
        for j in range(nb):
            o = outcome[b, j]
            for x in range(k_n):
                out[b, j, x] = table_values[p, q, o, x]
        for j in range(nb, width):
            for x in range(k_n):
                out[b, j, x] = 0.0


@_jit.kernel
def _outcomes_kernel(u, cdf, n):  # noqa: ANN001, ANN202
    """Compiled twin of :func:`_outcomes`: each uniform's count of passed thresholds (comparisons only: the same outcomes)."""
    b_n, width = u.shape
    a1 = cdf.shape[1] - 1  # u < 1 = cdf[:, -1] always
    outcome = np.full((b_n, width), -1, dtype=np.int64)
    mask = np.zeros((b_n, width), dtype=np.bool_)
    for b in range(b_n):
        for j in range(min(n[b], width)):
            x = u[b, j]
            o = 0
            for c in range(a1):
                o += x >= cdf[b, c]
            outcome[b, j] = o
            mask[b, j] = True
    return outcome, mask


@_jit.kernel
def _outcomes_flat_kernel(u, start, cdf, n, width):  # noqa: ANN001, ANN202
    """:func:`_outcomes_kernel` on flat uniforms: row ``b``'s ``j``-th uniform is ``u[start[b] + j]``."""
    b_n = n.shape[0]
    a1 = cdf.shape[1] - 1  # u < 1 = cdf[:, -1] always
    outcome = np.empty((b_n, width), dtype=np.int64)
    mask = np.empty((b_n, width), dtype=np.bool_)
    for b in range(b_n):
        nb = min(n[b], width)
        s0 = start[b]
        for j in range(nb):
            x = u[s0 + j]
            o = 0
            for c in range(a1):
                o += x >= cdf[b, c]
            outcome[b, j] = o
            mask[b, j] = True
        for j in range(nb, width):
            outcome[b, j] = -1
            mask[b, j] = False
    return outcome, mask


#: Largest table (outcome probabilities) whose cumulative probabilities are kept in its cache.
CDF_CACHE_ENTRIES = 1 << 17


def _row_draw(u: NDArray[np.float64], start: NDArray[np.int64], rows: NDArray[np.float64]) -> PendingDraw:
    """A pending draw whose cumulative probabilities are given per row (``rows (B, A)``)."""
    b = rows.shape[0]
    return u, start, rows[:, None, :], np.arange(b), np.zeros(b, dtype=np.int64)


def _cdf_table(table: OutcomeTable) -> NDArray[np.float64] | None:
    """The table's whole ``(P, Q, A)`` cumulative outcome probabilities, built once and kept in its cache.

    None for tables above :data:`CDF_CACHE_ENTRIES` (their rows are computed per call instead).
    """
    cdf = table.cache.get("sampling/cdf")
    if cdf is not None:
        return cdf
    probs = table.mv_arrays()[0] if table.strategy == "mv" else table.bon_arrays()[1]
    if probs.size > CDF_CACHE_ENTRIES:
        return None
    cdf = np.cumsum(probs, axis=-1)
    cdf[..., -1] = 1.0  # guard against rounding: every uniform falls in some outcome
    cdf.setflags(write=False)
    table.cache["sampling/cdf"] = cdf
    return cdf


def _cdf_rows(table: OutcomeTable, prompt: NDArray[np.int64], query: NDArray[np.int64]) -> NDArray[np.float64]:
    """Cumulative outcome probabilities of each (prompt, query) row, the last one set to 1.0.

    The same values whether computed for the rows of a call or once for the whole table (a
    running sum along each row either way); tables up to :data:`CDF_CACHE_ENTRIES` keep theirs.
    """
    whole = _cdf_table(table)
    if whole is not None:
        return whole[prompt, query]
    probs = table.mv_arrays()[0] if table.strategy == "mv" else table.bon_arrays()[1]
    cdf = np.cumsum(probs[prompt, query], axis=-1)
    cdf[:, -1] = 1.0
    return cdf
