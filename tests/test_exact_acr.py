"""One exact-ACR computation (``iapo_gym.oracle.acr`` / ``context_values``) for every caller.

The project used to compute a policy's exact ACR in four places (``oracle.acr`` on arms,
``agents.base.policy_acr`` on arm distributions, ``ExactEvaluator.evaluate`` in train.py and
``ContinuousEvaluator.evaluate`` in the continuous report). The tests below restate each of those
former formulas and check that the one remaining computation returns the same numbers, bit for
bit (the continuous evaluator's mean to rounding), on the released MATH table and on synthetic
tasks, for deterministic, stochastic and learnt policies.
"""

from __future__ import annotations

import numpy as np
import pytest

from iapo_gym import oracle
from iapo_gym.agents import make_agent
from iapo_gym.agents.base import StochasticPolicy, TablePolicy, policy_acr
from iapo_gym.continuous import ContinuousContexts, exact_q_values
from iapo_gym.env import IAPOEnv
from iapo_gym.experiments.evaluate import ExactEvaluator


# --------------------------------------------------------------------------- the former formulas
def former_oracle_acr(q: np.ndarray, arms: np.ndarray, probs: np.ndarray) -> float | np.ndarray:
    flat = q.reshape(q.shape[0], -1)
    picked = flat[np.arange(flat.shape[0]), arms]
    out = picked @ probs
    return float(out) if arms.ndim == 1 else out


def former_policy_acr(policy, q: np.ndarray, contexts) -> float:
    flat = q.reshape(q.shape[0], -1)
    pi = policy.arm_probs(contexts.weights, flat.shape[1])
    return float(contexts.probs @ (pi * flat).sum(axis=1))


def former_evaluator(policy, q: np.ndarray, weights: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """``(acr, regret)`` as ExactEvaluator.evaluate computed them."""
    flat = q.reshape(q.shape[0], -1)
    pi = policy.arm_probs(weights, flat.shape[1])
    value = (pi * flat).sum(axis=1)
    return float(probs @ value), float(probs @ np.maximum(flat.max(axis=1) - value, 0.0))


def former_continuous_acr(policy, q: np.ndarray, weights: np.ndarray) -> float:
    flat = q.reshape(q.shape[0], -1)
    return float((policy.arm_probs(weights, flat.shape[1]) * flat).sum(axis=1).mean())


# --------------------------------------------------------------------------- policies to score
def policies_for(env, fitted: list, seed: int) -> list:
    """A fixed table policy, a stochastic policy, the Random agent's and the given fitted ones."""
    rng = np.random.default_rng(seed)
    c, n_arms = len(env.contexts), env.n_prompts * env.n_max
    probs = rng.dirichlet(np.ones(n_arms), size=c)
    return [
        TablePolicy(env.contexts, rng.integers(0, n_arms, c), env.n_max),
        StochasticPolicy(env.contexts, probs, env.n_max, seed=seed),
        make_agent("random").fit(env, 0, seed),
        *fitted,
    ]


def check_run(env, fitted: list, seed: int) -> None:
    q = oracle.q_values(env.table, env.test_queries)
    ctx = env.contexts
    evaluator = ExactEvaluator(env, "finite")
    for policy in policies_for(env, fitted, seed):
        new = oracle.acr(q, policy, ctx.probs, ctx.weights)
        assert new == former_policy_acr(policy, q, ctx)  # bit for bit
        metrics = evaluator.evaluate(policy)
        assert (metrics.acr, metrics.regret) == former_evaluator(policy, q, ctx.weights, ctx.probs)
        assert metrics.acr == new
        with pytest.warns(DeprecationWarning, match="policy_acr"):
            assert policy_acr(policy, q, ctx) == new  # the deprecated alias
        if isinstance(policy, TablePolicy):
            arms = policy.act(ctx.weights)
            assert oracle.acr(q, arms, ctx.probs) == former_oracle_acr(q, arms, ctx.probs) == new
    many = np.stack([np.random.default_rng(seed + k).integers(0, q[0].size, len(ctx)) for k in range(5)])
    np.testing.assert_array_equal(oracle.acr(q, many, ctx.probs), former_oracle_acr(q, many, ctx.probs))


def test_one_computation_on_the_released_math_table(math_pickle) -> None:
    from iapo_gym.tables.importer import import_released

    table = import_released(math_pickle)
    table = table[0] if isinstance(table, list) else table
    seeds = [0, 1, 2]
    fitted = make_agent("psst").fit_many(lambda s: IAPOEnv(table, budget=2_000, split_seed=s), 2_000, seeds)
    for s, policy in zip(seeds, fitted, strict=True):
        check_run(IAPOEnv(table, split_seed=s), [policy], s)


@pytest.mark.parametrize("task", ["SynthBernoulli", "SynthCategorical"])
def test_one_computation_on_synthetic_tasks(task: str) -> None:
    def make(s: int) -> IAPOEnv:
        return IAPOEnv(task, budget=3_000, split_seed=s, world_seed=s)

    seeds = [0, 3]
    fitted = make_agent("psst").fit_many(make, 3_000, seeds)
    for s, policy in zip(seeds, fitted, strict=True):
        check_run(make(s), [policy], s)


def test_one_computation_on_continuous_contexts() -> None:
    """The continuous report's former evaluator (a mean over the 2,000 held-out contexts) agrees to rounding."""
    env = IAPOEnv("SynthCategorical", split_seed=1, world_seed=1, contexts="continuous")
    sample = ContinuousContexts.for_table(env.table).evaluation_sample()
    q = exact_q_values(env.table, sample, env.test_queries)
    probs = np.full(len(sample), 1.0 / len(sample))
    evaluator = ExactEvaluator(env, "continuous")
    grid = make_agent("psst_grid").fit(IAPOEnv("SynthCategorical", budget=2_000, split_seed=1, world_seed=1,
                                               contexts="continuous"), 2_000, 1)
    for policy in (grid, make_agent("random").fit(env, 0, 1)):
        new = oracle.acr(q, policy, probs, sample)
        assert evaluator.evaluate(policy).acr == new
        assert (new, evaluator.evaluate(policy).regret) == former_evaluator(policy, q, sample, probs)
        assert new == pytest.approx(former_continuous_acr(policy, q, sample), rel=0, abs=1e-12)


def test_acr_arguments_are_checked() -> None:
    q = np.arange(12, dtype=float).reshape(2, 2, 3)
    probs = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="pass weights="):
        oracle.acr(q, make_agent("random").fit(IAPOEnv("SynthBernoulli", split_seed=0, world_seed=0), 0, 0), probs)
    with pytest.raises(ValueError, match=r"arm distribution must be \(C, n_arms\)"):
        oracle.acr(q, np.full((2, 5), 0.2), probs)
    with pytest.raises(ValueError, match="non-negative and sum to 1"):
        oracle.acr(q, np.full((2, 6), 0.5), probs)
    with pytest.raises(ValueError, match="probs must be"):
        oracle.acr(q, [0, 1], [1.0])
    pi = np.zeros((2, 6))
    pi[[0, 1], [4, 2]] = 1.0
    assert oracle.acr(q, pi, probs) == oracle.acr(q, [4, 2], probs) == 0.5 * 4 + 0.5 * 8


def test_stochastic_policy_checks_its_rows_and_draws_from_its_seed():
    """Rows must sum to 1 (np.allclose's tolerance; NaN refused); act draws u from default_rng(seed), arm by inverse CDF."""
    contexts = IAPOEnv("SynthBernoulli", world_seed=0).unwrapped.contexts
    c_n, n_arms = len(contexts), 6
    probs = np.random.default_rng(1).dirichlet(np.ones(n_arms), c_n)
    for bad in (probs * 0.99, np.where(np.arange(n_arms) == 0, np.nan, probs)):
        with pytest.raises(ValueError, match="must sum to 1"):
            StochasticPolicy(contexts, bad, 3, seed=4)
    StochasticPolicy(contexts, probs * (1 + 5e-6), 3, seed=4)  # within np.allclose's rtol
    policy = StochasticPolicy(contexts, probs, 3, seed=4)
    weights = np.repeat(contexts.weights, 50, axis=0)
    idx = np.repeat(np.arange(c_n), 50)
    u = np.random.default_rng(4).random((2, idx.size))
    for row in u:  # two calls continue one stream
        expect = np.minimum((row[:, None] >= np.cumsum(probs, axis=1)[idx]).sum(axis=1), n_arms - 1)
        np.testing.assert_array_equal(policy.act(weights), expect)
