"""The empirical-Bayes Best-of-N estimator of ``psst_model`` (``iapo_gym.agents._bon_eb``)."""

from __future__ import annotations

import numpy as np
from agents_helpers import make_env, small_table

from iapo_gym import oracle
from iapo_gym.agents._bon_eb import ALPHA_GRID, eb_bon_expected_max, fit_dirichlet_concentration
from iapo_gym.agents.psst_model import PSSTModel, jackknife_bon_max
from iapo_gym.tasks.synthetic import make_synth_categorical


def _grid_point(alpha: float) -> float:
    return float(ALPHA_GRID[np.argmin(np.abs(np.log(ALPHA_GRID) - np.log(alpha)))])


def test_dirichlet_concentration_is_recovered_per_group():
    rng = np.random.default_rng(0)
    truth = (0.3, 1.0, 4.0)
    counts, group = [], []
    for g, a in enumerate(truth):
        p = rng.dirichlet(np.full(8, a), size=3000)
        counts.append(np.stack([rng.multinomial(4, row) for row in p]))
        group.append(np.full(3000, g))
    est = fit_dirichlet_concentration(np.concatenate(counts), np.concatenate(group), 3)
    for a, e in zip(truth, est, strict=True):
        assert abs(np.log(e) - np.log(a)) < 0.25, (a, e)  # within about one grid step of the truth


def test_dirichlet_concentration_without_information_falls_back_to_one():
    # single draws say nothing about the concentration; an empty group neither
    counts = np.eye(8, dtype=np.int64)[np.arange(40) % 8]
    est = fit_dirichlet_concentration(counts, np.zeros(40, np.int64), 2)
    assert est[0] == est[1] == _grid_point(1.0)


def test_every_outcome_seen_is_the_closed_form_posterior_expectation():
    # two outcomes, both seen: F_1 (the share of the lower score) is Beta(a + c1, a + c2) and
    # E[max of N] = s2 - (s2 - s1) E[F_1^N] with E[F^N] = prod_{i<N} (a + c1 + i) / (2a + m + i)
    s, c, a = np.array([[1.0, 3.0]]), np.array([[2, 5]]), 0.7
    got = eb_bon_expected_max(s, c, np.zeros(1, np.int64), 1, np.array([a]), 5)[0]
    for n in range(1, 6):
        ef = np.prod([(a + 2 + i) / (2 * a + 7 + i) for i in range(n)])
        assert abs(got[n - 1] - (3.0 - 2.0 * ef)) < 1e-14


def test_large_counts_converge_to_the_exact_expected_maximum():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(6), size=5)
    scores = rng.normal(size=(5, 6))
    counts = np.round(probs * 1e6).astype(np.int64)
    counts[counts == 0] = 1
    got = eb_bon_expected_max(scores, counts, np.zeros(5, np.int64), 1, np.array([1.0]), 16)
    np.testing.assert_allclose(got, oracle.bon_expected_max(scores, counts / counts.sum(1, keepdims=True), 16), atol=1e-4)


def test_unseen_outcomes_sit_at_the_pooled_shape_shifted_to_their_query():
    # group 0 pools residuals from two fully described queries; the third query saw one outcome
    # (score 10) and its one unseen outcome must sit at 10 + the pooled shape's median
    s = np.array([[0.0, 2.0], [5.0, 7.0], [10.0, np.nan]])
    c = np.array([[1, 1], [1, 1], [3, 0]])
    alpha = np.array([1.0])
    got = eb_bon_expected_max(s, c, np.zeros(3, np.int64), 1, alpha, 3)
    # residuals (+-1) * sqrt(2): pooled {-1.414, -1.414, 1.414, 1.414}; one unseen outcome at level
    # (1 - 0.375) / 1.25 = 0.5 -> the pooled median, 0: the unseen outcome's score is 10
    np.testing.assert_allclose(got[2], 10.0, atol=1e-12)
    # the fully seen queries: Beta(2, 2) share of the lower score
    for n in range(1, 4):
        ef = np.prod([(2 + i) / (4 + i) for i in range(n)])
        assert abs(got[0, n - 1] - (2.0 - 2.0 * ef)) < 1e-12
        assert abs(got[1, n - 1] - (7.0 - 2.0 * ef)) < 1e-12


def test_pooled_estimate_is_steadier_and_conservative_where_unseen_outcomes_matter():
    # prompts of 40 queries: 8 outcomes each, scores = query shift + a common shape, Dirichlet(1)
    # probabilities, 3 draws per query (half the pool's mass is on outcomes never drawn). Over
    # 150 such prompts the pooled estimate's spread is below the jackknife's at every N >= 2, its
    # bias is never positive (the unseen outcomes sit at expected order statistics, a contraction
    # of their spread), and at N = 32 its error is the smaller one.
    rng = np.random.default_rng(2)
    q_n, m_n, n_max = 40, 8, 32
    err_eb, err_jk = [], []
    group = np.zeros(q_n, np.int64)
    for _ in range(150):
        scores = rng.normal(0, 0.5, size=(q_n, 1)) + rng.normal(0, 0.6, size=(q_n, m_n))
        probs = rng.dirichlet(np.ones(m_n), size=q_n)
        counts = np.stack([rng.multinomial(3, p) for p in probs])
        truth = oracle.bon_expected_max(scores, probs, n_max).mean(axis=0)
        alpha = fit_dirichlet_concentration(counts, group, 1)
        eb = eb_bon_expected_max(np.where(counts > 0, scores, np.nan), counts, group, 1, alpha, n_max)
        err_eb.append(eb.mean(axis=0) - truth)
        err_jk.append(jackknife_bon_max(scores, counts, n_max).mean(axis=0) - truth)
    e, j = np.array(err_eb), np.array(err_jk)
    assert abs(e[:, 0].mean()) < 0.02  # E[max of 1] is a mean
    assert (e[:, 1:].std(axis=0) < j[:, 1:].std(axis=0)).all()
    assert (e[:, 1:].mean(axis=0) < 0.0).all()
    rmse = np.sqrt((e**2).mean(axis=0)), np.sqrt((j**2).mean(axis=0))
    assert rmse[0][-1] < 0.9 * rmse[1][-1]


def _arms(agent: PSSTModel, table, seeds, budget: int) -> np.ndarray:
    weights = np.asarray(table.contexts.weights, dtype=np.float64)
    return np.stack([agent.fit(make_env(table, s), budget, s).act(weights) for s in seeds])


def test_psst_model_uses_it_on_best_of_n_only():
    # majority voting: the switch changes nothing; Best-of-N: it changes the deployed arms
    mv = small_table("mv")
    np.testing.assert_array_equal(_arms(PSSTModel(bon_eb=False), mv, (0, 1), 300), _arms(PSSTModel(), mv, (0, 1), 300))
    sc = make_synth_categorical(3)
    assert not np.array_equal(_arms(PSSTModel(bon_eb=False), sc, (3,), 3000), _arms(PSSTModel(), sc, (3,), 3000))
