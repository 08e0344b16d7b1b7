"""The public batch engine (iapo_gym.runs): per-run streams, the budget rule, bounded calls, invariance."""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
from agents_helpers import make_env, small_table

from iapo_gym.agents import make_agent
from iapo_gym.agents.base import BatchAgent, Policy, TablePolicy
from iapo_gym.agents.testing import AgentCheckError, check_invariance
from iapo_gym.env import IAPOEnv
from iapo_gym.ledger import BudgetLedger
from iapo_gym.runs import PIECE_COMPLETIONS, RunBatch, RunStreams, _pack, iter_chunks, size_classes


def _reference(seed: int, salt: str, n: int) -> np.ndarray:
    ss = np.random.SeedSequence([seed, zlib.crc32(salt.encode())])
    return np.random.Generator(np.random.PCG64(ss)).random(n)


@pytest.mark.parametrize("jit", ["0", "1"])
def test_each_run_reads_its_own_generator_in_order_however_requests_are_cut(monkeypatch, jit):
    """On both paths (the buffered values are copied by a kernel when numba is on)."""
    if jit == "1":
        pytest.importorskip("numba")
    monkeypatch.setenv("IAPO_GYM_JIT", jit)
    streams = RunStreams([3, 8, 0], "psst")
    got: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    # small (buffered), large (direct), zero and mixed requests, runs in any order
    requests = [([5, 2, 0], [0, 1, 2]), ([3000], [1]), ([7, 1], [2, 0]), ([9000, 4, 1], [0, 2, 1]), ([1], [1])]
    requests += [([4000, 90, 3], [1, 0, 2]), ([50, 60, 70], [2, 1, 0])]  # a refill next to buffered runs
    for counts, runs in requests:
        out = streams.random(counts, runs)
        assert out.shape == (sum(counts),)
        pos = 0
        for c, r in zip(counts, runs, strict=True):
            got[r].append(out[pos : pos + c])
            pos += c
    for run, seed in enumerate([3, 8, 0]):
        drawn = np.concatenate(got[run])
        np.testing.assert_array_equal(drawn, _reference(seed, "psst", drawn.size))
    assert not np.array_equal(_reference(3, "psst", 4), _reference(3, "topk", 4))  # the agent name salts the stream


@pytest.mark.parametrize("in_place", [True, False])
def test_compiled_refills_leave_buffers_and_generators_as_numpys(monkeypatch, in_place):
    """Both kernel paths -- PCG64 stepped in the generator's own memory (``in_place``), or each
    generator's own C ``next_double`` called by address -- leave, after any requests, the buffers,
    positions and generator states of the numpy path, so later draws agree too."""
    pytest.importorskip("numba")
    from iapo_gym import _pcg

    if in_place:
        assert _pcg.state_in_place()  # numpy's layout on this platform (the path every batch takes here)
    else:
        monkeypatch.setattr(_pcg, "state_in_place", lambda: False)
    requests = [([5, 2, 0, 4096], [0, 1, 2, 3]), ([3000, 2049], [1, 3]), ([7, 1, 2047], [2, 0, 3]), ([9000, 4, 1], [0, 2, 1])]
    requests += [([4000, 90, 3, 0], [1, 0, 2, 3]), ([50, 60, 70, 2048], [2, 1, 0, 3]), ([4096, 4097], [0, 1])]
    seen = {}
    for jit in ("0", "1"):
        monkeypatch.setenv("IAPO_GYM_JIT", jit)
        streams = RunStreams([3, 8, 0, 5], "psst")
        outs = [streams.random(c, r) for c, r in requests]
        states = [g.bit_generator.state["state"] for g in streams.generators]
        later = [g.random(3) for g in streams.generators]  # the generators go on where they stood
        seen[jit] = (outs, streams.buffer.copy(), streams.position.copy(), states, later)
    for a, b in zip(seen["0"][0], seen["1"][0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(seen["0"][1], seen["1"][1])
    np.testing.assert_array_equal(seen["0"][2], seen["1"][2])
    assert seen["0"][3] == seen["1"][3]
    np.testing.assert_array_equal(np.stack(seen["0"][4]), np.stack(seen["1"][4]))
    assert len({str(st) for st in seen["1"][3]}) == 4  # four distinct streams, each advanced on its own


def test_random_rows_gives_each_run_its_next_values_in_and_out_of_step():
    """random_rows' fast paths (a few values per run, windows of the buffer, refills) keep every run's order."""
    seeds = [3, 8, 0, 5]
    streams = RunStreams(seeds, "rows")
    got: dict[int, list[np.ndarray]] = {r: [] for r in range(4)}
    rng = np.random.default_rng(0)
    for _ in range(40):
        runs = np.sort(rng.choice(4, size=int(rng.integers(1, 5)), replace=False))
        k = int(rng.choice([0, 1, 2, 15, 16, 800, 3000]))
        rows = streams.random_rows(runs, k)
        assert rows.shape == (runs.size, k)
        for i, r in enumerate(runs.tolist()):
            got[r].append(rows[i])
        if rng.random() < 0.5:  # put the runs out of step
            r = int(rng.integers(4))
            got[r].append(streams.random([int(rng.integers(1, 50))], [r]))
    for run, seed in enumerate(seeds):
        drawn = np.concatenate(got[run])
        np.testing.assert_array_equal(drawn, _reference(seed, "rows", drawn.size))


def test_row_generator_gives_row_i_the_stream_of_run_i():
    a, b = RunStreams([4, 5], "x"), RunStreams([5], "x")
    rows = a.rows(np.array([1, 0])).random((2, 3))
    np.testing.assert_array_equal(rows[0], b.random([3]))
    with pytest.raises(ValueError, match="one row per run"):
        a.rows(np.array([0])).random((2, 3))


def test_a_refused_pull_charges_no_ledger_and_draws_nothing():
    table = small_table("mv")
    envs = [make_env(table, s, budget=50) for s in range(3)]
    batch = RunBatch(envs, 10, [0, 1, 2], "t")
    with pytest.raises(RuntimeError, match="would spend 11 completions > its budget 10"):
        batch.pull([0, 1, 0], [0, 0, 1], [6, 1, 5])  # run 0 asks 11
    assert [e.ledger.spent for e in envs] == [0, 0, 0] and batch.spent.tolist() == [0, 0, 0]
    assert batch.streams.random([1], [0])[0] == _reference(0, "t", 1)[0]  # stream untouched
    got = {int(r): int(n) for pulls, rows in batch.pull([2, 0], [1, 3], [4, 6]) for r, n in zip(rows, pulls.n, strict=True)}
    assert got == {0: 4, 1: 6} and [e.ledger.spent for e in envs] == [6, 0, 4]
    with pytest.raises(ValueError, match="prompt indices"):
        batch.pull([0], [9], [1])
    with pytest.raises(ValueError, match="train split"):
        batch.pull([0], [0], [1], col=[10_000])


def test_calls_respect_the_cap_and_never_split_or_merge_a_runs_piece():
    rng = np.random.default_rng(0)
    run = np.sort(rng.integers(0, 40, 500))
    n = rng.integers(1, 33, 500)
    calls = _pack(run, n, cap=300)
    assert np.array_equal(np.concatenate(calls), np.arange(500))
    sizes = [int(n[c].sum()) for c in calls]
    per_run = np.bincount(run, weights=n)
    assert all(s <= 300 + per_run.max() for s in sizes)  # a call overshoots by at most one run
    assert all(np.unique(run[c]).size == np.unique(run[c]).size for c in calls)
    owners = [set(run[c].tolist()) for c in calls]
    assert all(sum(r in o for o in owners) == 1 for r in np.unique(run).tolist())  # a run's rows: one call
    # one run bigger than a piece: cut by its own cumulative count, one piece per call
    big = np.full(3, PIECE_COMPLETIONS // 2 + 1)
    calls = _pack(np.zeros(3, np.int64), big, cap=10)
    assert [c.tolist() for c in calls] == [[0, 1], [2]]
    # a run's last row may cross the piece boundary and stay in its first piece; one completion
    # more before it starts a second piece, in a call of its own (a call holds one piece per run)
    straddle = np.array([PIECE_COMPLETIONS - 1, 5, 3])
    assert [c.tolist() for c in _pack(np.array([0, 0, 1]), straddle, cap=1 << 30)] == [[0, 1, 2]]
    over = np.array([PIECE_COMPLETIONS, 5, 3])
    assert [c.tolist() for c in _pack(np.array([0, 0, 1]), over, cap=1 << 30)] == [[0], [1, 2]]
    assert size_classes(np.array([32, 23, 22, 1]), 32).tolist() == [0, 0, 1, 9]


@pytest.mark.parametrize("strategy", ["mv", "bon"])
def test_compiled_class_calls_are_packs_calls(monkeypatch, strategy):
    """Run-major rows of several sizes (PSST's later rounds): the compiled cut gives ``_pack``'s calls, rows and draws."""
    pytest.importorskip("numba")
    from iapo_gym import runs as runs_mod

    monkeypatch.setenv("IAPO_GYM_JIT", "1")
    table = small_table(strategy, n_prompts=5, n_max=32, n_queries=30)
    rng = np.random.default_rng(1)
    run = np.sort(rng.integers(0, 60, 3000))
    prompt, n = rng.integers(0, 5, run.size), rng.integers(1, 33, run.size)

    def calls(cap: int) -> list[tuple[list[int], list[int], list[int], list[int], list[float]]]:
        batch = RunBatch([make_env(table, s) for s in range(60)], 10**6, list(range(60)), "t")
        batch._cap = cap
        out = []
        for pulls, rows in batch.pull(run, prompt, n):
            out.append((np.asarray(rows).tolist(), pulls.prompt.tolist(), pulls.query.tolist(), pulls.n.tolist(),
                        np.asarray(pulls.values, dtype=np.float64).ravel().tolist()))  # fmt: skip
        return out

    for cap in (1, 700, 5000, 10**6):
        compiled = calls(cap)
        with monkeypatch.context() as m:  # the numpy cut: size classes, then _pack
            m.setattr(runs_mod, "_class_calls", lambda *a: (*(np.zeros(0, np.int64),) * 7, False))
            reference = calls(cap)
        assert compiled == reference
        assert sorted(i for c in compiled for i in c[0]) == list(range(run.size))
        assert len(compiled) > (1 if cap < 10**6 else 0)


@pytest.mark.parametrize("mixed", [False, True])
def test_ragged_pulls_merge_size_classes_without_changing_a_draw_or_a_tally(monkeypatch, mixed):
    """``pull(..., ragged=True)``: fewer calls where every cell keeps one size class; the same draws and tallies.

    With a (run, prompt) cell pulled at two sizes of different classes the calls stay apart (a
    cell's sums would otherwise be formed in one call instead of two).
    """
    pytest.importorskip("numba")
    from iapo_gym.agents._engine import NestedStats

    monkeypatch.setenv("IAPO_GYM_JIT", "1")
    table = small_table("mv", n_prompts=6, n_max=32, n_queries=30)
    rng = np.random.default_rng(3)
    n_runs = 60  # 1,080 rows: a round's request, scanned and cut by the compiled pass
    size = rng.integers(1, 33, (n_runs, 6))  # PSST's rows: one size per (run, prompt), several pulls each
    run = np.repeat(np.arange(n_runs), 6 * 3)
    prompt = np.tile(np.repeat(np.arange(6), 3), n_runs)
    n = size[run, prompt]
    if mixed:
        n[1] = 1 if n[0] > 2 else 32  # run 0's prompt 0: a second size, in another class

    def pulled(ragged: bool) -> tuple:
        batch = RunBatch([make_env(table, s) for s in range(n_runs)], 10**6, list(range(n_runs)), "t")
        stats = NestedStats(n_runs, 6, 32, batch.contexts)
        answers = [[] for _ in range(run.size)]
        calls = 0
        for pulls, rows in batch.pull(run, prompt, n, ragged=ragged):
            calls += 1
            stats.add(pulls, run[rows])
            for i, r in enumerate(np.asarray(rows).tolist()):
                answers[r] = pulls.outcome[i, : n[r]].tolist()
        return calls, answers, stats.gain, stats.cost, stats.count, batch.streams.random(np.ones(n_runs, np.int64)).tolist()

    merged, apart = pulled(True), pulled(False)
    assert apart[0] > 1
    assert (merged[0] == apart[0]) if mixed else (merged[0] < apart[0])
    assert merged[1] == apart[1]  # every row's answers: each run drew the same values for the same rows
    for x, y in zip(merged[2:5], apart[2:5], strict=True):
        assert x.tobytes() == y.tobytes()
    assert merged[5] == apart[5]  # and the streams end in the same place


def test_streams_serve_a_run_asked_twice_in_order_on_both_paths(monkeypatch):
    """``RunStreams.random`` with a repeated run: its requests served in order (the values of consecutive requests)."""
    counts, runs = np.array([3, 300, 5, 2, 70]), np.array([1, 0, 1, 1, 0])
    for jit in ("0", "1"):
        monkeypatch.setenv("IAPO_GYM_JIT", jit)
        one, apart = RunStreams([7, 8], "s"), RunStreams([7, 8], "s")
        got = one.random(counts, runs)
        want = np.concatenate([apart.random(counts[i : i + 1], runs[i : i + 1]) for i in range(runs.size)])
        assert got.tobytes() == want.tobytes()
        assert one.random(np.array([4, 4])).tobytes() == apart.random(np.array([4, 4])).tobytes()


def test_chunks_build_envs_lazily_within_the_memory_budget():
    built: list[int] = []

    def factory(seed: int) -> IAPOEnv:
        built.append(seed)
        return IAPOEnv("SynthCategorical", world_seed=seed, split_seed=seed)

    chunks = iter_chunks(factory, range(6), memory_budget=1 << 20)
    envs, seeds = next(chunks)
    assert len(seeds) < 6 and built == seeds + [len(seeds)]  # only the next chunk's first env is built ahead
    rest = [s for _, chunk in chunks for s in chunk]
    assert seeds + rest == list(range(6))


ZOO = ["psst", "psst_model", "topk4", "uniform", "triple_nrandom", "seqhalving", "psst_paired", "topk_paired",
       "ucb", "softmax", "egreedy"]


@pytest.mark.parametrize("name", ZOO)
def test_a_seed_determines_its_run_on_per_seed_worlds(name):
    """Synthetic tasks stack one world per seed: the run must not depend on its neighbours' worlds."""
    check_invariance(make_agent(name), lambda s: IAPOEnv("SynthBernoulli", world_seed=s, split_seed=s), 1500, (0, 3, 4))


def test_invariance_holds_on_the_real_math_table(math_data_dir):
    """MATH (a shared table, per-seed 80/20 re-split): PSST and Top-K at T = 5,000."""
    for name in ("psst", "topk4"):
        check_invariance(make_agent(name), lambda s: IAPOEnv("MATH", split_seed=s), 5000, (0, 1))


@dataclass
class _Leaky(BatchAgent):
    """A batch agent that draws from ONE generator for the whole batch: its runs depend on the batch."""

    name: ClassVar[str] = "leaky"

    def fit_runs(self, batch: RunBatch) -> list[Policy]:
        rng = np.random.default_rng(batch.seeds)  # wrong: seeded by the whole batch
        arms = rng.integers(0, batch.n_prompts * batch.n_max, (batch.n_runs, len(batch.contexts)))
        return [TablePolicy(batch.contexts, arms[s], batch.n_max) for s in range(batch.n_runs)]


def test_check_invariance_catches_a_batch_dependent_agent():
    table = small_table("mv")
    with pytest.raises(AgentCheckError, match="than fitted alone"):
        check_invariance(_Leaky(), lambda s: make_env(table, s), 10, (0, 1))


# ----------------------------------------------------------------- train.py: resume == uninterrupted
TINY = "IAPO-TestRunsTinyBoN-v0"


@pytest.fixture()
def tiny_synth():
    import iapo_gym
    from iapo_gym.tables.testing import example_table
    from iapo_gym.tasks import TASKS, TaskInfo, register_task

    register_task(TaskInfo("TestRunsTinyBoN", "bon", "synthetic", "test world",
                           lambda seed: example_table("bon", seed=seed, n_prompts=3, n_queries=20, n_max=4)))
    iapo_gym.register_envs()
    try:
        yield TINY
    finally:
        TASKS.pop("TestRunsTinyBoN", None)
        gym.registry.pop(TINY, None)


def _rows(path: Path) -> dict[tuple[str, str, str], list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {(r["agent"], r["budget"], r["seed"]): [v for k, v in r.items() if k != "wall_s"] for r in rows}


def test_an_interrupted_and_resumed_experiment_writes_the_same_rows(tiny_synth, tmp_path):
    from iapo_gym.experiments import train

    def run(out: Path, runs: int) -> None:
        args = train.Args(env=tiny_synth, agents="psst,ucb,psst_paired", budgets="60,300", runs=runs, out=str(out),
                          reference="psst", progress=False, report="")
        train.run_experiment(args, log=lambda s: None)

    run(tmp_path / "whole", 5)
    run(tmp_path / "resumed", 2)  # interrupted after two seeds...
    run(tmp_path / "resumed", 5)  # ...and resumed: seeds 2..4 are fitted in a batch of their own
    whole, resumed = _rows(tmp_path / "whole" / "results.csv"), _rows(tmp_path / "resumed" / "results.csv")
    assert len(whole) == 3 * 2 * 5 and whole == resumed


def test_the_batched_agent_example_in_the_docs_passes_the_checks():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "AGENTS.md").read_text()
    code = re.findall(r"```python\n# my_batched_agent.py\n(.*?)```", doc, re.S)[0]
    assert "from iapo_gym.agents._" not in code  # public API only
    exec(compile(code, "docs/AGENTS.md", "exec"), {})  # defines the agent and runs check_agent (incl. invariance)


def test_worlds_are_stacked_lazily_once_and_released_with_them():
    import gc

    import iapo_gym.runs as runs_module

    worlds = [small_table("mv", seed=s) for s in (11, 12, 13)]
    envs = [make_env(w, s) for s, w in enumerate(worlds)]
    batch = RunBatch(envs, 40, [0, 1, 2], "t")
    batch.cap_calls()
    assert batch._cap == 1 and batch._table is None  # no stack yet: each call samples one run's own world
    calls = list(batch.pull([0, 1, 2, 0], [0, 1, 2, 3], [5, 5, 5, 5]))
    assert [sorted(rows.tolist()) for _, rows in calls] == [[0, 3], [1], [2]] and batch._table is None
    # a call over several runs stacks the worlds, once: the next batch over the same worlds reuses it
    other = RunBatch(envs, 40, [0, 1, 2], "u")
    list(other.pull([0, 1, 2], [0, 0, 0], [2, 2, 2]))
    stack = other.table
    assert stack.n_queries == sum(w.n_queries for w in worlds)
    again = RunBatch(envs, 40, [0, 1, 2], "v")
    assert again.table is stack
    again.cap_calls()
    assert again._cap > 1  # the stack exists: calls may mix runs again
    del batch, other, again, stack, calls, envs, worlds
    small_table.cache_clear()
    gc.collect()
    assert runs_module._STACK == []


def test_own_world_draws_equal_stacked_draws():
    worlds = [small_table("bon", seed=s) for s in (21, 22)]
    solo = RunBatch([make_env(w, s) for s, w in enumerate(worlds)], 60, [4, 5], "t")
    solo.cap_calls()
    stacked = RunBatch([make_env(w, s) for s, w in enumerate(worlds)], 60, [4, 5], "t")
    assert stacked.table is not None
    args = ([0, 1, 1], [1, 2, 0], [5, 6, 4])
    a = {int(r): p for pulls, rows in solo.pull(*args) for r, p in zip(rows, pulls.values, strict=True)}
    b = {int(r): p for pulls, rows in stacked.pull(*args) for r, p in zip(rows, pulls.values, strict=True)}
    assert a.keys() == b.keys() == {0, 1, 2}
    for r in a:
        np.testing.assert_array_equal(a[r][: args[2][r]], b[r][: args[2][r]])


@pytest.mark.parametrize("rows_n,same_n", [(60, False), (3000, False), (3000, True)])
@pytest.mark.parametrize("capped", [False, True])
def test_compiled_query_layout_draws_the_numpy_paths_queries_and_answers(monkeypatch, capped, rows_n, same_n):
    """The compiled layout (query uniform -> train column -> query, completion starts, gold answers
    and unit costs) and the in-place table CDF give every pull the numpy path's query and answers, in
    one call or many; a round's many rows are scanned in one compiled pass (checks, charges, run
    segments and the calls cut from them) into the numpy path's calls."""
    pytest.importorskip("numba")
    table = small_table("mv")
    rng = np.random.default_rng(3)
    run = np.sort(rng.integers(0, 4, rows_n))
    prompt, n = rng.integers(0, table.n_prompts, rows_n), rng.integers(1, table.n_max + 1, rows_n)
    if same_n:
        n[:] = 2
    budget = int(n.sum())

    def draws(jit: str) -> tuple[np.ndarray, ...]:
        monkeypatch.setenv("IAPO_GYM_JIT", jit)
        batch = RunBatch([make_env(table, s, budget=budget) for s in range(4)], budget, [5, 6, 7, 8], "layout")
        if capped:
            batch.cap_calls(40 if rows_n < 1000 else 900)  # several calls, each run's rows in one of them
        query, outcome = np.zeros(rows_n, np.int64), np.full((rows_n, table.n_max), -1)
        gold, unit = np.zeros(rows_n, np.int64), np.zeros(rows_n)
        calls = []
        for pulls, rows in batch.pull(run, prompt, n):
            query[rows], outcome[rows, : pulls.width] = pulls.query, pulls.outcome
            gold[rows], unit[rows] = pulls.gold, pulls.unit_cost
            calls.append(rows.tolist())
        return query, outcome, gold, unit, batch.spent.copy(), batch.streams.random(np.ones(4, np.int64)), calls

    q0, o0, g0, u0, spent0, next0, calls0 = draws("0")
    q1, o1, g1, u1, spent1, next1, calls1 = draws("1")
    np.testing.assert_array_equal(q1, q0)
    np.testing.assert_array_equal(o1, o0)
    np.testing.assert_array_equal(g1, g0)
    np.testing.assert_array_equal(u1, u0)
    np.testing.assert_array_equal(g0, table.gold[q0])
    np.testing.assert_array_equal(u0, table.cost[prompt, q0])
    np.testing.assert_array_equal(spent1, spent0)
    np.testing.assert_array_equal(spent0, np.bincount(run, weights=n, minlength=4).astype(np.int64))
    np.testing.assert_array_equal(next1, next0)  # the same number of values taken from every stream
    assert calls1 == calls0  # the same calls, rows in the same order
    assert len(calls0) > (1 if capped else 0)
    assert np.unique(q0).size > 5 and (o0 >= 0).sum() == n.sum()


@pytest.mark.parametrize("jit", ["0", "1"])
def test_a_large_bad_request_is_refused_before_any_charge(monkeypatch, jit):
    """Many rows (scanned in one compiled pass when numba is on): the same errors, nothing charged."""
    if jit == "1":
        pytest.importorskip("numba")
    monkeypatch.setenv("IAPO_GYM_JIT", jit)
    table = small_table("mv")
    batch = RunBatch([make_env(table, s, budget=100_000) for s in range(3)], 100_000, [1, 2, 3], "scan")
    run, prompt, n = np.repeat(np.arange(3), 700), np.zeros(2100, np.int64), np.ones(2100, np.int64)
    for bad_run, bad_prompt, bad_n, what in [
        (np.where(np.arange(2100) == 2099, 3, run), prompt, n, "run indices"),
        (np.where(np.arange(2100) == 5, -1, run), prompt, n, "run indices"),
        (run, np.where(np.arange(2100) == 7, table.n_prompts, prompt), n, "prompt indices"),
        (run, prompt, np.where(np.arange(2100) == 9, 0, n), "N must"),
        (run, prompt, np.where(np.arange(2100) == 9, table.n_max + 1, n), "N must"),
    ]:
        with pytest.raises(ValueError, match=what):
            batch.pull(bad_run, bad_prompt, bad_n)
    assert batch.spent.tolist() == [0, 0, 0]
    assert sum(int(p.n.sum()) for p, _ in batch.pull(run, prompt, n)) == 2100
    assert batch.spent.tolist() == [700, 700, 700]


def test_int_sums_by_is_the_bincount_for_sorted_and_unsorted_keys():
    from iapo_gym.runs import int_sums_by

    rng = np.random.default_rng(2)
    for _ in range(30):
        key = rng.integers(0, 9, int(rng.choice([0, 1, 50, 5_000, 9_000])))  # a step's few rows, a round's many
        values = rng.integers(0, 1 << 40, key.size)  # large: a float32 sum would round
        for k in (key, np.sort(key)):
            got = int_sums_by(k, values, 12)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, np.bincount(k, weights=values, minlength=12).astype(np.int64))


def test_fill_keeps_each_runs_values_in_stream_order_for_a_consumer_in_place():
    """A compiled loop reads buffer[s, position[s]:] after fill(); mixed with random(), every run's order holds."""
    seeds = [6, 1, 4]
    streams = RunStreams(seeds, "loop")
    got: dict[int, list[np.ndarray]] = {r: [] for r in range(3)}
    rng = np.random.default_rng(2)
    width = streams.buffer.shape[1]
    for _ in range(60):
        runs = np.sort(rng.choice(3, size=int(rng.integers(1, 4)), replace=False))
        k = int(rng.choice([1, 37, width // 2, width]))
        streams.fill(runs, k)
        for r in runs.tolist():
            pos = int(streams.position[r])
            assert width - pos >= k
            take = int(rng.integers(0, k + 1))  # a consumer takes up to k values in place
            got[r].append(streams.buffer[r, pos : pos + take].copy())
            streams.position[r] = pos + take
        if rng.random() < 0.3:
            r = int(rng.integers(3))
            got[r].append(streams.random([int(rng.integers(1, 5000))], [r]))
    for run, seed in enumerate(seeds):
        drawn = np.concatenate(got[run])
        np.testing.assert_array_equal(drawn, _reference(seed, "loop", drawn.size))
    with pytest.raises(ValueError, match=f"k must lie in 0..{width}"):
        streams.fill([0], width + 1)


def test_charge_drawn_checks_like_pull_and_loop_table_needs_own_plain_ledgers():
    table = small_table("mv")
    envs = [make_env(table, s, budget=50) for s in range(3)]
    batch = RunBatch(envs, 10, [0, 1, 2], "t")
    assert batch.loop_table() is table
    batch.charge_drawn(np.array([4, 0, 10]))
    assert [e.ledger.spent for e in envs] == [4, 0, 10] and batch.remaining.tolist() == [6, 10, 0]
    with pytest.raises(RuntimeError, match="would spend 11 completions > its budget 10"):
        batch.charge_drawn(np.array([7, 0, 0]))  # run 0 overdrew: nothing is charged
    assert [e.ledger.spent for e in envs] == [4, 0, 10]
    with pytest.raises(ValueError, match="one whole number >= 0 per run"):
        batch.charge_drawn(np.array([1, 2]))
    shared = BudgetLedger(100)  # one ledger for every run: the loop must charge before it draws
    assert RunBatch([make_env(table, s, budget=shared) for s in range(3)], 10, [0, 1, 2], "t").loop_table() is None
