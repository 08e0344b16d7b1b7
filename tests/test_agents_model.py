"""psst_model: bias-corrected plug-in estimators (against exact expectations), conformance, behaviour."""

from __future__ import annotations

from itertools import product
from math import factorial

import numpy as np
import pytest
from agents_helpers import easy_mv_table, make_env, small_table

from iapo_gym import oracle
from iapo_gym.agents import AGENTS, make_agent
from iapo_gym.agents.psst_model import (
    PSSTModel,
    confidently_worse,
    deployment_scores,
    eb_shrink,
    jackknife_bon_max,
    jackknife_mv_credit,
    jackknife_mv_credit_var,
    npmle_binary_q,
    npmle_binary_q_var,
)
from iapo_gym.agents.testing import check_agent
from iapo_gym.contexts import cost_contexts
from iapo_gym.tables.format import OutcomeTable


def _multinomial_expectation(estimator, probs: np.ndarray, m: int, n_max: int) -> np.ndarray:
    """Exact ``E[estimator(counts)]`` over ``counts ~ Multinomial(m, probs)`` (enumerates every count vector)."""
    a = probs.size
    rows, weights = [], []
    for c in product(range(m + 1), repeat=a):
        if sum(c) != m:
            continue
        w = factorial(m) * np.prod([probs[j] ** c[j] / factorial(c[j]) for j in range(a)])
        rows.append(c)
        weights.append(w)
    est = estimator(np.array(rows, dtype=np.int64), n_max)
    return np.asarray(weights) @ est


PI = np.array([0.5, 0.3, 0.2])  # gold first


def test_mv_plugin_without_jackknife_is_the_exact_credit_of_the_empirical_distribution():
    counts = np.array([[3, 1, 0], [1, 2, 1], [0, 4, 0]])
    est = jackknife_mv_credit(counts, 7, jackknife=False)
    np.testing.assert_allclose(est, oracle.mv_credit(counts / 4, np.zeros(3, np.int64), 7))


def test_mv_jackknife_reduces_the_bias_of_the_plugin():
    truth = oracle.mv_credit(PI[None], np.zeros(1, np.int64), 9)[0]
    m = 4
    plug = _multinomial_expectation(lambda c, n: jackknife_mv_credit(c, n, jackknife=False), PI, m, 9)
    jack = _multinomial_expectation(lambda c, n: jackknife_mv_credit(c, n, jackknife=True), PI, m, 9)
    # N = 1 and N = 2 credits are linear in pi (a 1-1 tie pays 1/2): both estimators are unbiased
    np.testing.assert_allclose(plug[:2], truth[:2], atol=1e-12)
    np.testing.assert_allclose(jack[:2], truth[:2], atol=1e-12)
    # larger N: the plug-in is biased and the jackknife removes most of it
    for n in (3, 5, 9):
        assert abs(plug[n - 1] - truth[n - 1]) > 5e-3
        assert abs(jack[n - 1] - truth[n - 1]) < 0.6 * abs(plug[n - 1] - truth[n - 1])


def test_bon_jackknife_matches_a_brute_force_leave_one_out():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 5))
    counts = rng.integers(0, 3, size=(30, 5))
    counts[:, 0] += 1
    n_max = 9
    plug = oracle.bon_expected_max(scores, counts / counts.sum(1, keepdims=True), n_max)
    np.testing.assert_allclose(jackknife_bon_max(scores, counts, n_max, jackknife=False), plug, atol=1e-12)
    m = counts.sum(1)
    want = plug.copy()
    for r in range(30):
        if m[r] < 2:
            continue
        loo = np.zeros(n_max)
        for j in np.flatnonzero(counts[r]):
            c = counts[r].astype(float)
            c[j] -= 1
            loo += counts[r, j] / m[r] * oracle.bon_expected_max(scores[r : r + 1], (c / c.sum())[None], n_max)[0]
        want[r] = m[r] * plug[r] - (m[r] - 1) * loo
    np.testing.assert_allclose(jackknife_bon_max(scores, counts, n_max, jackknife=True), want, atol=1e-10)


def test_bon_jackknife_reduces_the_bias_of_the_plugin_max():
    probs = np.array([0.6, 0.3, 0.1])
    scores = np.array([0.0, 1.0, 3.0])
    truth = oracle.bon_expected_max(scores[None], probs[None], 6)[0]

    def est(jk):
        return lambda c, n: jackknife_bon_max(np.broadcast_to(scores, c.shape), c, n, jackknife=jk)

    plug = _multinomial_expectation(est(False), probs, 5, 6)
    jack = _multinomial_expectation(est(True), probs, 5, 6)
    np.testing.assert_allclose(jack[0], truth[0], atol=1e-12)  # E[max of 1] is linear: unbiased
    for n in (2, 4, 6):
        assert abs(jack[n - 1] - truth[n - 1]) < abs(plug[n - 1] - truth[n - 1])


def test_registered_and_flagged():
    assert "psst_model" in AGENTS
    agent = make_agent("psst_model")
    assert isinstance(agent, PSSTModel) and agent.uses_query_control
    with pytest.raises(ValueError, match="m must be"):
        PSSTModel(m=-1)


@pytest.mark.parametrize("strategy", ["mv", "bon", "binary"])
def test_conforms(strategy):
    table = easy_mv_table() if strategy == "binary" else small_table(strategy)  # binary: eb_m's deeper rounds
    check_agent(make_agent("psst_model"), lambda s: make_env(table, s), budgets=(0, 1, 5, 23, 400, 3000), seeds=(0, 5, 9))


def test_rejects_bad_settings_with_one_line():
    bad = ({"keep": 0.0}, {"keep": 1.0}, {"min_queries": -1}, {"extra_rounds": -1}, {"growth": 0.0}, {"drop_z": -1.0})
    for kwargs in (*bad, {"eb_m": -1}, {"final_drop_z": -0.5}, {"deploy_z": float("nan")}, {"query_z": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            PSSTModel(**kwargs)


def test_m_deepens_only_while_the_round_keeps_min_queries():
    """m doubles per round only as far as every survivor still gets min_queries common queries."""
    table = small_table("mv")  # 4 prompts, N_max = 6: two rounds
    for budget in (100, 200, 400, 3000):
        for mq in (0, 8, 32):
            info = PSSTModel(min_queries=mq).fit(make_env(table, 0), budget, 0).info
            m_log, q_log = np.array(info["m_per_round"]), np.array(info["queries_per_round"])
            assert info["budget_used"] <= budget and m_log[0] == 2
            if mq == 0:
                assert m_log[1] == 4  # always doubles
            else:
                # the second round deepens as far as it still affords mq queries (never below m = 2)
                survivors = len(info["survivors"])  # the last round does not halve
                avail = budget - 4 * 2 * q_log[0]  # the last round gets what the first (4 prompts x 2) left
                want = max(2, min(4, avail // (survivors * mq)))
                assert m_log[1] == want, (budget, mq, m_log, q_log)
                assert m_log[1] == 2 or q_log[1] >= mq
    assert PSSTModel().fit(make_env(table, 0), 200, 0).info["m_per_round"] == [2, 2]
    assert PSSTModel(min_queries=0).fit(make_env(table, 0), 200, 0).info["m_per_round"] == [2, 4]


def test_binary_answers_deepen_to_eb_m_after_the_first_round():
    """Binary answers (the empirical-Bayes estimator): every round after the first pulls each
    survivor at least eb_m times per query; other answer spaces and an explicit m are untouched."""
    binary = easy_mv_table()  # 4 prompts, 2 answer categories, N_max = 7: two rounds
    for budget, on, off in ((200, 4, 2), (3000, 7, 4)):
        # 200: round 1 affords < 1 query of 32 per survivor, so the floor decides (eb_m 4, else m 2);
        # 3000: it affords >= 15, so m doubles from the floor (min(7, 2 * 4)) instead of from 2
        info = PSSTModel().fit(make_env(binary, 0), budget, 0).info
        assert info["m_per_round"] == [2, on] and info["budget_used"] <= budget
        assert PSSTModel(eb_m=0).fit(make_env(binary, 0), budget, 0).info["m_per_round"] == [2, off]
        assert PSSTModel(m=2).fit(make_env(binary, 0), budget, 0).info["m_per_round"] == [2, off]
    table = small_table("mv")  # 4 answer categories: the plug-in estimator, eb_m does not apply
    assert table.answer_probs.shape[-1] > 2
    w = table.contexts.weights
    for budget in (200, 3000):
        a = PSSTModel().fit(make_env(table, 0), budget, 0)
        b = PSSTModel(eb_m=0).fit(make_env(table, 0), budget, 0)
        assert a.info == b.info and np.array_equal(a.act(w), b.act(w))


def test_finds_the_optimal_arms_of_an_easy_table():
    table = easy_mv_table()
    best = oracle.best_arms(oracle.q_values(table))
    pols = make_agent("psst_model").fit_many(lambda s: make_env(table, s), 4000, list(range(10)))
    hits = np.mean([np.array_equal(p.act(table.contexts.weights), best) for p in pols])
    assert hits >= 0.8


def test_large_n_estimates_see_through_deceptive_prompts():
    """Prompt 1 is best at N = 1 but saturates under voting; prompt 2 (0.62 on every query) wins at
    large N. The model estimates every N from per-query counts, so it deploys prompt 2 at N_max."""
    q, n_max = 60, 15
    hard = np.arange(q) % 3 == 0
    theta = np.stack([np.full(q, 0.45), np.where(hard, 0.3, 0.95), np.full(q, 0.62)])
    table = OutcomeTable(
        task="Deceptive",
        strategy="mv",
        prompts=("filler", "deceptive", "consistent"),
        query_ids=tuple(f"q{j}" for j in range(q)),
        objectives=("correct",),
        objective_ranges=np.array([[0.0, 1.0]]),
        contexts=cost_contexts({"free": 0.0}),
        n_max=n_max,
        cost=np.full((3, q), 0.1),
        split=np.zeros(q, np.int8),
        answer_probs=np.stack([theta, 1.0 - theta], axis=-1),
        gold=np.zeros(q, np.int64),
    )
    qv = oracle.q_values(table)
    assert np.argmax(qv[0, :, 0]) == 1 and oracle.best_arms(qv)[0] == 2 * n_max + n_max - 1

    def consistent_share(name: str, budget: int) -> float:
        pols = make_agent(name).fit_many(lambda s: make_env(table, s), budget, list(range(20)))
        return float(np.mean([p.act(table.contexts.weights)[0] // n_max == 2 for p in pols]))

    assert consistent_share("topk1", 3000) <= 0.2  # N = 1 screening keeps the deceptive prompt
    assert consistent_share("psst_model", 3000) >= 0.7
    assert consistent_share("psst_model", 10_000) >= 0.9  # 0.98 over 100 seeds; 18 of these 20


def test_eb_shrink_pulls_readings_within_noise_together_and_keeps_clear_gaps():
    """Two clusters of prompts (true values 0.5 and 0.9), read with noise 0.02: the posterior means
    of each cluster move towards its centre, the gap between the clusters stays, and prompts
    outside ``valid`` keep their readings."""
    rng = np.random.default_rng(0)
    truth = np.array([0.5] * 6 + [0.9] * 6)
    x = truth + rng.normal(0.0, 0.02, truth.size)
    mean = x[None, :, None, None].copy()  # (S=1, P, U=1, N=1)
    var = np.full_like(mean, 0.02**2)
    valid = np.ones((1, truth.size), dtype=bool)
    valid[0, 0] = False
    out = eb_shrink(mean, var, valid)[0, :, 0, 0]
    assert out[0] == x[0]  # not valid: untouched
    for lo, hi in ((1, 6), (6, 12)):
        assert np.ptp(out[lo:hi]) < 0.5 * np.ptp(x[lo:hi])  # drawn together
        assert abs(out[lo:hi].mean() - truth[lo]) < 0.02
    assert out[6:].min() - out[1:6].max() > 0.3  # the real gap is kept
    # far more precise readings move by less than one step of the 64-point grid (the noise floor)
    tight = eb_shrink(mean, var * 1e-6, valid)[0, :, 0, 0]
    assert np.abs(tight[1:] - x[1:]).max() < np.ptp(x[1:]) / 63


def test_confidently_worse_needs_every_context():
    """Scores (S=1, C=2, P=3) at one N: prompt 2 is far below the leader in both contexts (dropped);
    prompt 1 is far below in context 0 but within its error of the leader in context 1 (kept)."""
    q = np.array([[[0.9, 0.5, 0.4], [0.6, 0.58, 0.3]]])[..., None]  # (1, 2, 3, 1)
    sd = np.full_like(q, 0.02)
    alive = np.ones((1, 3), dtype=bool)
    np.testing.assert_array_equal(confidently_worse(q, sd, alive, 2.0), [[False, False, True]])
    # with wide errors nothing is confidently worse; a dead or unseen prompt is never flagged
    assert not confidently_worse(q, sd * 10, alive, 2.0).any()
    q_nan = q.copy()
    q_nan[0, :, 2] = np.nan
    assert not confidently_worse(q_nan, sd, alive, 2.0)[0, 2]
    assert not confidently_worse(q, sd, np.array([[True, True, False]]), 2.0)[0, 2]


def test_npmle_variance_is_the_posterior_means_spread_over_the_queries():
    """Doubling every query of a group leaves the NPMLE (and its posterior means) unchanged and halves the variance;
    the variance matches the spread of the per-query posterior means computed by hand."""
    k = np.array([0, 1, 2, 2, 1, 2, 0, 2])
    m = np.full(k.size, 2)
    est, var = npmle_binary_q_var(k, m, np.zeros(k.size, np.int64), 1, 7)
    est2, var2 = npmle_binary_q_var(np.tile(k, 2), np.tile(m, 2), np.zeros(2 * k.size, np.int64), 1, 7)
    np.testing.assert_allclose(est, est2, atol=1e-9)
    np.testing.assert_allclose(var2, var / 2, rtol=1e-6)
    np.testing.assert_allclose(npmle_binary_q(k, m, np.zeros(k.size, np.int64), 1, 7), est)
    assert (var > 0).all()


def test_runs_through_the_zoo_round_loop():
    """psst_model's rounds are run_rounds' rounds: the spend per round matches the agent's own log."""
    import iapo_gym.agents._rounds as rounds_mod

    table = small_table("mv")
    seen = []
    real = rounds_mod.run_rounds

    def spy(runs, alloc, budgets, plan):
        log = real(runs, alloc, budgets, plan)
        seen.append((alloc, log))
        return log

    import iapo_gym.agents.psst_model as pm

    old = pm.run_rounds
    pm.run_rounds = spy
    try:
        info = PSSTModel().fit(make_env(table, 0), 400, 0).info
    finally:
        pm.run_rounds = old
    (alloc, log), = seen
    assert isinstance(alloc, pm.PairedModelAllocation)
    assert int(log.used[0, 0]) == info["budget_used"] <= 400
    n_alive = [4, len(info["survivors"])]  # 4 prompts, two rounds
    want = [q * m * a for q, m, a in zip(info["queries_per_round"], info["m_per_round"], n_alive, strict=True)]
    assert log.spent[0, :, 0].tolist() == want


@pytest.mark.parametrize("strategy", ["bon", "mv"])
def test_best_of_n_drops_at_final_drop_z_before_the_last_round_only(monkeypatch, strategy):
    """Best-of-N: every trim but the one before the last round drops at drop_z (default 2), that one
    at final_drop_z (its survivors are a subset of drop_z's); majority voting halves only by default
    (drop_z resolves to 0: no drop is tested) and keeps an explicit drop_z throughout."""
    import iapo_gym.agents.psst_model as pm

    table = small_table(strategy, n_prompts=8, n_queries=40)  # 8 prompts: three rounds, two trims
    zs: list[float] = []
    real = pm.confidently_worse

    def spy(q_hat, sd, alive, z, best_se=None):
        zs.append(z)
        return real(q_hat, sd, alive, z, best_se)

    monkeypatch.setattr(pm, "confidently_worse", spy)
    fewer = 0
    for seed in range(6):
        zs.clear()
        near = PSSTModel().fit(make_env(table, seed), 3000, seed)
        want = [2.0, 0.5] if strategy == "bon" else []
        assert near.info["rounds"] == 3 and zs == want, (seed, zs)
        zs.clear()
        explicit = PSSTModel(drop_z=2.0).fit(make_env(table, seed), 3000, seed)
        assert zs == ([2.0, 0.5] if strategy == "bon" else [2.0, 2.0]), (seed, zs)
        if strategy == "bon":
            assert explicit.info == near.info  # None is 2 on Best-of-N
        zs.clear()
        off = PSSTModel(drop_z=0.0).fit(make_env(table, seed), 3000, seed)
        assert zs == ([0.5] if strategy == "bon" else []), (seed, zs)
        if strategy == "mv":
            assert off.info == near.info  # None is 0 on majority voting
        wide = PSSTModel(final_drop_z=0).fit(make_env(table, seed), 3000, seed)
        assert near.info["m_per_round"][:2] == wide.info["m_per_round"][:2]  # the same rounds up to the last trim
        assert set(near.info["survivors"]) <= set(wide.info["survivors"])
        fewer += len(near.info["survivors"]) < len(wide.info["survivors"])
        if strategy == "mv":
            assert near.info == wide.info
    assert (fewer > 0) == (strategy == "bon")


@pytest.mark.parametrize("strategy", ["binary", "bon", "mv"])
def test_empirical_bayes_deploys_the_best_estimate_plus_deploy_z_standard_errors(monkeypatch, strategy):
    """Empirical-Bayes estimates (binary answers, Best-of-N) deploy argmax Qhat + deploy_z sd (default 1);
    the plug-in (majority voting over many answers) deploys argmax Qhat and ignores deploy_z. Binary
    answers also subtract query_z (default 1) times the train split's sampling error (sd_query)."""
    import iapo_gym.agents.psst_model as pm
    from iapo_gym.experiments.train import env_factory

    if strategy != "mv":  # Synth-Bernoulli (binary answers), Synth-Categorical (Best-of-N, 27 contexts)
        task = "IAPO-SynthBernoulli-v0" if strategy == "binary" else "IAPO-SynthCategorical-v0"
        make, budget = env_factory(task, 2000), 2000
    else:
        table = small_table("mv", n_prompts=8, n_queries=40)
        make, budget = (lambda s: make_env(table, s)), 3000
    seen: list[tuple[np.ndarray, np.ndarray, float, np.ndarray | None, float]] = []
    real = pm.deployment_scores

    def spy(q_hat, sd, z, sd_query=None, query_z=0.0):
        seen.append((q_hat.copy(), np.array(sd, copy=True), z, None if sd_query is None else sd_query.copy(), query_z))
        return real(q_hat, sd, z, sd_query, query_z)

    monkeypatch.setattr(pm, "deployment_scores", spy)
    differ = differ_query = 0
    for seed in range(6):
        seen.clear()
        pol = PSSTModel().fit(make(seed), budget, seed)
        ((q_hat, sd, z, sd_query, query_z),) = seen
        assert z == (0.0 if strategy == "mv" else 1.0)
        assert (sd_query is not None) == (strategy == "binary") and query_z == 1.0
        score = q_hat + z * np.nan_to_num(sd, nan=0.0)
        if sd_query is not None:
            known = ~np.isnan(q_hat)
            # the split's sampling error is part of each estimate's error, and not all of it (the
            # posterior credits' spread leaves out the votes' binomial noise): positive, below sd
            assert np.all(sd_query[known] > 0) and np.all(sd_query[known] < sd[known])
            score = score - np.nan_to_num(sd_query, nan=0.0)
            no_query = PSSTModel(query_z=0.0).fit(make(seed), budget, seed)
            assert no_query.info == pol.info
            differ_query += not np.array_equal(no_query.arms, pol.arms)
        flat = np.where(np.isnan(score), -np.inf, score)[0].reshape(score.shape[1], -1)
        assert np.array_equal(pol.arms, np.argmax(flat, axis=-1))
        plain = PSSTModel(deploy_z=0.0, query_z=0.0).fit(make(seed), budget, seed)
        assert plain.info == pol.info  # the rule changes only the deployment, not the rounds
        assert np.array_equal(plain.arms, np.argmax(np.where(np.isnan(q_hat), -np.inf, q_hat)[0].reshape(flat.shape), axis=-1))
        differ += not np.array_equal(plain.arms, pol.arms)
    assert (differ > 0) == (strategy != "mv"), differ
    assert (differ_query > 0) == (strategy == "binary"), differ_query  # query_z alone moves binary decisions


def test_deployment_scores_add_z_standard_errors_where_known():
    q = np.array([[[[0.5, np.nan, 0.7]]]])
    sd = np.array([[[[0.1, 0.2, np.nan]]]])
    assert deployment_scores(q, sd, 0.0) is q
    np.testing.assert_array_equal(deployment_scores(q, sd, 2.0), np.array([[[[0.7, np.nan, 0.7]]]]))
    sd_query = np.array([[[[0.05, 0.1, np.nan]]]])
    assert deployment_scores(q, sd, 0.0, sd_query, 0.0) is q
    np.testing.assert_allclose(deployment_scores(q, sd, 2.0, sd_query, 2.0), np.array([[[[0.6, np.nan, 0.7]]]]))
    np.testing.assert_allclose(deployment_scores(q, sd, 0.0, sd_query, 1.0), np.array([[[[0.45, np.nan, 0.7]]]]))


@pytest.mark.parametrize(
    ("rows_n", "cols", "high"),
    [(0, 3, 5), (1, 3, 2), (500, 2, 3), (4000, 5, 60), (300, 5, 2**20), (50, 53, 3)],  # the last two: np.unique itself
)
def test_unique_int_rows_is_numpys_unique_along_rows(rows_n, cols, high):
    from iapo_gym.agents.psst_model import _unique_int_rows

    rows = np.random.default_rng(rows_n + cols).integers(0, high, size=(rows_n, cols))
    if rows_n > 10:
        rows[::7] = rows[0]  # repeated rows
    uniq, inverse = _unique_int_rows(rows)
    want, want_inv = np.unique(rows, axis=0, return_inverse=True)
    assert np.array_equal(uniq, want)  # same distinct rows, same (lexicographic) order
    assert np.array_equal(inverse, want_inv.reshape(-1))
    assert np.array_equal(uniq[inverse], rows)


def test_mv_credit_jackknife_variance_matches_a_brute_force_leave_one_out():
    """m (m - 1) / m sum_i (f_(-i) - mean f_(-.))^2 over every completion left out, each f the exact plug-in credit."""
    rng = np.random.default_rng(3)
    counts = np.concatenate([rng.multinomial(m, [0.4, 0.3, 0.2, 0.1], size=6) for m in (2, 3, 7, 12)])
    counts = np.concatenate([counts, [[5, 0, 0, 0], [0, 4, 0, 0], [1, 0, 0, 0]]])  # one category voted / m = 1
    n_max = 9
    got = jackknife_mv_credit_var(counts, n_max)
    for row, var in zip(counts, got, strict=True):
        m = int(row.sum())
        votes = np.repeat(np.arange(row.size), row)
        if m < 2:
            assert np.all(var == 0)
            continue
        loo = []
        for i in range(m):
            left = np.bincount(np.delete(votes, i), minlength=row.size) / (m - 1)
            loo.append(oracle.mv_credit(left[None, :], [0], n_max)[0])
        loo = np.array(loo)
        want = m * (m - 1) / m * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0)
        np.testing.assert_allclose(var, want, rtol=1e-10, atol=1e-12)
    # the gold answer and another voted: leaving one completion out moves the credit (else it is 0 or 1 throughout)
    spread = (counts[:, 0] > 0) & (counts[:, 0] < counts.sum(axis=1))
    assert np.array_equal(got.max(axis=1) > 0, spread) and spread.sum() >= 15


def test_neyman_rounds_spread_completions_by_each_cells_noise(monkeypatch):
    """A round that affords every train query gives each (alive prompt, query) cell m0 completions
    and the rest in proportion to the cell's jackknife standard deviation at the prompt's best N
    (largest over contexts); it spends what the uniform round would, in pulls of at most N_max."""
    import iapo_gym.agents.psst_model as pm

    table = small_table("mv")  # 4 answer categories, 16 train queries: the second round covers them at T = 3000
    seen = []
    real = pm.PairedModelAllocation._neyman_rows

    def spy(self, cover, budget):
        q_hat = self.estimate()
        best_n = np.argmax(np.where(np.isnan(q_hat), -np.inf, q_hat), axis=-1)
        before = (self.alive.copy(), self.stats.counts.copy(), self.stats.gold.copy(), best_n)
        rows = real(self, cover, budget)
        seen.append((self, cover.copy(), budget.copy(), before, rows))
        return rows

    monkeypatch.setattr(pm.PairedModelAllocation, "_neyman_rows", spy)
    info = PSSTModel(neyman=True).fit(make_env(table, 0), 3000, 0).info
    assert info["neyman_per_round"] == [False, True]
    (alloc, cover, budget, (alive, counts, gold, best_n), rows), = seen
    n_train, n_max, m0 = int(alloc.runs.n_train[0]), table.n_max, alloc.m0
    assert cover.tolist() == [True] and budget[0] == alive.sum() * info["queries_per_round"][1] * info["m_per_round"][1]
    assert rows.n.min() >= 1 and rows.n.max() <= n_max and int(rows.n.sum()) == budget[0]
    got = np.zeros((table.n_prompts, n_train), dtype=np.int64)
    np.add.at(got, (rows.prompt, rows.col), rows.n)
    assert np.array_equal(got > 0, np.repeat(alive[0][:, None], n_train, axis=1))  # every alive cell, no other
    prompts = np.flatnonzero(alive[0])
    sd = np.zeros((prompts.size, n_train))
    for i, p in enumerate(prompts):
        for q in range(n_train):
            c = counts[0, p, q].astype(np.int64)
            row = np.r_[c[gold[0, q]], np.sort(np.delete(c, gold[0, q]))[::-1]]
            var = jackknife_mv_credit_var(row[None, :], n_max)[0]
            sd[i, q] = np.sqrt(var[best_n[0, :, p]].max())
    assert sd.min() == 0 < sd.max()  # some cells are certain, others not: the shares differ
    share = (budget[0] - sd.size * m0) * sd / sd.sum()
    extra = got[prompts] - m0
    assert extra.min() >= 0 and np.all(np.abs(extra - share) < 1)
    assert np.all(extra[sd == 0] <= 1) and extra[sd == sd.max()].min() >= np.floor(share.max())


def test_neyman_rounds_only_where_a_round_covers_the_train_split():
    """Opt-in (off by default). No Neyman round before any data, below a covering budget, or on
    binary / Best-of-N tasks: there ``neyman=True`` decides as the default; where they run, the spend is the same."""
    w_mv = small_table("mv").contexts.weights
    # a seed alone, in any batch, chunking or order: the same policy with Neyman rounds too
    check_agent(PSSTModel(neyman=True), lambda s: make_env(small_table("mv"), s), budgets=(400, 3000), seeds=(0, 5, 9))
    for budget, flags in ((100, [False, False]), (400, [False, True]), (3000, [False, True])):
        a = PSSTModel(neyman=True).fit(make_env(small_table("mv"), 0), budget, 0)
        b = PSSTModel().fit(make_env(small_table("mv"), 0), budget, 0)
        assert a.info["neyman_per_round"] == flags and not any(b.info["neyman_per_round"])
        assert a.info["budget_used"] == b.info["budget_used"] and a.info["m_per_round"] == b.info["m_per_round"]
        if not any(flags):
            assert np.array_equal(a.act(w_mv), b.act(w_mv))
    for table in (easy_mv_table(), small_table("bon")):
        for budget in (400, 3000):
            a = PSSTModel(neyman=True).fit(make_env(table, 0), budget, 0)
            b = PSSTModel().fit(make_env(table, 0), budget, 0)
            assert not any(a.info["neyman_per_round"]) and a.info == b.info
            assert np.array_equal(a.act(table.contexts.weights), b.act(table.contexts.weights))
