"""Continuous context distributions and their exact vectorised oracle."""

from __future__ import annotations

import numpy as np
import pytest

from iapo_gym import oracle
from iapo_gym.continuous import ContinuousContexts, ContinuousEvaluator, exact_q_values
from iapo_gym.experiments.evaluate import ExactEvaluator
from iapo_gym.tables.testing import example_table


def test_sample_shapes_support_and_moments() -> None:
    cc = ContinuousContexts(2, alpha=1.0, cost_low=0.0, cost_high=0.5)
    w = cc.sample(np.random.default_rng(0), 20_000)
    assert w.shape == (20_000, 3)
    np.testing.assert_allclose(w[:, :2].sum(axis=1), 1.0)
    assert w[:, :2].min() >= 0.0
    assert 0.0 <= w[:, 2].min() and w[:, 2].max() <= 0.5
    # Dirichlet(1, 1): w_1 ~ U(0, 1); cost ~ U(0, 0.5)
    assert abs(w[:, 0].mean() - 0.5) < 0.01 and abs(w[:, 0].var() - 1 / 12) < 0.003
    assert abs(w[:, 2].mean() - 0.25) < 0.005


def test_mv_weight_is_one_and_log_scale() -> None:
    cc = ContinuousContexts(1, cost_low=0.01, cost_high=1.0, cost_scale="log")
    w = cc.sample(np.random.default_rng(1), 10_000)
    assert np.all(w[:, 0] == 1.0)
    # log-uniform on [0.01, 1]: median 0.1
    assert abs(np.median(w[:, 1]) - 0.1) < 0.01
    with pytest.raises(ValueError, match="cost_low > 0"):
        ContinuousContexts(1, cost_low=0.0, cost_scale="log")
    with pytest.raises(ValueError, match="alpha"):
        ContinuousContexts(2, alpha=(1.0, -1.0))


def test_evaluation_sample_is_fixed_and_for_table_range() -> None:
    table = example_table("mv", seed=0)
    cc = ContinuousContexts.for_table(table)
    assert (cc.cost_low, cc.cost_high) == (0.0, float(table.contexts.weights[:, -1].max()))
    a, b = cc.evaluation_sample(), cc.evaluation_sample()
    assert a.shape == (2000, 2) and np.array_equal(a, b)
    assert not np.array_equal(a, cc.evaluation_sample(seed=1))


def test_grid_cells() -> None:
    cc = ContinuousContexts(2, cost_low=0.0, cost_high=1.0)
    g = cc.grid(4, 2)
    assert len(g) == 8
    np.testing.assert_allclose(np.unique(g.weights[:, 0]), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(np.unique(g.weights[:, 2]), [0.25, 0.75])


@pytest.mark.parametrize("n_outcomes", [2, 5, 9])
def test_bon_breakpoint_path_matches_oracle(n_outcomes: int) -> None:
    table = example_table("bon", seed=3, n_prompts=3, n_queries=25, n_outcomes=n_outcomes, n_max=7)
    cc = ContinuousContexts.for_table(table)
    w = cc.evaluation_sample(300)
    w[:10, :2] *= 2.5  # off-simplex but non-negative: homogeneity
    w[10, :2] = 0.0
    w[11, :2] = [1.0, 0.0]  # simplex vertices
    w[12, :2] = [0.0, 1.0]
    test = table.test_queries()
    fast = exact_q_values(table, w, test)
    ref = oracle.q_values(table, test, weights=w)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9)
    # another query subset reuses the cached breakpoints
    np.testing.assert_allclose(exact_q_values(table, w[:40], None), oracle.q_values(table, None, weights=w[:40]), atol=1e-9)


def test_fallbacks_match_oracle() -> None:
    bon = example_table("bon", seed=4, n_queries=12)
    w = np.array([[0.5, -0.2, 0.1], [0.3, 0.7, 0.0]])  # a negative weight: generic path
    np.testing.assert_allclose(exact_q_values(bon, w), oracle.q_values(bon, None, weights=w), atol=1e-12)
    mv = example_table("mv", seed=2)
    w = ContinuousContexts.for_table(mv).evaluation_sample(50)
    np.testing.assert_allclose(exact_q_values(mv, w), oracle.q_values(mv, None, weights=w), atol=1e-12)


def test_exact_acr_on_continuous_contexts() -> None:
    """oracle.acr scores any policy on the 2,000 held-out contexts (equal weights), and the runner's
    continuous ExactEvaluator gives the same numbers."""
    from iapo_gym.env import IAPOEnv

    table = example_table("bon", seed=5, n_queries=20)
    env = IAPOEnv(table, split_seed=0, contexts="continuous")
    sample = ContinuousContexts.for_table(table).evaluation_sample()
    q = exact_q_values(table, sample, env.test_queries).reshape(len(sample), -1)
    probs = np.full(len(sample), 1.0 / len(sample))
    assert q.shape == (2000, table.n_arms)

    class Fixed:
        def act(self, weights):
            return np.full(np.shape(weights)[0], 3, dtype=np.int64)

    class Best:
        def act(self, weights):
            return oracle.best_arms(exact_q_values(table, weights, env.test_queries))

    fixed = oracle.acr(q, Fixed(), probs, sample)
    assert fixed == pytest.approx(q[:, 3].mean(), rel=0, abs=1e-12)
    assert oracle.regret(q, Fixed(), probs, sample) > 0
    assert oracle.regret(q, Best(), probs, sample) == pytest.approx(0.0, abs=1e-12)
    ev = ExactEvaluator(env, "continuous")
    for policy in (Fixed(), Best()):
        m = ev.evaluate(policy)
        assert m.acr == oracle.acr(q, policy, probs, sample)  # bit for bit: the same computation
        assert m.regret == pytest.approx(m.oracle_acr - m.acr, abs=1e-12)
    assert ev.oracle_acr == pytest.approx(q.max(axis=1).mean(), rel=0, abs=1e-12)


def test_continuous_evaluator_is_a_deprecated_wrapper_of_oracle_acr() -> None:
    table = example_table("bon", seed=5, n_queries=20)
    with pytest.warns(DeprecationWarning, match="ContinuousEvaluator is deprecated"):
        ev = ContinuousEvaluator(table, table.test_queries())

    class Fixed:
        def act(self, weights):
            return np.full(np.shape(weights)[0], 3, dtype=np.int64)

    m = ev.evaluate(Fixed())
    assert m["acr"] == oracle.acr(ev.q, Fixed(), ev.probs, ev.weights)
    # the previous arithmetic (mean over contexts) agrees to rounding
    assert m["acr"] == pytest.approx(ev.q[:, 3].mean(), rel=0, abs=1e-12)
    assert m["regret"] == pytest.approx(ev.q.max(axis=1).mean() - ev.q[:, 3].mean(), rel=0, abs=1e-12)
    np.testing.assert_array_equal(ev.values(np.full(2000, 3)), ev.q[:, 3])


# --------------------------------------------------------------------------- agents on continuous envs
def _continuous_env_factory(seed: int):
    from iapo_gym.env import IAPOEnv

    table = example_table("bon", seed=11, n_prompts=3, n_queries=30, n_outcomes=4, n_max=5)
    return IAPOEnv(table, split_seed=seed, contexts="continuous")


def test_neural_and_psst_grid_pass_conformance_on_continuous_env() -> None:
    from iapo_gym.agents.neural import NeuralAgent
    from iapo_gym.agents.psst_grid import PSSTGrid
    from iapo_gym.agents.testing import check_agent

    env = _continuous_env_factory(0)
    assert env.observation_space.dtype == np.float32 and env.observation_space.shape == (3,)
    small = NeuralAgent(n_directions=8, n_cost_draws=2, hidden=8, first_steps=20, round_steps=5, final_steps=10, threads=1)
    check_agent(small, _continuous_env_factory, budgets=(1, 40, 300), seeds=(0, 1))
    check_agent(PSSTGrid(n_weights=3, n_costs=2), _continuous_env_factory, budgets=(1, 40, 300), seeds=(0, 1))


def test_neural_policy_is_exact_in_its_cost_term_and_beats_random() -> None:
    """The learned policy's predicted Q is linear in w_cost with slope -N * measured cost, and with a
    real budget its exact continuous ACR beats a uniformly random arm's."""
    from iapo_gym.agents.neural import NeuralAgent

    agent = NeuralAgent(n_directions=16, n_cost_draws=2, hidden=16, threads=1)
    policies = agent.fit_many(_continuous_env_factory, 2_000, [0, 1, 2])
    acrs, randoms = [], []
    for seed, pol in enumerate(policies):
        env = _continuous_env_factory(seed)
        assert 0 < pol.budget_used <= 2_000
        w = np.array([[0.3, 0.7, 0.0], [0.3, 0.7, 0.5]])
        v = pol.values(w)
        n = np.tile(np.arange(1, env.n_max + 1), env.n_prompts)
        np.testing.assert_allclose(v[0] - v[1], 0.5 * n * np.repeat(pol.cost_per_completion, env.n_max), rtol=1e-9)
        ev = ExactEvaluator(env, "continuous")
        acr = ev.evaluate(pol).acr
        assert acr <= ev.oracle_acr + 1e-12
        acrs.append(acr)
        randoms.append(ev.q.mean())
    # on average over runs (a single run at T = 2,000 falls below random now and then: 2 of 40 seeds)
    assert np.mean(acrs) > np.mean(randoms) + 0.03


def test_cost_bins_equal_count_and_ordered() -> None:
    from iapo_gym.experiments.evaluate import cost_bins

    w = ContinuousContexts(2, cost_low=0.0, cost_high=2.0).sample(np.random.default_rng(3), 1001)
    b, centre, names = cost_bins(w, 4)
    assert np.bincount(b).tolist() in ([251, 250, 250, 250], [250, 250, 250, 251], [250, 250, 251, 250], [250, 251, 250, 250])
    assert np.all(np.diff(centre[:, -1]) > 0) and len(names) == 4
    # every context of a higher bin costs at least as much as every context of a lower one
    assert all(w[b == i, -1].max() <= w[b == i + 1, -1].min() for i in range(3))
    np.testing.assert_allclose(centre[2], w[b == 2].mean(axis=0))
