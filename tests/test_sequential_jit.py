"""UCB, epsilon-greedy and Softmax decide the same with the compiled step kernels as with numpy.

The kernels (``iapo_gym.agents._sequential_kernels``, used when numba is installed) must give every
seed the same policy, bit for bit, as the numpy step (``IAPO_GYM_JIT=0``): the same arms per
context, the same deployed means and counts, the same spend and number of steps. Each test also
checks that the kernels really ran (a comparison of numpy with itself could not fail).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba")

from iapo_gym.agents import _sequential_kernels as kernels  # noqa: E402
from iapo_gym.agents import make_agent  # noqa: E402
from iapo_gym.agents._sequential import KernelStep, Step  # noqa: E402
from iapo_gym.env import IAPOEnv  # noqa: E402
from iapo_gym.ledger import BudgetLedger  # noqa: E402
from iapo_gym.runs import RunStreams  # noqa: E402
from iapo_gym.tasks import load_task_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_pins import fingerprint, load_math  # noqa: E402

CONFIGS = [
    ("ucb", {}),
    ("ucb", {"c": 2.0, "lcb": 0.5}),
    ("egreedy", {}),
    ("egreedy", {"epsilon": 0.6, "lcb": 0.3}),
    ("softmax", {}),
    ("softmax", {"tau": 0.5, "lcb": 1.0}),
]
KERNEL_OF = {"ucb": "best_arm", "egreedy": "best_arm", "softmax": "softmax_candidates"}


def _make_env(task: str):
    if task == "MATH":
        table = load_math()
        if table is None:
            pytest.skip("the released MATH table is absent (../shared/data/published/MATH_final.pkl)")
        return lambda s: IAPOEnv(table, split_seed=s)
    if task == "SmolArith":
        table = load_task_table(task)
        return lambda s: IAPOEnv(table, split_seed=s)
    return lambda s: IAPOEnv(load_task_table(task, world_seed=s), world_seed=s)


def _prints(policies: list[Any], make_env) -> list[str]:
    env = make_env(0).unwrapped
    return [fingerprint(p, env.contexts.weights, env.n_prompts * env.n_max) for p in policies]


def _fit(monkeypatch, flag: str, name: str, kwargs: dict, make_env, budget: int, seeds: list[int]) -> list[Any]:
    monkeypatch.setenv("IAPO_GYM_JIT", flag)
    return make_agent(name, **kwargs).fit_many(make_env, budget, seeds)


def _counting(monkeypatch, name: str) -> list[int]:
    """Count the calls of ``name``'s choice kernel, the record kernel, the fused MV step kernel and the whole loop."""
    calls = [0, 0, 0, 0]
    for i, fn in enumerate((KERNEL_OF[name], "record", "step_mv", "run_steps")):
        original = getattr(kernels, fn)

        def counted(*args, _original=original, _i=i):
            calls[_i] += 1
            return _original(*args)

        monkeypatch.setattr(kernels, fn, counted)
    return calls


TASKS = [("MATH", (300, 2_500)), ("SmolArith", (200, 1_500)), ("SynthCategorical", (400, 3_000)), ("SynthBernoulli", (2_000,))]
SHARED_MV = ("MATH", "SmolArith")  # one table for every run, majority voting (SmolArith: 53 answers)
LOOPED = ("ucb", "egreedy", "softmax")  # their whole loop is one kernel (run_steps) on a shared MV table


@pytest.mark.parametrize(("task", "budgets"), TASKS)
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[f"{n}{k or ''}" for n, k in CONFIGS])
def test_kernels_give_the_numpy_policies(monkeypatch, task, budgets, name, kwargs):
    make_env = _make_env(task)
    seeds = [0, 1, 2, 3, 4, 5]
    for budget in budgets:
        reference = _prints(_fit(monkeypatch, "0", name, kwargs, make_env, budget, seeds), make_env)
        calls = _counting(monkeypatch, name)
        fast = _fit(monkeypatch, "1", name, kwargs, make_env, budget, seeds)
        if task in SHARED_MV and name in LOOPED:  # the whole loop compiled: no one-step kernel (unless numpy's log decides)
            assert calls[3] > 0 and calls[:3] == [0, 0, 0], f"run_steps did not do every step: {calls}"
        else:
            assert calls[0] > 0 and calls[3] == 0, "the choice kernel did not run"
            # a shared MV table (MATH, SmolArith): the fused draw-and-record kernel; per-run worlds: record
            assert (calls[2] > 0 and calls[1] == 0) if task in SHARED_MV else (calls[1] > 0 and calls[2] == 0)
        assert _prints(fast, make_env) == reference, f"{task} T={budget}: a policy differs between numpy and the kernels"
        monkeypatch.undo()
        # other batch shapes on the kernel path: a smaller batch in another order, and one run alone
        part = _prints(_fit(monkeypatch, "1", name, kwargs, make_env, budget, [4, 1]), make_env)
        assert part == [reference[4], reference[1]]
        monkeypatch.setenv("IAPO_GYM_JIT", "1")
        alone = make_agent(name, **kwargs).fit(make_env(3), budget, seed=3)
        assert _prints([alone], make_env) == [reference[3]]


def _online(mean, countf, total, n_unseen, priority, n_max: int, p_n: int) -> SimpleNamespace:
    """What the kernels read of ``_OnlineStats`` for the given statistics (bounds from scratch, none from a last scan)."""
    s_n, c_n = mean.shape[:2]
    with np.errstate(divide="ignore"):
        invsqrt = 1.0 / np.sqrt(countf)
    unseen = np.where(countf == 0, priority, -1.0).reshape(s_n, p_n, n_max)
    unseen_best = np.where(unseen.max(axis=2) >= 0, unseen.argmax(axis=2) + np.arange(p_n) * n_max, -1)
    with np.errstate(invalid="ignore"):
        pmax = np.nan_to_num(np.fmax.reduce(mean.reshape(s_n, c_n, p_n, n_max), axis=3), nan=-np.inf)
    state = kernels.Online(
        gain=np.zeros((s_n, 1, p_n, n_max)), cost=np.zeros((s_n, p_n, n_max)),
        n_blocks=countf.reshape(s_n, p_n, n_max).astype(np.int64), countf=countf, total=total, n_unseen=n_unseen,
        mean=mean, group=np.zeros(c_n, dtype=np.int64), cost_weight=np.zeros(c_n), priority=priority,
        unseen_best=unseen_best, pmax=pmax, invsqrt=invsqrt, pinv=invsqrt.reshape(s_n, p_n, n_max).max(axis=2),
        last=np.full((s_n, c_n, p_n, 2), -1.0),
    )  # fmt: skip
    return SimpleNamespace(mean=mean, countf=countf, invsqrt=invsqrt, total=total, n_unseen=n_unseen, n_max=n_max,
                           p_n=p_n, kernel_state=state)  # fmt: skip


def _state(rng: np.random.Generator, s_n: int, c_n: int, p_n: int, n_max: int, priority) -> SimpleNamespace:
    """Runs' statistics with many exact ties (means and counts from small sets), some unseen arms."""
    a_n = p_n * n_max
    count = rng.integers(1, 4, size=(s_n, a_n)).astype(np.float64)
    count[rng.random((s_n, a_n)) < 0.02] = 0.0  # a few unseen arms
    count[: s_n // 2] = np.maximum(count[: s_n // 2], 1.0)  # half the runs have seen every arm
    mean = rng.choice(np.array([0.0, 0.25, 0.5, 1.0]), size=(s_n, c_n, a_n))
    mean[:, :, count.sum(axis=0) < 0] = 0.0
    mean = np.where(count[:, None] == 0, np.nan, mean)
    total = count.sum(axis=1).astype(np.int64) + 7
    return _online(mean, count, total, np.count_nonzero(count == 0, axis=1), priority, n_max, p_n)


ONE_STEP = [("ucb", {}), ("ucb", {"c": 0.0}), ("egreedy", {"epsilon": 0.3}), ("softmax", {})]


@pytest.mark.parametrize(("name", "kwargs"), ONE_STEP)
def test_one_step_with_ties_unseen_arms_and_the_endgame(monkeypatch, name, kwargs):
    """One step on a crafted state full of exact ties: the kernel's arms are the numpy rule's."""
    monkeypatch.setenv("IAPO_GYM_JIT", "1")
    agent = make_agent(name, **kwargs)
    rng = np.random.default_rng(11)
    s_n, c_n, p_n, n_max = 64, 3, 7, 5
    priority = rng.random((s_n, p_n * n_max))
    on = _state(rng, s_n, c_n, p_n, n_max, priority)
    live = np.sort(rng.choice(s_n, size=48, replace=False))
    ctx = rng.integers(0, c_n, size=live.size)
    limit = np.where(rng.random(live.size) < 0.3, rng.integers(1, n_max, size=live.size), n_max)
    streams = [RunStreams(range(s_n), "tie-test") for _ in range(2)]
    step = Step(
        mean=on.mean[live, ctx], count=on.countf[live], total=on.total[live], limit=limit,
        n_unseen=on.n_unseen[live], priority=priority[live], rng=streams[0].rows(live), n_max=n_max,
    )  # fmt: skip
    expected = agent.choose(step)
    got = agent.choose_kernel(KernelStep(on, live, ctx, limit, priority, streams[1].rows(live)))
    np.testing.assert_array_equal(got, expected)
    assert np.all(got % n_max < limit), "an infeasible arm was chosen"
    # the streams advanced alike: the next draws agree
    np.testing.assert_array_equal(streams[0].random(3), streams[1].random(3))


def _hidden_tie(rng: np.random.Generator, c: float, lt: float) -> tuple[float, float, float, float]:
    """Two arms ``(mean, count)`` whose exact UCB scores tie while the kernel's cheap bound ranks them apart."""
    beta = np.sqrt(lt) * c
    for _ in range(100_000):
        n1, n2 = (float(x) for x in rng.integers(1, 60, size=2))
        m1 = float(rng.random())
        s1 = m1 + np.sqrt(lt / n1) * c
        b2 = np.sqrt(lt / n2) * c
        m2 = s1 - b2
        for _ in range(4):
            if m2 + b2 == s1:
                break
            m2 = np.nextafter(m2, np.inf if m2 + b2 < s1 else -np.inf)
        if m2 + b2 == s1 and m2 + beta * (1.0 / np.sqrt(n2)) < m1 + beta * (1.0 / np.sqrt(n1)):
            return m1, n1, float(m2), n2
    raise AssertionError("no hidden tie found")


def test_ucb_bound_never_hides_an_exact_tie(monkeypatch):
    """Arm 2 ties arm 1 exactly (and has the higher priority) though its cheap bound is lower: it must win."""
    monkeypatch.setenv("IAPO_GYM_JIT", "1")
    agent = make_agent("ucb", c=0.1)
    rng = np.random.default_rng(5)
    s_n, p_n, n_max = 8, 3, 2
    count = np.full((s_n, p_n * n_max), 5.0)
    mean = np.full((s_n, 1, p_n * n_max), -1.0)
    total = np.full(s_n, 1000, dtype=np.int64)
    lt = float(np.log(1000))
    priority = rng.random((s_n, p_n * n_max)) * 0.5
    for r in range(s_n):
        m1, n1, m2, n2 = _hidden_tie(rng, 0.1, lt)
        a1, a2 = (1, 4) if r % 2 else (4, 1)  # either order of index
        mean[r, 0, [a1, a2]] = m1, m2
        count[r, [a1, a2]] = n1, n2
        priority[r, a2] = 0.9
    on = _online(mean, count, total, np.zeros(s_n, dtype=np.int64), priority, n_max, p_n)
    live, ctx, limit = np.arange(s_n), np.zeros(s_n, dtype=np.int64), np.full(s_n, n_max)
    step = Step(mean=mean[live, ctx], count=count, total=total, limit=limit, n_unseen=on.n_unseen,
                priority=priority, rng=None, n_max=n_max)  # fmt: skip
    expected = agent.choose(step)
    np.testing.assert_array_equal(expected, np.where(np.arange(s_n) % 2, 4, 1))  # the tie is real: priority decides
    np.testing.assert_array_equal(agent.choose_kernel(KernelStep(on, live, ctx, limit, priority, None)), expected)


@pytest.mark.parametrize("name", LOOPED)
def test_the_whole_loop_draws_past_the_buffer_and_decides_as_numpy(monkeypatch, name):
    """At T = 9,000 each run's 4,096 buffered uniforms run dry: run_steps steps generators on (UCB resumes as ln t grows)."""
    make_env = _make_env("MATH")
    seeds = [7, 2, 9]
    reference = _prints(_fit(monkeypatch, "0", name, {}, make_env, 9_000, seeds), make_env)
    calls = _counting(monkeypatch, name)
    fast = _fit(monkeypatch, "1", name, {}, make_env, 9_000, seeds)
    assert calls[3] >= (2 if name == "ucb" else 1) and calls[:3] == [0, 0, 0], f"the loop did not do every step: {calls}"
    assert _prints(fast, make_env) == reference


@pytest.mark.parametrize("name", LOOPED)
def test_a_shared_ledger_keeps_the_one_step_path_and_its_decisions(monkeypatch, name):
    """Runs sharing one ledger must be charged before each draw: no whole loop, the same policies, the ledger exact."""
    table = load_math()
    if table is None:
        pytest.skip("the released MATH table is absent (../shared/data/published/MATH_final.pkl)")
    own = _prints(_fit(monkeypatch, "0", name, {}, lambda s: IAPOEnv(table, split_seed=s), 1_500, [0, 1]), _make_env("MATH"))
    ledger = BudgetLedger(3_000)
    calls = _counting(monkeypatch, name)
    shared = _fit(monkeypatch, "1", name, {}, lambda s: IAPOEnv(table, split_seed=s, budget=ledger), 1_500, [0, 1])
    assert calls[3] == 0 and calls[0] > 0 and calls[2] > 0, f"a shared ledger must not take the whole loop: {calls}"
    assert _prints(shared, _make_env("MATH")) == own and ledger.spent == 3_000


def test_softmax_steps_that_numpys_log_must_settle_take_the_one_step_path(monkeypatch):
    """With an infinite margin every Gumbel-max step is left to numpy (the unseen sweep stays in the loop): same policies."""
    make_env = _make_env("MATH")
    seeds = [3, 0, 5]
    reference = _prints(_fit(monkeypatch, "0", "softmax", {}, make_env, 1_200, seeds), make_env)
    monkeypatch.setattr(type(make_agent("softmax")), "softmax_margin", float("inf"))
    calls = _counting(monkeypatch, "softmax")
    deferred = _fit(monkeypatch, "1", "softmax", {}, make_env, 1_200, seeds)
    assert calls[3] > 0 and calls[0] > 0 and calls[2] > 0, f"no step was deferred to the one-step path: {calls}"
    assert _prints(deferred, make_env) == reference


def _softmax_full_pass(mean, u, m, n_max, tau, upper, lower, margin):
    """The rule without pruning, in numpy: every feasible arm bounded; the candidates and the winner (-1: too close)."""
    feasible = np.arange(mean.size) % n_max < m
    x = mean * (1.0 / tau)
    b = (u * upper.size).astype(np.int64)
    floor = np.max(np.where(feasible, x + lower[b], -np.inf))
    threshold = floor - 1e-9 * (64.0 + abs(floor))
    with np.errstate(invalid="ignore"):  # NaN means of unseen infeasible arms
        cand = np.flatnonzero(feasible & (x + upper[b] >= threshold))
    with np.errstate(divide="ignore"):
        val = mean[cand] / tau + -np.log(-np.log1p(-u[cand]))
    j = int(np.argmax(val))
    second = np.max(np.delete(val, j), initial=-np.inf)
    return cand, (int(cand[j]) if val[j] - second > margin * (1.0 + abs(val[j])) else -1)


def _pruning_states(rng: np.random.Generator, s_n: int, p_n: int, n_max: int):
    """Runs whose prompts sit near or far below the best; uniforms in Gumbel bucket 0 and in the last; exact ties."""
    a_n = p_n * n_max
    offset = rng.choice(np.array([0.0, -0.02, -0.1, -0.5, -3.0]), size=(s_n, p_n))  # logits 0 to 60 below at tau 0.05
    mean = np.repeat(offset, n_max, axis=1) + rng.choice(np.array([0.0, 0.05, 0.1]), size=(s_n, a_n))
    u = rng.random((s_n, a_n))
    tiny = rng.random((s_n, a_n)) < 0.01  # g(u) unbounded above in bucket 0 (upper = +inf)
    u[tiny] = rng.random(np.count_nonzero(tiny)) / 4096 / 2
    u[rng.random((s_n, a_n)) < 0.005] = 1.0 - rng.random() / 8192  # the last bucket (lower = -inf)
    u[0] = 1.0 - 1e-6  # every arm in the last bucket: the floor is -inf, nothing can be passed over
    twin = rng.random(s_n) < 0.3  # exact ties: a second arm with the same mean and the same uniform
    src, dst = rng.integers(0, a_n, size=s_n), rng.integers(0, a_n, size=s_n)
    mean[twin, dst[twin]] = mean[twin, src[twin]]
    u[twin, dst[twin]] = u[twin, src[twin]]
    limit = np.where(rng.random(s_n) < 0.25, rng.integers(1, n_max, size=s_n), n_max)
    count = np.ones((s_n, a_n))
    unseen = (rng.random((s_n, a_n)) < 0.2) & (np.arange(a_n) % n_max >= limit[:, None])  # only infeasible arms unseen
    count[unseen] = 0.0
    mean[unseen] = np.nan
    on = _online(mean[:, None], count, count.sum(axis=1).astype(np.int64), np.count_nonzero(unseen, axis=1),
                 rng.random((s_n, a_n)), n_max, p_n)  # fmt: skip
    return on, mean, u, limit


_softmax_row = kernels.softmax_row  # a plain global: numba compiles it inlined


def _softmax_rows(st, ctx, limit, u, tau, upper, lower, margin, out, scanned_out):
    """softmax_row for every run ``i`` (context ``ctx[i]``, uniforms ``u[i]``); the prompts it scanned."""
    high = np.empty(st.countf.shape[1])
    ub = np.empty(st.n_blocks.shape[1])
    scanned = np.zeros(st.n_blocks.shape[1], dtype=np.bool_)
    for i in range(out.shape[0]):
        out[i] = _softmax_row(st, i, ctx[i], limit[i], u[i], 0, tau, upper, lower, margin, high, ub, scanned)
        scanned_out[i] = scanned


def test_softmax_passes_over_prompts_without_changing_the_candidates_or_the_winner():
    """Pruned prompts (pmax far below, no arm in bucket 0) never hold a candidate: the full pass's candidates and winner."""
    import numba

    from iapo_gym import _jit

    _jit._register_helpers()
    rows_kernel = numba.njit(error_model="numpy")(_softmax_rows)  # not cached: it inlines the helpers as they are now
    upper, lower = kernels.gumbel_table()
    rng = np.random.default_rng(2026)
    s_n, p_n, n_max, margin = 3_000, 9, 11, 1e-9
    scanned_total, too_close = 0, 0
    for tau in (0.05, 0.5):
        on, mean, u, limit = _pruning_states(rng, s_n, p_n, n_max)
        ctx = np.zeros(s_n, dtype=np.int64)
        # the one-step path's kernel: the candidates of the rows where every arm is feasible
        out = np.empty(s_n, dtype=np.int64)
        cand = np.empty(s_n * p_n * n_max, dtype=np.int64)
        start = np.empty(s_n + 1, dtype=np.int64)
        kernels.softmax_candidates(on.kernel_state, np.arange(s_n), ctx, limit, u, tau, upper, lower, out, cand, start)
        # the whole loop's helper: its winner (or -1: numpy's log decides), every row
        arm = np.empty(s_n, dtype=np.int64)
        scanned = np.empty((s_n, p_n), dtype=np.bool_)
        rows_kernel(on.kernel_state, ctx, limit, u, tau, upper, lower, margin, arm, scanned)
        for r in range(s_n):
            expected_cand, expected_arm = _softmax_full_pass(mean[r], u[r], limit[r], n_max, tau, upper, lower, margin)
            if limit[r] == n_max:
                assert out[r] == -1
                np.testing.assert_array_equal(cand[start[r] : start[r + 1]], expected_cand, err_msg=f"row {r}")
            else:
                assert out[r] == -2
            assert arm[r] == expected_arm, f"tau {tau}, row {r}"
            assert scanned[r, expected_cand // n_max].all(), f"row {r}: a candidate's prompt was passed over"
        assert scanned[0].all()  # a floor of -inf passes nothing over
        scanned_total += scanned.sum()
        too_close += np.count_nonzero(arm == -1)
    # the states exercise the pruning (most prompts passed over) and exact ties (-1: numpy decides)
    assert scanned_total < 0.5 * 2 * s_n * p_n and too_close > 0, (scanned_total, too_close)


def test_refresh_keeps_counts_means_and_bounds_of_partial_pulls():
    """``record`` (:func:`refresh_row`): pulls of ``N <= width < N_max`` keep every count, mean and bound a full pass gives.

    The largest mean or ``1 / sqrt(count)`` of a prompt often sits on an arm the pull did not
    change (``N > width``), means tie exactly, arms stay unseen, and UCB's bounds and the unseen
    arms are kept: all compared bit for bit with numpy computing them from the tallies.
    """
    rng = np.random.default_rng(11)
    s_n, c_n, p_n, n_max, u_n = 5, 3, 4, 8, 2
    a_n = p_n * n_max
    priority = rng.permutation(s_n * a_n).reshape(s_n, a_n).astype(np.float64)
    unseen_best = priority.reshape(s_n, p_n, n_max).argmax(axis=2) + np.arange(p_n) * n_max
    st = kernels.Online(
        gain=np.zeros((s_n, u_n, p_n, n_max)), cost=np.zeros((s_n, p_n, n_max)),
        n_blocks=np.zeros((s_n, p_n, n_max), dtype=np.int64), countf=np.zeros((s_n, a_n)),
        total=np.zeros(s_n, dtype=np.int64), n_unseen=np.full(s_n, a_n, dtype=np.int64),
        mean=np.full((s_n, c_n, a_n), np.nan), group=np.array([0, 1, 1]), cost_weight=np.array([0.0, 0.2, 1.0]),
        priority=priority, unseen_best=unseen_best, pmax=np.full((s_n, c_n, p_n), -np.inf),
        invsqrt=np.full((s_n, a_n), np.inf), pinv=np.full((s_n, p_n), np.inf), last=np.full((s_n, c_n, p_n, 2), 5.0),
    )  # fmt: skip
    for step in range(60):
        width = int(rng.choice([1, 2, 3, n_max])) if step % 4 else n_max // 2
        run, prompt = rng.permutation(s_n)[:3], rng.integers(0, p_n, 3)
        gain = rng.choice(np.array([0.0, 0.5, 1.0, 2.0]), size=(u_n, 3, width))  # exact ties among means
        count = rng.integers(1, 3, size=(3, width)).astype(np.int64)  # a pull adds a block to every arm it reaches
        cost = rng.choice(np.array([0.0, 1.0, 3.0]), size=(3, width))
        before = {f: getattr(st, f).copy() for f in ("gain", "cost", "n_blocks", "last")}
        kernels.record(st, run, prompt, gain, count, cost)
        # the tallies: the pull's sums added to the first `width` arms of its cell, nothing else
        gain_t, cost_t, count_t = before["gain"], before["cost"], before["n_blocks"]
        for i in range(3):
            gain_t[run[i], :, prompt[i], :width] += gain[:, i]
            cost_t[run[i], prompt[i], :width] += cost[i]
            count_t[run[i], prompt[i], :width] += count[i]
        np.testing.assert_array_equal(st.gain, gain_t)
        np.testing.assert_array_equal(st.cost, cost_t)
        np.testing.assert_array_equal(st.n_blocks, count_t)
        countf = count_t.reshape(s_n, a_n).astype(np.float64)
        np.testing.assert_array_equal(st.countf, countf)
        np.testing.assert_array_equal(st.n_unseen, np.count_nonzero(countf == 0, axis=1))
        np.testing.assert_array_equal(st.total, count_t.sum(axis=(1, 2)))
        # the means of every context (unseen: NaN), and each prompt's largest (-inf while all unseen)
        g = gain_t[:, st.group].reshape(s_n, c_n, a_n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (g - st.cost_weight[None, :, None] * cost_t.reshape(s_n, 1, a_n)) / countf[:, None]
            invsqrt = 1.0 / np.sqrt(countf)
        assert np.array_equal(st.mean, mean, equal_nan=True)
        with np.errstate(invalid="ignore"):
            pmax = np.nan_to_num(np.fmax.reduce(mean.reshape(s_n, c_n, p_n, n_max), axis=3), nan=-np.inf)
        np.testing.assert_array_equal(st.pmax, pmax)
        # UCB's bounds: 1 / sqrt(count) (inf unseen) and each prompt's largest; a pulled prompt's last scan stale
        np.testing.assert_array_equal(st.invsqrt, invsqrt)
        np.testing.assert_array_equal(st.pinv, invsqrt.reshape(s_n, p_n, n_max).max(axis=2))
        stale = before["last"].copy()
        stale[run, :, prompt, 1] = -1.0
        np.testing.assert_array_equal(st.last, stale)
        # each prompt's unseen arm of highest priority, -1 once none is left
        unseen = np.where(countf == 0, priority, -1.0).reshape(s_n, p_n, n_max)
        best = np.where(unseen.max(axis=2) >= 0, unseen.argmax(axis=2) + np.arange(p_n) * n_max, -1)
        np.testing.assert_array_equal(st.unseen_best, best)
    assert np.isfinite(st.pinv).any() and np.isinf(st.pinv).any()  # some prompts fully seen, some not
    assert (st.unseen_best < 0).any() and (st.unseen_best >= 0).any()


_stream_take = kernels.stream_take  # a plain global: numba compiles it inlined


def _takes(buf, pos, pcg, runs, counts, skips, jumps, out):
    """stream_take of ``counts[i]`` values (the first ``skips[i]`` passed over) of run ``runs[i]``, in order, into ``out``."""
    lanes = np.empty(2 * kernels.PCG_LANES, dtype=np.int64)
    first = 0
    for i in range(runs.shape[0]):
        r = runs[i]
        cl_hi, cl_lo = kernels.pcg_advance(pcg[r, 2], pcg[r, 3], jumps[2], jumps[3], 0, 0)
        cs_hi, cs_lo = kernels.pcg_advance(pcg[r, 2], pcg[r, 3], jumps[6], jumps[7], 0, 0)
        _stream_take(buf, pos, pcg, r, out, first, counts[i], skips[i], jumps, cl_hi, cl_lo, cs_hi, cs_lo, lanes)
        first += counts[i]


def test_the_kernels_pcg64_is_numpys_stream_bit_for_bit():
    """stream_take gives each run the values numpy's PCG64 gives it, and leaves the generator where numpy would.

    Three runs of different seeds, their buffers partly drawn (so values come from the buffer first),
    requests of every size from 0 to past two full vector fills (the single chain, pcg_fill's
    16 lanes and the tail), skips served by the buffer, by one jump and in part; after the states
    are handed back (RunStreams.set_pcg_states), the generators continue the same stream.
    """
    import numba

    from iapo_gym import _jit

    kernels.install_pcg()
    _jit._register_helpers()
    takes = numba.njit(error_model="numpy")(_takes)  # not cached: it inlines the helper as it is now
    rng = np.random.default_rng(11)
    skip_len = 1 + 800  # Softmax's jump on MATH: the context and one value per arm
    jumps = kernels.pcg_jumps(skip_len)
    for seeds in ([0, 1, 2], [123456789, 7, 2**40 + 3]):
        ours, ref = RunStreams(seeds, "pcg-test"), RunStreams(seeds, "pcg-test")
        for s in (ours, ref):
            s.random([5, 300, 4095], [0, 1, 2])  # buffered values left: 4091, 3796, 1
        runs = rng.integers(0, 3, 400)
        counts = rng.integers(0, 70, 400)
        counts[::9] = rng.integers(70, 1200, counts[::9].size)  # long runs: pcg_fill and its tail
        skips = np.zeros(400, dtype=np.int64)
        jump_rows = np.flatnonzero(rng.random(400) < 0.2)
        skips[jump_rows] = skip_len
        counts[jump_rows] += rng.integers(0, 40, jump_rows.size) + skip_len
        pcg = np.zeros((3, 4), dtype=np.int64)
        pcg[:] = ours.pcg_states([0, 1, 2])
        out = np.full(int(counts.sum()), np.nan)
        takes(ours.buffer, ours.position, pcg, runs, counts, skips, jumps, out)
        ours.set_pcg_states([0, 1, 2], pcg)
        first = np.cumsum(counts) - counts
        for i in range(400):  # numpy's values, request after request
            want = ref.random([counts[i]], [runs[i]])
            got = out[first[i] : first[i] + counts[i]]
            np.testing.assert_array_equal(got[skips[i] :], want[skips[i] :])
            assert np.isnan(got[: skips[i]]).all()  # passed over: never written
        for r in range(3):  # the streams go on alike: the buffers' rest, then the generators
            np.testing.assert_array_equal(ours.random([5000], [r]), ref.random([5000], [r]))
            state = ours.generators[r].bit_generator.state
            assert state == ref.generators[r].bit_generator.state
        assert (ours.position == ref.position).all()
