"""Many training runs of one agent as one vectorised batch: the public engine for batched agents.

A :class:`RunBatch` holds ``S`` runs (one env and one seed each) and owns everything an agent
must not touch itself:

* **the runs' tables and splits** -- real tasks share one table with a per-run train split;
  synthetic tasks have one world per seed, numbered as if stacked along the query axis, and one
  sampler call serves every run (each run's rows gathered from its own world, no stack built);
* **the budget** -- every pull is checked against each run's budget and each env's ledger (the
  env's one budget rule, :meth:`iapo_gym.ledger.BudgetLedger.fits`) *before* anything is drawn,
  then each ledger is charged with exactly what its run used;
* **one random stream per run** (:class:`RunStreams`) -- every uniform a run consumes (queries,
  completions, tie-breaks, random subsets) comes from that run's own generator, seeded by
  ``(seed, agent name)``, in an order fixed by the run alone.

Together with fixed pull-size classes and tallies that never mix two runs' partial sums, this
makes a run's result depend on its seed only: ``fit(seed=s)`` and run ``s`` of any
``fit_many`` batch (any other seeds, any order, any chunking, any memory budget) agree bit for bit.
``iapo_gym.agents.testing.check_invariance`` checks it for any agent.

Memory: pulls are drawn and handed to the agent in calls of at most :func:`call_completions`
completions, so a batch's working memory stays near ``memory_budget`` bytes whatever the number
of runs or the budget (:data:`DEFAULT_MEMORY_BUDGET`, overridable with the
``IAPO_GYM_MEMORY_BUDGET`` environment variable, in bytes).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym import _jit, _pcg, _seeding
from iapo_gym._pcg import PCG_LANES, PCG_MULT_HI, PCG_MULT_LO, pcg_advance, pcg_fill, pcg_load, pcg_store, pcg_uniform
from iapo_gym.contexts import ContextSet
from iapo_gym.ledger import LedgerGroup
from iapo_gym.sampling import Pulls, WorldArrays, draw_pulls, draw_pulls_worlds
from iapo_gym.tables.format import OutcomeTable

__all__ = [
    "CACHE_CALL_COMPLETIONS",
    "DEFAULT_MEMORY_BUDGET",
    "PIECE_COMPLETIONS",
    "RunBatch",
    "RunStreams",
    "call_completions",
    "iter_chunks",
    "run_state_bytes",
    "resolve_memory_budget",
    "size_classes",
]

#: Working memory one batch aims to stay within (bytes): 1 GiB, room to spare on a 2-core, 24 GB machine.
DEFAULT_MEMORY_BUDGET = 1 << 30

#: A run's pulls of one size class are cut into pieces of at most this many completions (a fixed
#: constant, never derived from the batch, so the cut -- and hence every float sum -- is the same
#: whatever else shares the batch).
PIECE_COMPLETIONS = 1 << 22

#: Ratio between consecutive pull-size classes: a call's padded width wastes at most 30%.
SIZE_CLASS_RATIO = 0.7

#: Completions per call that keep a call's working set in cache (see :meth:`RunBatch.cap_calls`):
#: measured on MATH and Synth-Categorical, calls of 2^15 completions are up to 1.6x faster per
#: completion than the memory-bound calls of millions a large budget would otherwise make.
CACHE_CALL_COMPLETIONS = 1 << 15

#: Per-run buffer of small draws (refilled from the run's generator). Which values a run gets never
#: depends on it; a wider one only leaves more drawn-but-unused values when the runs end (up to the
#: width per run) and a larger batch buffer: 256 measured 8% faster per PSST run than 4096 on MATH at
#: T = 5,000 (0.198 against 0.214 ms, 200 runs, best of 5), and no agent slower.
_BUFFER = 256
_WORD = (1 << 64) - 1  # the low 64 bits of a PCG64 state
#: A request's rest beyond the buffered values refills the buffer only up to this many values; a
#: larger rest is drawn straight into the output. Which values a run gets never depends on it (they
#: are always its generator's next ones); only how many sit unused in buffers when the runs end.
_REFILL_REST = 64


def resolve_memory_budget(value: int | None = None) -> int:
    """The batch working-memory budget in bytes: ``value``, else ``$IAPO_GYM_MEMORY_BUDGET``, else the default."""
    if value is None:
        env = os.environ.get("IAPO_GYM_MEMORY_BUDGET")
        if env is None:
            return DEFAULT_MEMORY_BUDGET
        try:
            value = int(float(env))
        except ValueError:
            raise ValueError(f"IAPO_GYM_MEMORY_BUDGET must be a number of bytes; got {env!r}") from None
    if int(value) < 1 << 20:
        raise ValueError(f"the memory budget must be at least 1 MiB (1048576 bytes); got {value}")
    return int(value)


def call_completions(budget_bytes: int, strategy: str, n_max: int, n_objective_rows: int = 1) -> int:
    """Most completions one sampler + nested-block call may hold within ``budget_bytes``.

    Per completion the call holds the raw pull (outcome, values, cost, mask, uniforms: ~60 bytes)
    and about ``H(n_max) ~ ln(n_max) + 1`` nested blocks per completion, each with a few 4-byte
    temporaries (MV) or a sparse table of ``log2(n_max)`` levels per objective-weight row (BoN).
    Half the budget is left for the runs' statistics.
    """
    blocks = float(np.log(max(n_max, 1)) + 1.0)
    if strategy == "bon":
        per = 96 + 4 * n_objective_rows * (np.log2(max(n_max, 2)) + 4 * blocks)
    else:
        per = 96 + 24 * blocks
    return max(1024, int(budget_bytes // 2 // per))


def size_classes(n: NDArray[np.int64], n_max: int) -> NDArray[np.int64]:
    """Fixed class of each pull size: class ``j`` holds ``n`` in ``(n_max * 0.7^(j+1), n_max * 0.7^j]``.

    Classes depend on ``n`` and ``n_max`` only (never on the other pulls of a batch), so a run's
    pulls are grouped the same way whatever shares its batch.
    """
    ratio = np.log(float(n_max) / np.asarray(n, dtype=np.float64)) / -np.log(SIZE_CLASS_RATIO)
    return np.floor(ratio + 1e-9).astype(np.int64)


@lru_cache(maxsize=16)
def _class_of_size(n_max: int) -> NDArray[np.int64]:
    """``(n_max + 1,)``: :func:`size_classes` of every size ``1..n_max`` (entry 0 unused): a gather, not a log per row."""
    lut = np.zeros(n_max + 1, dtype=np.int64)
    lut[1:] = size_classes(np.arange(1, n_max + 1), n_max)
    lut.setflags(write=False)
    return lut


class RunStreams:
    """One random stream per run: ``numpy`` PCG64 seeded by ``SeedSequence([seed, crc32(salt)])``.

    :meth:`random` hands out the next uniforms of many runs at once. Each run's values are always
    the next ones of its own generator, in order, however the requests are batched (small requests
    are served from a per-run buffer refilled from the same generator; large ones go to the
    generator directly), so a run's draws never depend on the other runs.
    """

    def __init__(self, seeds: Sequence[int], salt: str) -> None:
        self.seeds = [int(s) for s in seeds]
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative integers; got {self.seeds}")
        self.salt = str(salt)
        crc = zlib.crc32(self.salt.encode())
        # numpy's generators bit for bit, their seed words hashed for all runs at once (iapo_gym._seeding)
        self.generators = _seeding.generators(self.seeds, [crc])
        self._width = _BUFFER
        self._buf = np.zeros((len(self.seeds), self._width))  # zeros: a buffer never refilled reads the same everywhere
        self._pos = np.full(len(self.seeds), self._width, dtype=np.int64)
        self._bitgen_addr: NDArray[np.uint64] | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def child_seed(self, run: int, tag: int) -> int:
        """A 63-bit seed for a library that needs its own generator (e.g. ``torch``), fixed by (seed, salt, tag)."""
        crc = zlib.crc32(self.salt.encode())
        ss = np.random.SeedSequence([self.seeds[run], crc, int(tag)])
        return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))

    def random(self, counts: ArrayLike, runs: ArrayLike | None = None) -> NDArray[np.float64]:
        """The next ``counts[i]`` uniforms in ``[0, 1)`` of run ``runs[i]`` (default: every run), concatenated.

        A run may appear more than once: its requests are served in order. Returns a flat
        ``(sum(counts),)`` array.
        """
        runs_a = np.arange(len(self.seeds)) if runs is None else np.asarray(runs, dtype=np.int64).reshape(-1)
        counts_a = _shaped(counts, runs_a.shape)
        if counts_a.size and counts_a.min() < 0:
            raise ValueError("counts must be non-negative")
        ends = np.cumsum(counts_a)
        out = np.empty(int(ends[-1]) if ends.size else 0)
        starts = ends - counts_a
        if _jit.enabled():  # one pass: buffered values copied, refills drawn by each run's own generator in place
            _stream_values(self._buf, self._pos, self._bitgens(), runs_a, np.ascontiguousarray(counts_a), starts, out)
            return out
        if runs_a.size > 1 and not bool(np.all(runs_a[1:] > runs_a[:-1])) and np.unique(runs_a).size < runs_a.size:
            # a run asked twice: its requests one after the other, in order
            for i in range(runs_a.size):
                out[starts[i] : ends[i]] = self.random(counts_a[i : i + 1], runs_a[i : i + 1])
            return out
        pos = self._pos[runs_a]
        cheap = counts_a <= self._width - pos
        if cheap.any():
            r, c, first, p = runs_a[cheap], counts_a[cheap], starts[cheap], pos[cheap]
            packed = np.cumsum(c) - c  # where each run's values start among the cheap ones
            flat = np.arange(int(c.sum()))
            src = np.repeat(r * self._width + p - packed, c) + flat  # positions in the flattened buffer
            if cheap.all():  # the usual case: the cheap values fill ``out`` in order
                np.take(self._buf.reshape(-1), src, out=out, mode="clip")  # in range by construction
            else:
                out[np.repeat(first - packed, c) + flat] = self._buf.reshape(-1)[src]
            self._pos[r] += c
        for i in np.flatnonzero(~cheap).tolist():
            s, c1, st = int(runs_a[i]), int(counts_a[i]), int(starts[i])
            left = self._width - int(self._pos[s])
            out[st : st + left] = self._buf[s, self._pos[s] :]
            need = c1 - left
            gen = self.generators[s]
            if need <= _REFILL_REST:  # small: refill the buffer and serve from it
                gen.random(out=self._buf[s])
                out[st + left : st + c1] = self._buf[s, :need]
                self._pos[s] = need
            else:  # large: straight from the generator into the output (the buffer stays empty)
                gen.random(out=out[st + left : st + c1])
                self._pos[s] = self._width
        return out

    def _bitgens(self) -> NDArray[np.uint64]:
        """``(S,)`` addresses of the runs' C bit generators (numpy's ``bitgen_t``), for :func:`_stream_values`.

        Read once per stream set: :attr:`generators` never changes, and its objects (kept alive by
        this stream set) own the memory the addresses point to.
        """
        if self._bitgen_addr is None:
            self._bitgen_addr = np.array([_pcg.bitgen_address(g.bit_generator) for g in self.generators], dtype=np.uint64)
        return self._bitgen_addr

    def random_rows(self, runs: ArrayLike, k: int) -> NDArray[np.float64]:
        """``(len(runs), k)``: the next ``k`` uniforms of each run in ``runs``."""
        runs_a = np.asarray(runs, dtype=np.int64).reshape(-1)
        k = int(k)
        pos = self._pos[runs_a]
        cheap = pos + k <= self._width
        if k < 16 and bool(cheap.all()):  # a few values per run (a context per step): one gather
            self._pos[runs_a] += k
            return self._buf[runs_a[:, None], pos[:, None] + np.arange(k)]
        if k < 16 or not cheap.any():
            return self.random(np.full(runs_a.size, k), runs_a).reshape(runs_a.size, k)
        # Equal counts: the rows served from the buffers are one broadcast gather (the values are
        # still each run's next ``k``, in order; the others take the general path).
        rows = np.flatnonzero(cheap) if not cheap.all() else None
        r, p = (runs_a, pos) if rows is None else (runs_a[rows], pos[rows])
        if rows is None and bool((p == p[0]).all()):  # runs in step (the usual case): row slices
            p0 = int(p[0])
            self._pos[r] += k
            return self._buf[r, p0 : p0 + k]
        # each row is a run's next k buffered values: one window of k over the flat buffer (rows
        # of a strided view are copied whole, many times faster than an element-wise gather)
        windows = np.lib.stride_tricks.sliding_window_view(self._buf.reshape(-1), k)
        if rows is None:
            out = windows[r * self._width + p]
        else:
            out = np.empty((runs_a.size, k))
            out[rows] = windows[r * self._width + p]
            rest = np.flatnonzero(~cheap)
            out[rest] = self.random(np.full(rest.size, k), runs_a[rest]).reshape(rest.size, k)
        self._pos[r] += k
        return out

    @property
    def buffer(self) -> NDArray[np.float64]:
        """``(S, width)``: each run's buffered values; run ``s``'s next ones are ``buffer[s, position[s]:]``.

        For a compiled consumer that takes values in place (then advances :attr:`position` past
        them); call :meth:`fill` first so that enough values are there.
        """
        return self._buf

    @property
    def position(self) -> NDArray[np.int64]:
        """``(S,)``: where each run's next buffered value sits in :attr:`buffer` (``width``: none left)."""
        return self._pos

    def fill(self, runs: ArrayLike, k: int) -> None:
        """Make sure each run in ``runs`` has at least ``k`` (at most the buffer's width) values buffered.

        A run with fewer moves what it has left to the front of its buffer and draws the rest of
        the buffer from its generator: its values stay the next ones of its stream, in order.
        """
        k = int(k)
        if not 0 <= k <= self._width:
            raise ValueError(f"k must lie in 0..{self._width} (the buffer's width); got {k}")
        runs_a = np.asarray(runs, dtype=np.int64).reshape(-1)
        for s in runs_a[self._pos[runs_a] > self._width - k].tolist():
            left = self._width - int(self._pos[s])
            self._buf[s, :left] = self._buf[s, self._width - left :].copy()
            self.generators[s].random(out=self._buf[s, left:])
            self._pos[s] = 0

    def pcg_states(self, runs: ArrayLike) -> NDArray[np.int64]:
        """``(len(runs), 4)``: each run's PCG64 ``(state high, state low, inc high, inc low)`` words, as int64 bit patterns.

        For a compiled consumer that draws the runs' next values itself, bit for bit as numpy's
        ``PCG64`` would (:func:`iapo_gym.agents._sequential_kernels.stream_take`); it must hand the
        advanced states back with :meth:`set_pcg_states` before anything else draws. The values in
        :attr:`buffer` come first: the generator is already past them.
        """
        runs_a = np.asarray(runs, dtype=np.int64).reshape(-1)
        words = []
        for s in runs_a.tolist():
            st = self.generators[s].bit_generator.state["state"]
            state, inc = int(st["state"]), int(st["inc"])
            words.append((state >> 64, state & _WORD, inc >> 64, inc & _WORD))
        return np.array(words, dtype=np.uint64).reshape(runs_a.size, 4).view(np.int64)

    def set_pcg_states(self, runs: ArrayLike, states: ArrayLike) -> None:
        """Set run ``runs[i]``'s PCG64 state to ``states[i]`` (as :meth:`pcg_states` gives; the runs' own increments).

        numpy's 32-bit buffer (``has_uint32``, ``uinteger``) is kept: doubles never touch it.
        """
        runs_a = np.asarray(runs, dtype=np.int64).reshape(-1)
        words = np.asarray(states, dtype=np.int64).reshape(runs_a.size, 4).view(np.uint64).tolist()
        for s, (hi, lo, inc_hi, inc_lo) in zip(runs_a.tolist(), words, strict=True):
            bg = self.generators[s].bit_generator
            full = bg.state
            if full["state"]["inc"] != (inc_hi << 64) | inc_lo:
                raise ValueError(f"run {s}: the increment does not match its generator's")
            full["state"]["state"] = (hi << 64) | lo
            bg.state = full

    def rows(self, runs: ArrayLike) -> RowGenerator:
        """A ``numpy.random.Generator``-like view whose row ``i`` draws from run ``runs[i]`` (see :class:`RowGenerator`)."""
        return RowGenerator(self, np.asarray(runs, dtype=np.int64).reshape(-1))


def _next_double(bitgen):  # noqa: ANN001, ANN202
    """The next double of the numpy bit generator at address ``bitgen`` (its own ``next_double``), in kernels.

    A placeholder: :func:`_install_next_double` replaces it with a numba intrinsic before the first
    kernel that calls it compiles.
    """
    raise RuntimeError("_next_double is a numba intrinsic; call it from a compiled kernel only")


@lru_cache(maxsize=1)
def _install_next_double() -> None:
    """Make :func:`_next_double` a numba intrinsic: a call of the generator's own C ``next_double``.

    numpy's ``bitgen_t`` (``numpy/random/bitgen.h``, the C API numba's own generator support
    uses) starts with the state pointer, followed by the ``next_uint64``, ``next_uint32``,
    ``next_double`` and ``next_raw`` function pointers; the intrinsic calls ``next_double(state)``,
    the very function ``Generator.random`` fills its output with, so the values and the
    generator's state afterwards are numpy's, bit for bit.
    """
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def next_double(typingctx: Any, bitgen: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.DoubleType(), [i8p])
            slots = builder.inttoptr(args[0], i8p.as_pointer())  # bitgen_t as an array of pointers
            state = builder.load(slots)  # slot 0: void *state
            slot = builder.gep(slots, [ir.Constant(ir.IntType(64), 3)])  # slot 3: double (*next_double)(void *)
            fn = builder.load(builder.bitcast(slot, fnty.as_pointer().as_pointer()))
            return builder.call(fn, [state])

        return types.float64(bitgen), codegen

    globals()["_next_double"] = next_double


#: SHA-256 of :mod:`iapo_gym._pcg`, whose intrinsics :func:`_stream_values_kernel` inlines: numba's
#: cache follows this file only, so an edit there must change this line (``tests/test_pcg.py`` checks it).
_PCG_SHA256 = "f4640774232ba769507b148c68dd82aaf362c242eba70694ad98d49a9226e812"


@lru_cache(maxsize=1)
def _lane_jump() -> NDArray[np.int64]:
    """:func:`iapo_gym._pcg.pcg_jump` of :data:`~iapo_gym._pcg.PCG_LANES` steps: ``(A_hi, A_lo, S_hi, S_lo)``."""
    return np.array(_pcg.pcg_jump(PCG_LANES), dtype=np.int64)


def _stream_values(buf, pos, bitgen, run, count, first, out):  # noqa: ANN001, ANN202
    """Compiled :meth:`RunStreams.random`: run ``run[i]``'s next ``count[i]`` values into ``out[first[i]:]``.

    Where numpy's PCG64 state can be stepped in place (:func:`iapo_gym._pcg.state_in_place`), the
    kernel steps it itself (4-6x faster a value); elsewhere it calls the generator's
    ``next_double`` per value. The same values and generator states either way.
    """
    in_place = _pcg.state_in_place()
    _pcg.install(globals())
    _install_next_double()
    lanes = np.empty(2 * PCG_LANES, dtype=np.int64)
    _stream_values_kernel(buf, pos, bitgen.view(np.int64), run, count, first, out, in_place, _lane_jump(), lanes)


@_jit.helper
def _pcg_values(dst, d0, n, hi, lo, inc_hi, inc_lo, jump, lanes):  # noqa: ANN001, ANN202
    """``n`` values of the PCG64 stream at state ``(hi, lo)``, increment ``inc``, into ``dst[d0:]``; the new state.

    A run of ``2 L`` values or more (``L`` = :data:`~iapo_gym._pcg.PCG_LANES`) comes from
    :func:`~iapo_gym._pcg.pcg_fill`'s ``L`` interleaved chains (``jump``: ``L`` steps, as
    :func:`_lane_jump`), the rest from single steps: numpy's values, in order.
    """
    j = 0
    if n >= 2 * PCG_LANES:
        for lane in range(PCG_LANES):  # the chains' first states: the next L steps
            hi, lo = pcg_advance(hi, lo, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
            lanes[lane], lanes[PCG_LANES + lane] = hi, lo
        c_hi, c_lo = pcg_advance(inc_hi, inc_lo, jump[2], jump[3], 0, 0)  # S inc: the increment of L steps
        j = n // PCG_LANES * PCG_LANES
        pcg_fill(dst, d0, j, lanes, jump[0], jump[1], c_hi, c_lo)
        hi, lo = lanes[PCG_LANES - 1], lanes[2 * PCG_LANES - 1]  # the state of the last value
    while j < n:
        hi, lo = pcg_advance(hi, lo, PCG_MULT_HI, PCG_MULT_LO, inc_hi, inc_lo)
        dst[d0 + j] = pcg_uniform(hi, lo)
        j += 1
    return hi, lo


@_jit.kernel
def _stream_values_kernel(buf, pos, bitgen, run, count, first, out, in_place, jump, lanes):  # noqa: ANN001, ANN202
    """The numpy path of :meth:`RunStreams.random`, step for step, drawing from each run's own generator.

    A request served by the buffer copies from it; otherwise what is left in the buffer comes
    first, then a small rest (at most :data:`_REFILL_REST`) refills the whole buffer (and is served
    from it) and a larger one is drawn straight into ``out``, leaving the buffer empty. The values
    come from the run's generator at ``bitgen[r]`` (its ``bitgen_t``): with ``in_place``, by
    :func:`_pcg_values` from its state words (:func:`~iapo_gym._pcg.pcg_load`: ``state`` low and
    high, ``inc`` low and high; written back after them), else by its own ``next_double``
    (:func:`_next_double`) per value: numpy's values, and its state, either way.
    """
    width = buf.shape[1]
    for i in range(run.shape[0]):
        r, c, f = run[i], count[i], first[i]
        p = pos[r]
        left = width - p
        if c <= left:
            for j in range(c):
                out[f + j] = buf[r, p + j]
            pos[r] = p + c
            continue
        for j in range(left):
            out[f + j] = buf[r, p + j]
        need = c - left
        refill = need <= _REFILL_REST
        dst, d0, n = (buf[r], 0, width) if refill else (out, f + left, need)
        if in_place:
            words = pcg_load(pcg_load(bitgen[r], 0), 0)  # bitgen_t.state -> pcg64_state.pcg_state
            hi, lo, inc_hi, inc_lo = pcg_load(words, 1), pcg_load(words, 0), pcg_load(words, 3), pcg_load(words, 2)
            hi, lo = _pcg_values(dst, d0, n, hi, lo, inc_hi, inc_lo, jump, lanes)
            pcg_store(words, 0, lo)
            pcg_store(words, 1, hi)
        else:
            g = bitgen[r]
            for j in range(n):
                dst[d0 + j] = _next_double(g)
        if refill:
            for j in range(need):
                out[f + left + j] = buf[r, j]
            pos[r] = need
        else:
            pos[r] = width


@_jit.kernel
def _query_layout(u, run, prompt, n, bounds, rows_per, n_train, train, gold_table, cost_table):  # noqa: ANN001, ANN202
    """Compiled twin of :meth:`RunBatch._draw`'s layout: each row's query and the start of its completion uniforms.

    Run segment ``j`` (rows ``bounds[j]`` to ``bounds[j] + rows_per[j]``) owns the values of ``u``
    after every earlier segment's: first one query uniform per row, then its rows' completions,
    row after row. A row's train column is ``min(int(uq * n_train), n_train - 1)`` (the numpy
    path's product and truncation). With a majority-voting table's ``gold_table (Q,)`` and
    ``cost_table (P, Q)`` (not empty), each row's gold answer and unit cost are gathered in the
    same pass (what :func:`~iapo_gym.sampling.draw_pulls` would gather); otherwise those two
    results are empty.
    """
    b_n = run.shape[0]
    gather = gold_table.shape[0] > 0
    query = np.empty(b_n, dtype=np.int64)
    start = np.empty(b_n, dtype=np.int64)
    gold = np.empty(b_n if gather else 0, dtype=np.int64)
    unit = np.empty(b_n if gather else 0)
    offset = 0  # where segment j's values start in u
    for j in range(bounds.shape[0]):
        first = bounds[j]
        k = rows_per[j]
        nt = n_train[run[first]]
        pos = offset + k  # its first completion uniform
        for i in range(first, first + k):
            c = np.int64(u[offset + i - first] * nt)
            if c > nt - 1:
                c = nt - 1
            q = train[run[i], c]
            query[i] = q
            start[i] = pos
            pos += n[i]
            if gather:
                gold[i] = gold_table[q]
                unit[i] = cost_table[prompt[i], q]
        offset = pos
    return query, start, gold, unit


class RowGenerator:
    """``random(size)`` / ``gumbel(size)`` for a batch whose row ``i`` belongs to run ``runs[i]``.

    ``size`` must start with ``len(runs)``; row ``i`` takes ``prod(size[1:])`` uniforms from its own
    run's stream. Lets per-step rules written against ``numpy.random.Generator`` stay unchanged.
    """

    def __init__(self, streams: RunStreams, runs: NDArray[np.int64]) -> None:
        self.streams, self.runs = streams, runs

    def random(self, size: int | tuple[int, ...] | None = None) -> NDArray[np.float64]:
        """Uniforms in ``[0, 1)`` of shape ``size`` (first axis: one row per run)."""
        shape = (self.runs.size,) if size is None else (size,) if isinstance(size, int) else tuple(size)
        if shape[0] != self.runs.size:
            raise ValueError(f"the first axis must have one row per run ({self.runs.size}); got size={size}")
        k = int(np.prod(shape[1:], dtype=np.int64))
        return self.streams.random_rows(self.runs, k).reshape(shape)

    def gumbel(self, size: int | tuple[int, ...] | None = None) -> NDArray[np.float64]:
        """Standard Gumbel variates ``-log(-log(1 - u))`` of shape ``size``."""
        with np.errstate(divide="ignore"):
            return -np.log(-np.log1p(-self.random(size)))


def _unwrap(env: Any) -> Any:
    return getattr(env, "unwrapped", env)


class RunBatch:
    """``S`` runs of one agent (one env and one seed each), pulled as one vectorised batch.

    Every run starts with ``env.reset(seed=seed)`` (a new training run: the env's RNG is seeded
    and its ledger cleared). Runs may spend ``min(budget, ledger.remaining)`` completions.

    Args:
        envs: one IAPO env per run (wrapped or not). Several envs must be table-backed; a single
            env with a live backend is pulled through its own :meth:`~iapo_gym.env.IAPOEnv.pull`.
        budget: completions each run may spend.
        seeds: one seed per run (non-negative).
        salt: names the agent; seeds the per-run streams together with the seed.
        memory_budget: working-memory budget in bytes (default :func:`resolve_memory_budget`).

    Attributes:
        n_runs, seeds, contexts, strategy, n_prompts, n_max: the batch and its task.
        budgets: ``(S,)`` completions each run may spend.
        spent: ``(S,)`` completions spent so far.
        n_train: ``(S,)`` size of each run's train split.
        streams: the per-run random streams (:class:`RunStreams`).
    """

    def __init__(
        self,
        envs: Sequence[Any],
        budget: int,
        seeds: Sequence[int],
        salt: str,
        memory_budget: int | None = None,
    ) -> None:
        if len(envs) == 0:
            raise ValueError("a batch needs at least one env")
        if len(envs) != len(seeds):
            raise ValueError(f"got {len(envs)} envs for {len(seeds)} seeds")
        if int(budget) < 0:
            raise ValueError(f"budget must be >= 0 completions; got {budget}")
        self.envs = [_unwrap(e) for e in envs]
        first = self.envs[0]
        self.contexts: ContextSet = first.contexts
        self.n_prompts, self.n_max, self.strategy = int(first.n_prompts), int(first.n_max), str(first.strategy)
        for e in self.envs[1:]:
            if (int(e.n_prompts), int(e.n_max), str(e.strategy)) != (self.n_prompts, self.n_max, self.strategy):
                raise ValueError("all envs of a batch must share prompts, n_max and strategy")
            if e.contexts is not self.contexts and (
                e.contexts.weights.shape != self.contexts.weights.shape
                or not np.array_equal(e.contexts.weights, self.contexts.weights)
            ):
                raise ValueError("all envs of a batch must share the same context set")
        self.n_runs = len(self.envs)
        self.seeds = [int(s) for s in seeds]
        self.streams = RunStreams(self.seeds, salt)
        from iapo_gym.env import IAPOEnv

        own = [type(env).reset is IAPOEnv.reset for env in self.envs]
        # the env's own reset, without the observation and info nobody reads, and with its RNG
        # (gymnasium's np_random(seed)) seeded together with the others' (iapo_gym._seeding)
        rngs = iter(_seeding.generators([s for s, o in zip(self.seeds, own, strict=True) if o]) if any(own) else ())
        for env, seed, o in zip(self.envs, self.seeds, own, strict=True):
            if o:
                env._begin_run(seed, next(rngs))
            elif hasattr(env, "reset"):
                env.reset(seed=seed)  # a new training run: seeded RNG, cleared ledger
        self.budgets = np.array([min(int(budget), self._ledger_room(e)) for e in self.envs], dtype=np.int64)
        self.spent = np.zeros(self.n_runs, dtype=np.int64)
        self._ledgers = [getattr(e, "ledger", None) for e in self.envs]
        self._ledger_runs = np.array([s for s, led in enumerate(self._ledgers) if led is not None], dtype=np.int64)
        self._ledger_group = LedgerGroup([self._ledgers[s] for s in self._ledger_runs.tolist()])
        self.memory_budget = resolve_memory_budget(memory_budget)
        self._live = self.n_runs == 1 and getattr(first, "backend", None) is not None
        self._prepare_table()
        self._gather: tuple[NDArray[Any], NDArray[np.float64]] | None = None
        self._worlds: WorldArrays | bool | None = None  # False: the worlds cannot be listed
        self._cap = call_completions(self.memory_budget, self.strategy, self.n_max, self._objective_rows())

    @staticmethod
    def _ledger_room(env: Any) -> float:
        ledger = getattr(env, "ledger", None)
        rem = None if ledger is None else getattr(ledger, "remaining", None)
        return float("inf") if rem is None else float(rem)

    def _prepare_table(self) -> None:
        tables: list[OutcomeTable] = [t for t in (getattr(e, "table", None) for e in self.envs) if t is not None]
        if len(tables) != self.n_runs:
            raise ValueError(
                "a batch of runs needs table-backed envs (env.table); for other envs call fit(env, budget, seed) per seed"
            )
        self._tables = tables
        if all(t is tables[0] for t in tables):
            self._table: OutcomeTable | None = tables[0]
            offsets = np.zeros(self.n_runs, dtype=np.int64)
        else:  # one world per run: stacked lazily (a call of a single run samples its own world)
            self._table = None
            offsets = np.concatenate([[0], np.cumsum([t.n_queries for t in tables])[:-1]]).astype(np.int64)
        train = [np.asarray(e.train_queries, dtype=np.int64) + off for e, off in zip(self.envs, offsets, strict=True)]
        self.n_train = np.array([t.size for t in train], dtype=np.int64)
        if np.any(self.n_train == 0):
            raise ValueError("every env needs a non-empty train split (env.unwrapped.train_queries)")
        if bool(np.all(self.n_train == self.n_train[0])):  # splits of one size (one table's re-splits): one stack
            self.train = np.stack(train)
        else:
            self.train = np.zeros((self.n_runs, int(self.n_train.max())), dtype=np.int64)
            for s, t in enumerate(train):
                self.train[s, : t.size] = t
        self._offsets = offsets

    def cap_calls(self, completions: int = 0) -> None:
        """Draw at most ``completions`` per sampler call from now on (default :data:`CACHE_CALL_COMPLETIONS`).

        For agents that pull a whole budget at once (Uniform, TRIPLE's rounds): calls sized to
        stay in cache are faster per completion than memory-bound ones of millions. Never raises
        the memory budget's cap; a single run's piece is still never split, and no result changes
        (calls never split or merge what a run's sums depend on).
        """
        self._cap = min(self._cap, max(1, int(completions) or CACHE_CALL_COMPLETIONS))
        if self._table is None:
            self._table = _cached_stack(self._tables)
            if self._table is None:
                # One world per run and no stack of them yet: stacking would copy every world
                # (milliseconds per world for large BoN tables) to save one call per run, so each
                # call draws one run's pulls from its own world, as a run fitted alone does.
                self._cap = 1

    @property
    def table(self) -> OutcomeTable:
        """The batch's table: the shared one, or the runs' worlds stacked along the query axis.

        The draws never need the stack (each run's rows come from its own world); it is built on
        first use, for callers that want one table, and reused by later batches over the same
        world objects.
        """
        if self._table is None:
            self._table = _stacked(self._tables)
        return self._table

    # ------------------------------------------------------------------ budget
    @property
    def remaining(self) -> NDArray[np.int64]:
        """``(S,)`` completions each run may still spend."""
        return self.budgets - self.spent

    def _charge(self, run: NDArray[np.int64], n: NDArray[np.int64], charge: NDArray[np.int64] | None = None) -> None:
        """Check every run's budget and ledger, then charge them all (nothing is charged if one refuses).

        ``charge`` is ``(S,)`` the completions of each run's rows when the caller has summed them.
        """
        if charge is None:
            charge = int_sums_by(run, n, self.n_runs)
        over = self.spent + charge > self.budgets
        if over.any():
            bad = int(np.flatnonzero(over)[0])
            raise RuntimeError(
                f"run {bad} (seed {self.seeds[bad]}) would spend {int(self.spent[bad] + charge[bad])} completions "
                f"> its budget {int(self.budgets[bad])}; the agent must check batch.remaining before pulling"
            )
        if self._live:
            self.spent += charge  # the live env's own pull() charges its ledger
            return
        # the env's own rule: every ledger must accept its runs' total before any is charged (one
        # call for the whole batch; envs may share one ledger, e.g. the sub-envs of a vector env:
        # their charges add up)
        if self._ledger_runs.size:
            self._ledger_group.charge(charge[self._ledger_runs])
        self.spent += charge

    # ------------------------------------------------------------------ pulling
    def pull(
        self,
        run: ArrayLike,
        prompt: ArrayLike,
        n: ArrayLike,
        col: ArrayLike | None = None,
        ragged: bool = False,
    ) -> Iterator[tuple[Pulls, NDArray[np.int64]]]:
        """Draw one pull per row: ``n[i]`` completions of ``prompt[i]`` for run ``run[i]``.

        The charge is checked and made at once (all runs or none); the draws follow lazily, one
        call at a time: the returned iterator yields ``(pulls, rows)`` where ``rows`` indexes the
        input arrays. Consume it fully. Calls group pulls of similar size (fixed classes,
        :func:`size_classes`) and hold at most :func:`call_completions` completions (a single
        run's piece may exceed that when one run alone needs more).

        Args:
            run: ``(B,)`` run index of each pull.
            prompt: ``(B,)`` prompt index of each pull.
            n: ``(B,)`` completions of each pull.
            col: ``(B,)`` position of each pull's query in its run's train split (query-controlled
                pulls); default a uniformly drawn train query per pull from the run's stream.
            ragged: the caller reads majority-voting pulls row by row without padding them to a
                common width (:class:`~iapo_gym.agents._engine.NestedStats`' compiled tallies):
                then the calls of several size classes are merged (fewer, larger calls), where
                every (run, prompt) has rows of one class only and the padded size stays within
                the call cap. Each run draws the same values, class after class, and each cell's
                sums are formed the same way, so no result changes.
        """
        run_a = np.asarray(run, dtype=np.int64).reshape(-1)
        prompt_a = np.asarray(prompt, dtype=np.int64).reshape(-1)
        n_a = _shaped(n, run_a.shape)
        col_a = None if col is None else _shaped(col, run_a.shape)
        if not run_a.shape == prompt_a.shape:
            raise ValueError(f"run, prompt and n need one entry per pull; got {run_a.shape}, {prompt_a.shape}")
        scan = None
        if run_a.size >= _SCAN_ROWS and _jit.enabled():  # many rows (a round): one compiled pass over them
            n_a = np.ascontiguousarray(n_a)
            scan = _RowScan(*_scan_rows(run_a, prompt_a, n_a, self.n_runs))
        self._check_pulls(run_a, prompt_a, n_a, col_a, scan)
        self._charge(run_a, n_a, None if scan is None else scan.charge)
        return self._draw_calls(run_a, prompt_a, n_a, col_a, scan, ragged)

    def _check_pulls(
        self,
        run: NDArray[np.int64],
        prompt: NDArray[np.int64],
        n: NDArray[np.int64],
        col: NDArray[np.int64] | None,
        scan: _RowScan | None = None,
    ) -> None:
        """Every index in range, before anything is charged or drawn (one clear error naming the argument)."""
        if run.size == 0:
            return
        lims = (run.min(), run.max(), prompt.min(), prompt.max(), n.min(), n.max()) if scan is None else scan.limits
        if lims[0] < 0 or lims[1] >= self.n_runs:
            raise ValueError(f"run indices must lie in 0..{self.n_runs - 1}")
        if lims[2] < 0 or lims[3] >= self.n_prompts:
            raise ValueError(f"prompt indices must lie in 0..{self.n_prompts - 1}")
        if lims[4] < 1 or lims[5] > self.n_max:
            raise ValueError(f"N must lie in 1..{self.n_max}")
        if col is not None and np.any((col < 0) | (col >= self.n_train[run])):
            raise ValueError("every col must be a position in its run's train split (0..n_train - 1)")

    def _train_col(self, run: NDArray[np.int64], uq: NDArray[np.float64]) -> NDArray[np.int64]:
        """Each row's train-split position from its query uniform (uniform over the run's split)."""
        return np.minimum((uq * self.n_train[run]).astype(np.int64), self.n_train[run] - 1)

    def step_draws(
        self, run: NDArray[np.int64], prompt: NDArray[np.int64], n: NDArray[np.int64]
    ) -> tuple[OutcomeTable, NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]] | None:
        """:meth:`pull` of one pull per run, for an agent that draws the completions itself (a compiled step).

        Where the runs share one table (or its stack) and ``run`` is strictly increasing, checks
        and charges exactly as :meth:`pull` and returns ``(table, query, u, start)``: each pull's
        query (a row of ``table``) and its completion uniforms ``u[start[i] : start[i] + n[i]]``, the
        values :meth:`pull` would turn into completions by inverse CDF. Otherwise returns None and
        charges nothing (use :meth:`pull`).
        """
        if self._table is None or self._live or run.size == 0 or not bool(np.all(run[1:] > run[:-1])):
            return None
        self._check_pulls(run, prompt, n, None)
        self._charge(run, n)
        # _draw's layout for one row per run: the query uniform, then the completions
        counts = n + 1
        u = self.streams.random(counts, run)
        first = np.cumsum(counts) - counts
        col = self._train_col(run, u[first])
        return self._table, self.train[run, col], u, first + 1

    def loop_table(self) -> OutcomeTable | None:
        """The shared majority-voting table, where a compiled loop may draw many steps per run before charging.

        Such a loop (e.g. :func:`iapo_gym.agents._sequential_kernels.run_steps`) takes each run's
        values from :attr:`streams` in place, never draws more than :attr:`remaining`, and then
        charges what it drew with :meth:`charge_drawn`. Offered only where that charge cannot be
        refused for want of room: one table for every run, no live backend, and every ledger a
        plain :class:`~iapo_gym.ledger.BudgetLedger` of its own (the batch's budgets are capped by
        each ledger's room; a ledger shared by several runs, or one another process charges, keeps
        the step-by-step :meth:`pull`, which charges before it draws). None otherwise.
        """
        if self._table is None or self._live or self.strategy != "mv" or not self._ledger_group.exclusive:
            return None
        return self._table

    def charge_drawn(self, counts: NDArray[np.int64]) -> None:
        """Charge ``counts[s]`` completions to run ``s``, drawn by a compiled loop within :attr:`remaining`.

        Checks as :meth:`pull` does (every run within its budget, every ledger accepting its total,
        all or none) and raises if not: a loop that overdrew has a defect.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (self.n_runs,) or (counts.size and int(counts.min()) < 0):
            raise ValueError(f"counts must hold one whole number >= 0 per run ({self.n_runs})")
        run = np.flatnonzero(counts)
        self._charge(run, counts[run])

    def _draw_calls(
        self,
        run: NDArray[np.int64],
        prompt: NDArray[np.int64],
        n: NDArray[np.int64],
        col: NDArray[np.int64] | None,
        scan: _RowScan | None = None,
        ragged: bool = False,
    ) -> Iterator[tuple[Pulls, NDArray[np.int64]]]:
        if run.size == 0:
            return
        cap = self._cap
        increasing = bool(np.all(run[1:] > run[:-1])) if scan is None else scan.increasing
        if increasing and (int(n.sum()) if scan is None else int(scan.total.sum())) <= cap:
            # one pull per run, run-major, within one call (a sequential agent's step): what the
            # general path below makes of it, without the packing
            yield self._draw(run, prompt, n, col), np.arange(run.size)
            return
        one_each = increasing or (run.size <= self.n_runs and np.bincount(run, minlength=self.n_runs).max() <= 1)
        same_n = int(n.min()) == int(n.max()) if scan is None else scan.limits[4] == scan.limits[5]
        if scan is not None and scan.bounds.size and (one_each or same_n):
            # run-major rows in one group (the scan found their runs' segments): cut between runs
            # by cumulative size as _pack does, each call handed its segments
            calls = _pack_segments(scan.bounds, scan.total, n, cap)
            if calls is not None:
                ends = np.append(scan.bounds[1:], run.size)
                for lo, hi in calls:
                    a, b = int(scan.bounds[lo]), int(ends[hi - 1])
                    segs = (scan.bounds[lo:hi] - a, ends[lo:hi] - scan.bounds[lo:hi], scan.total[lo:hi])
                    pulls = self._draw(run[a:b], prompt[a:b], n[a:b], None if col is None else col[a:b], segs)
                    yield pulls, np.arange(a, b)
                return
        if scan is not None and scan.bounds.size and not (one_each or same_n) and _jit.enabled():
            # run-major rows of several sizes (PSST's later rounds): _pack's calls of each size
            # class, found in one compiled pass; None where a run's rows span several pieces
            classes = _class_of_size(self.n_max)[n]  # every n lies in 1..n_max (checked)
            found = _class_calls(run, prompt, n, classes, cap, PIECE_COMPLETIONS, self.n_prompts)
            if found[0].size:
                order, call_rows, call_segs, seg_bounds, seg_rows, seg_total, call_width, one_class = found
                run_o, prompt_o, n_o = run[order], prompt[order], n[order]
                col_o = None if col is None else col[order]
                if ragged and one_class and self.strategy == "mv" and self._table is not None:
                    call_rows, call_segs = _merged_calls(call_rows, call_segs, call_width, cap)
                for c in range(call_rows.size - 1):
                    a, b, lo, hi = int(call_rows[c]), int(call_rows[c + 1]), int(call_segs[c]), int(call_segs[c + 1])
                    segs = (seg_bounds[lo:hi] - a, seg_rows[lo:hi], seg_total[lo:hi])
                    pulls = self._draw(run_o[a:b], prompt_o[a:b], n_o[a:b], None if col_o is None else col_o[a:b], segs)
                    yield pulls, order[a:b]
                return
        if one_each or same_n:
            # One group: every pull the same size (warm-ups, Uniform, PSST's first round), or at most
            # one pull per run (sequential agents' steps), where a run's sums cannot depend on the
            # grouping (a single row's tallies are the same in any call).
            groups = [np.arange(n.size)]
        else:
            cls = _class_of_size(self.n_max)[n]
            groups = [np.flatnonzero(cls == c) for c in np.flatnonzero(np.bincount(cls)).tolist()]
        for rows in groups:
            whole = rows.size == run.size  # rows = every position, in order
            r = run if whole else run[rows]
            if r.size > 1 and bool(np.any(r[1:] < r[:-1])):  # make it run-major (stable: request order kept)
                rows = rows[np.argsort(r, kind="stable")]
                whole, r = False, run[rows]
            for call in _pack(r, n if whole else n[rows], cap):
                idx = call if whole else rows[call]
                sel: slice | NDArray[np.int64] = idx
                if whole and call.size and int(call[-1]) - int(call[0]) + 1 == call.size:  # a range: views, no gathers
                    sel = slice(int(call[0]), int(call[-1]) + 1)
                yield self._draw(run[sel], prompt[sel], n[sel], None if col is None else col[sel]), idx

    def _objective_rows(self) -> int:
        w = np.ascontiguousarray(self.contexts.weights, dtype=np.float64)
        return _objective_rows(w.tobytes(), w.shape) if w.shape[1] > 1 else 1

    def _draw(
        self,
        run: NDArray[np.int64],
        prompt: NDArray[np.int64],
        n: NDArray[np.int64],
        col: NDArray[np.int64] | None,
        segs: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]] | None = None,
    ) -> Pulls:
        """One call: each run draws its query uniforms, then its completion uniforms, from its own stream.

        ``segs``: ``(bounds, rows_per, completions)`` of the call's run segments when the caller has them.
        """
        if segs is None:
            bounds, rows_per = _segments(run)  # rows are run-major
            per_run = None
        else:
            bounds, rows_per, per_run = segs
        gold: NDArray[np.int64] | None = None
        unit: NDArray[np.float64] | None = None
        runs_here = run[bounds]
        width = int(n.max())
        if col is None and not self._live:
            # One request per run for its query uniforms (one per row) followed by its completion
            # uniforms (row after row): the values each run would draw in two requests, in one.
            u = self.streams.random(rows_per + (np.add.reduceat(n, bounds) if per_run is None else per_run), runs_here)
            if _jit.enabled():  # the same layout, columns and queries in one pass (and gold answers and unit costs)
                gold_table, cost_table = self._gather_tables()
                query, start, gold, unit = _query_layout(
                    u, run, prompt, n, bounds, rows_per, self.n_train, self.train, gold_table, cost_table
                )
            else:
                done = np.cumsum(n) - n  # completions of the call before each row
                seg = np.repeat(np.arange(bounds.size), rows_per)
                uq = u[np.arange(run.size) + done[bounds][seg]]  # run j's values start after rows and completions of runs < j
                col = self._train_col(run, uq)
                start = done + (bounds + rows_per)[seg]  # ... and its completions after its own query uniforms
                query = self.train[run, col]
        else:
            if col is None:
                uq = self.streams.random(rows_per, runs_here)  # one per row, rows in order within each run
                col = self._train_col(run, uq)
            query = self.train[run, col]
            if self._live:  # the live env generates (its own RNG, its own ledger)
                return self.envs[0].pull(prompt, n, query=query - self._offsets[0], width=width)
            u = self.streams.random(np.add.reduceat(n, bounds), runs_here)  # completions, row after row
            start = np.cumsum(n) - n
        # row i's completions draw u[start[i] : start[i] + n[i]] (read in place: no padded copy)
        if self._table is None and runs_here.size == 1:  # one run's call: its own world, no stack needed
            r0 = int(runs_here[0])
            return draw_pulls(self._tables[r0], prompt, query - self._offsets[r0], n, u, start)
        if self._table is None:  # one world per run: each run's rows from its own world, no stack built
            worlds = [self._tables[r] for r in runs_here.tolist()]
            arrays = self._world_arrays() if runs_here.size > 1 else None
            return draw_pulls_worlds(worlds, bounds, prompt, query, query - self._offsets[run], n, u, start, arrays, runs_here)
        if gold is not None and gold.size == run.size:
            return draw_pulls(self.table, prompt, query, n, u, start, gold=gold, unit_cost=unit)
        return draw_pulls(self.table, prompt, query, n, u, start)

    def _world_arrays(self) -> WorldArrays | None:
        """The batch's worlds as :class:`~iapo_gym.sampling.WorldArrays` (best-of-N, compiled path), built on first use."""
        if not _jit.enabled():
            return None
        if self._worlds is None:
            arrays = WorldArrays.of(self._tables)
            self._worlds = False if arrays is None else arrays
        return self._worlds if isinstance(self._worlds, WorldArrays) else None

    def _gather_tables(self) -> tuple[NDArray[Any], NDArray[np.float64]]:
        """``(gold (Q,), cost (P, Q))`` of the shared majority-voting table for :func:`_query_layout`; empty otherwise."""
        if self._gather is None:
            table = self._table
            if table is not None and table.strategy == "mv" and not self._live:
                self._gather = (np.ascontiguousarray(table.mv_arrays()[1]), np.ascontiguousarray(table.cost, dtype=np.float64))
            else:
                self._gather = (np.zeros(0, dtype=np.int64), np.zeros((0, 0)))
        return self._gather


_STACK: list[tuple[list[Any], OutcomeTable]] = []  # the last stack, with weak references to its worlds


def _stacked(tables: list[OutcomeTable]) -> OutcomeTable:
    """``concat_queries(tables)``, reused while the same world objects are batched again.

    Keeps one stack (the last) and only while all its worlds are alive: a sweep fits every agent
    and budget of a task on the same worlds (cached by the sweep), so the stack is built once per
    chunk of seeds instead of once per cell; worlds made afresh for one ``fit_many`` die with it,
    and their stack with them. Weak references keep no world alive.
    """
    import weakref

    from iapo_gym.tables.format import concat_queries

    cached = _cached_stack(tables)
    if cached is not None:
        return cached
    _STACK.clear()  # release the old stack before building the next one
    stack = concat_queries(tables)
    entry = ([weakref.ref(t) for t in tables], stack)
    _STACK.append(entry)
    for t in tables:
        weakref.finalize(t, _drop_stack, id(stack))
    return stack


def _cached_stack(tables: list[OutcomeTable]) -> OutcomeTable | None:
    """The kept stack of exactly these world objects, if any."""
    if _STACK:
        refs, stack = _STACK[0]
        if len(refs) == len(tables) and all(r() is t for r, t in zip(refs, tables, strict=True)):
            return stack
    return None


def _drop_stack(stack_id: int) -> None:
    if _STACK and id(_STACK[0][1]) == stack_id:
        _STACK.clear()


def int_sums_by(key: NDArray[np.int64], values: NDArray[np.int64], size: int) -> NDArray[np.int64]:
    """``(size,)`` sums of the integer ``values`` per ``key`` (``np.bincount(key, values)``, exact, as int64).

    Many keys in non-decreasing order (run-major rows of a round, the usual case) are summed per
    segment by ``np.add.reduceat`` (several times faster than a weighted bincount, which sums in
    float64); a few (a sequential agent's step) by the bincount (fewer calls).
    """
    if key.size > 4096 and bool(np.all(key[1:] >= key[:-1])):
        starts, _ = _segments(key)
        out = np.zeros(size, dtype=np.int64)
        out[key[starts]] = np.add.reduceat(values.astype(np.int64, copy=False), starts)
        return out
    return np.bincount(key, weights=values, minlength=size).astype(np.int64)


def _shaped(x: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.int64]:
    """``x`` as int64 broadcast to ``shape`` (read-only where broadcast; as it is where it already has the shape)."""
    a = np.asarray(x, dtype=np.int64)
    return a if a.shape == shape else np.broadcast_to(a, shape)


def _segments(run: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """First row and row count of each run's segment of run-major rows (``np.r_`` is slow here)."""
    bounds = np.concatenate(([0], np.flatnonzero(run[1:] != run[:-1]) + 1))
    return bounds, np.diff(np.append(bounds, run.size))


#: Rows from which :meth:`RunBatch.pull` scans its request in one compiled pass (:func:`_scan_rows`).
_SCAN_ROWS = 1024


class _RowScan(NamedTuple):
    """What :func:`_scan_rows` found in a request (see there)."""

    limits: NDArray[np.int64]
    increasing: bool
    charge: NDArray[np.int64]
    bounds: NDArray[np.int64]
    total: NDArray[np.int64]


@_jit.kernel
def _scan_rows(run, prompt, n, n_runs):  # noqa: ANN001, ANN202, C901
    """One pass over a request's rows (``B >= 1``): what :meth:`RunBatch.pull` checks, charges and cuts.

    Returns ``(limits, increasing, charge, bounds, total)``: ``limits`` the minimum and maximum of
    ``run``, ``prompt`` and ``n`` (in that order); whether ``run`` is strictly increasing; with
    every run index in ``0..n_runs - 1``, ``charge (n_runs,)`` the completions of each run's rows
    (integer sums: any order gives them) and, when ``run`` never decreases, ``bounds`` the first
    row of each run's segment and ``total`` its completions (:func:`_segments` and
    ``np.add.reduceat(n, bounds)``); empty otherwise.

    The extremes and the order flags are kept in local scalars (registers: the first loop
    vectorises; kept in an array, they were stored and reloaded at every row), and a run's
    completions are summed in a register while its segment lasts.
    """
    b_n = run.shape[0]
    r_lo = r_hi = run[0]
    p_lo = p_hi = prompt[0]
    k_lo = k_hi = n[0]
    steps_down = 0  # rows whose run is below the previous one's
    repeats = 0  # rows whose run equals the previous one's
    for i in range(b_n):
        r, p, k = run[i], prompt[i], n[i]
        r_lo = min(r_lo, r)
        r_hi = max(r_hi, r)
        p_lo = min(p_lo, p)
        p_hi = max(p_hi, p)
        k_lo = min(k_lo, k)
        k_hi = max(k_hi, k)
    for i in range(1, b_n):
        d = run[i] - run[i - 1]
        steps_down += d < 0
        repeats += d == 0
    limits = np.empty(6, dtype=np.int64)
    limits[0], limits[1], limits[2], limits[3], limits[4], limits[5] = r_lo, r_hi, p_lo, p_hi, k_lo, k_hi
    increasing = steps_down == 0 and repeats == 0
    charge = np.zeros(n_runs, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    if r_lo < 0 or r_hi >= n_runs:
        return limits, increasing, charge, none, none
    if steps_down > 0:
        for i in range(b_n):
            charge[run[i]] += n[i]
        return limits, increasing, charge, none, none
    segments = b_n - repeats
    bounds = np.empty(segments, dtype=np.int64)
    total = np.empty(segments, dtype=np.int64)
    j = 0
    bounds[0] = 0
    acc = 0
    for i in range(b_n):
        if i > 0 and run[i] != run[i - 1]:
            total[j] = acc
            charge[run[i - 1]] = acc
            j += 1
            bounds[j] = i
            acc = 0
        acc += n[i]
    total[j] = acc
    charge[run[b_n - 1]] = acc
    return limits, increasing, charge, bounds, total


def _pack_segments(
    bounds: NDArray[np.int64], total: NDArray[np.int64], n: NDArray[np.int64], cap: int
) -> list[tuple[int, int]] | None:
    """:func:`_pack`'s common case from known run segments: calls as ``(first, end)`` segment ranges.

    ``bounds`` and ``total`` are each run segment's first row and completions. Where every run's
    last row starts within its first piece, returns the calls ``_pack`` makes (cut between runs by
    cumulative size); otherwise None (use :func:`_pack`).
    """
    last = np.append(bounds[1:], n.size) - 1
    if not bool(np.all(total - n[last] < PIECE_COMPLETIONS)):
        return None
    unit_call = (np.cumsum(total) - total) // max(int(cap), 1)
    cut = (np.flatnonzero(unit_call[1:] != unit_call[:-1]) + 1).tolist()
    edges = [0, *cut, int(bounds.size)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@_jit.kernel
def _class_calls(run, prompt, n, cls, cap, piece, n_prompts):  # noqa: ANN001, ANN202
    """Compiled twin of :meth:`RunBatch.pull`'s calls for run-major rows of several size classes.

    ``run`` never decreases; ``cls`` is each row's :func:`size_classes`. The rows of each class
    (classes ascending, rows in order) are cut as :func:`_pack` cuts them when every run's last row
    of the class starts within its first piece (between runs, by cumulative size). Returns
    ``(order, call_rows, call_segs, seg_bounds, seg_rows, seg_total)``: the rows class after class,
    call ``c`` the rows ``order[call_rows[c] : call_rows[c + 1]]`` and the run segments
    ``call_segs[c]`` to ``call_segs[c + 1]`` (each segment's first position in ``order``, rows and
    completions), ``call_width[c]`` its largest pull, and ``one_class``: whether every (run, prompt)
    cell's rows lie in one class (:func:`_merged_calls` may then join calls of several classes).
    ``order`` is empty where some run's rows of a class span several pieces (use :func:`_pack`).
    """
    b_n = run.shape[0]
    n_cls = 0
    one_class = True
    stamp = np.full(n_prompts, -1, dtype=np.int64)  # the last run that pulled each prompt, and in which class
    stamp_cls = np.zeros(n_prompts, dtype=np.int64)
    for i in range(b_n):
        n_cls = max(n_cls, cls[i] + 1)
        p = prompt[i]
        if stamp[p] == run[i]:
            one_class &= stamp_cls[p] == cls[i]
        stamp[p] = run[i]
        stamp_cls[p] = cls[i]
    start = np.zeros(n_cls + 1, dtype=np.int64)
    for i in range(b_n):
        start[cls[i] + 1] += 1
    for c in range(n_cls):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(b_n, dtype=np.int64)
    for i in range(b_n):  # counting sort by class, stable: each class's rows stay run-major
        order[fill[cls[i]]] = i
        fill[cls[i]] += 1
    seg_bounds = np.empty(b_n, dtype=np.int64)
    seg_rows = np.empty(b_n, dtype=np.int64)
    seg_total = np.empty(b_n, dtype=np.int64)
    call_rows = np.empty(b_n + 1, dtype=np.int64)
    call_segs = np.empty(b_n + 1, dtype=np.int64)
    call_width = np.zeros(b_n + 1, dtype=np.int64)
    n_seg = 0
    n_call = 0
    step = max(cap, 1)
    for c in range(n_cls):
        lo, hi = start[c], start[c + 1]
        if lo == hi:
            continue
        before = 0  # completions of the class's earlier segments
        unit = -1
        for j in range(lo, hi):
            i = order[j]
            if j == lo or run[i] != run[order[j - 1]]:  # a new run segment
                if j > lo and seg_total[n_seg - 1] - n[order[j - 1]] >= piece:
                    none = np.zeros(0, dtype=np.int64)
                    return none, call_rows, call_segs, seg_bounds, seg_rows, seg_total, call_width, one_class
                if j > lo:
                    before += seg_total[n_seg - 1]
                u = before // step
                if u != unit:  # a new call
                    call_rows[n_call] = j
                    call_segs[n_call] = n_seg
                    n_call += 1
                    unit = u
                seg_bounds[n_seg] = j
                seg_rows[n_seg] = 0
                seg_total[n_seg] = 0
                n_seg += 1
            seg_rows[n_seg - 1] += 1
            seg_total[n_seg - 1] += n[i]
            call_width[n_call - 1] = max(call_width[n_call - 1], n[i])
        if seg_total[n_seg - 1] - n[order[hi - 1]] >= piece:
            return np.zeros(0, dtype=np.int64), call_rows, call_segs, seg_bounds, seg_rows, seg_total, call_width, one_class
    call_rows[n_call] = b_n
    call_segs[n_call] = n_seg
    return (
        order, call_rows[: n_call + 1], call_segs[: n_call + 1], seg_bounds[:n_seg], seg_rows[:n_seg], seg_total[:n_seg],
        call_width[:n_call], one_class,
    )  # fmt: skip


def _merged_calls(
    call_rows: NDArray[np.int64], call_segs: NDArray[np.int64], call_width: NDArray[np.int64], cap: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """:func:`_class_calls`' calls joined in order while a joined call's rows times its widest pull stay within ``cap``.

    ``call_width`` is each call's largest pull. Consecutive calls are joined whole (their run
    segments follow each other; a run may own several segments of a joined call, one per class).
    """
    rows = np.diff(call_rows).tolist()
    keep = [0]
    count, width = 0, 0
    for c, w in enumerate(call_width.tolist()):
        if c and (count + rows[c]) * max(width, w) > cap:
            keep.append(c)
            count, width = 0, 0
        count += rows[c]
        width = max(width, w)
    keep.append(len(rows))
    return call_rows[keep], call_segs[keep]


def _pack(run: NDArray[np.int64], n: NDArray[np.int64], cap: int) -> list[NDArray[np.int64]]:
    """Split run-major rows into calls of about ``cap`` completions, never splitting a run's piece.

    A run's rows are cut into pieces of :data:`PIECE_COMPLETIONS` (by its own cumulative count);
    a call holds whole pieces, at most one per run, so each run's partial sums are formed the
    same way whatever else is in the batch.
    """
    if run.size == 0:
        return []
    bounds, rows_per = _segments(run)
    unit_size = np.add.reduceat(n, bounds)
    # A run's last row starts after all its other completions: if that is within the first piece
    # for every run, every row is (one piece per run, the common case): cut between runs by
    # cumulative size, without per-row arithmetic.
    if bool(np.all(unit_size - n[bounds + rows_per - 1] < PIECE_COMPLETIONS)):
        unit_call = (np.cumsum(unit_size) - unit_size) // max(int(cap), 1)
        cuts = bounds[1:][unit_call[1:] != unit_call[:-1]]
        return np.split(np.arange(run.size), cuts)
    before = np.cumsum(n) - n
    within = before - np.repeat(before[bounds], rows_per)  # completions of the run before this row
    piece = within // PIECE_COMPLETIONS
    unit_key = np.concatenate(([True], (run[1:] != run[:-1]) | (piece[1:] != piece[:-1])))
    starts = np.flatnonzero(unit_key)
    sizes = np.add.reduceat(n, starts)
    calls: list[NDArray[np.int64]] = []
    cur: list[tuple[int, int]] = []
    cur_runs: set[int] = set()
    cur_size = 0
    ends = np.append(starts[1:], run.size)
    for st, en, sz in zip(starts.tolist(), ends.tolist(), sizes.tolist(), strict=True):
        r = int(run[st])
        if cur and (r in cur_runs or cur_size + sz > cap):
            calls.append(np.concatenate([np.arange(a, b) for a, b in cur]))
            cur, cur_runs, cur_size = [], set(), 0
        cur.append((st, en))
        cur_runs.add(r)
        cur_size += sz
    if cur:
        calls.append(np.concatenate([np.arange(a, b) for a, b in cur]))
    return calls


def run_state_bytes(env: Any) -> int:
    """Rough bytes one run of a batch keeps between calls on ``env``'s task: tallies, flags, means."""
    base = _unwrap(env)
    arms = int(base.n_prompts) * int(base.n_max)
    w = np.ascontiguousarray(base.contexts.weights, dtype=np.float64)
    rows = _objective_rows(w.tobytes(), w.shape) if w.size else 1
    return 8 * arms * (rows + 2) + 40 * len(base.contexts) * arms + 8 * int(getattr(base.train_queries, "size", 0))


@lru_cache(maxsize=64)
def _objective_rows(weights: bytes, shape: tuple[int, ...]) -> int:
    """Distinct objective-weight rows of a context set (cached: every env of a sweep asks the same)."""
    w = np.frombuffer(weights, dtype=np.float64).reshape(shape)
    return int(np.unique(w[:, :-1], axis=0).shape[0])


def _table_bytes(table: Any) -> int:
    names = ("answer_probs", "gold", "outcome_values", "outcome_probs", "cost")
    return sum(int(getattr(getattr(table, k, None), "nbytes", 0)) for k in names)


def iter_chunks(
    make_env: Any, seeds: Sequence[int], memory_budget: int | None = None
) -> Iterator[tuple[list[Any], list[int]]]:
    """Yield ``(envs, seeds)`` chunks of runs whose per-run state and own tables fit half of ``memory_budget``.

    Envs are built lazily (``make_env(seed)``), one chunk at a time, so a synthetic task's
    per-seed worlds are never all in memory. Runs are independent (one stream each), so the
    chunking changes no result.
    """
    budget = resolve_memory_budget(memory_budget) // 2
    envs: list[Any] = []
    chunk: list[int] = []
    used = 0
    for seed in seeds:
        env = make_env(int(seed))
        table = getattr(_unwrap(env), "table", None)
        own = _table_bytes(table) if table is not None and not any(
            getattr(_unwrap(e), "table", None) is table for e in envs[:1]
        ) else 0
        need = run_state_bytes(env) + own
        if envs and used + need > budget:
            yield envs, chunk
            envs, chunk, used = [], [], 0
            need = run_state_bytes(env) + (_table_bytes(table) if table is not None else 0)
        envs.append(env)
        chunk.append(int(seed))
        used += need
    if envs:
        yield envs, chunk
