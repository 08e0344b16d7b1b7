"""Public conformance checks for agents (ours and yours).

>>> from iapo_gym.agents.testing import check_agent
>>> check_agent(MyAgent(), lambda seed: IAPOEnv("SynthBernoulli", split_seed=seed, world_seed=seed),
...             budgets=(1, 100, 5000))

:func:`check_agent` raises :class:`AgentCheckError` naming the first violated rule:

1. **budget** -- after ``fit(env, T, seed)`` the env's ledger shows at most ``T`` completions spent
   and ``policy.budget_used`` equals that spend (agents must report what they used); the same for
   every run of ``fit_many``;
2. **determinism** -- two fits with the same seed on freshly built envs give the same deployment
   distribution for every context (``policy.arm_probs``) and the same spend;
3. **valid arms** -- ``policy.act`` returns an arm in ``0 .. P * N_max - 1`` for every context (and
   ``policy(context)`` an ``int``), and ``arm_probs`` rows are distributions.

``env_factory(seed)`` must build a fresh, unwrapped or wrapped IAPO env whose split / world depends
only on ``seed`` (e.g. ``lambda s: IAPOEnv(task, split_seed=s, world_seed=s)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from iapo_gym.agents.base import Agent, Policy

__all__ = ["AgentCheckError", "check_agent", "check_budget", "check_determinism", "check_policy"]


class AgentCheckError(AssertionError):
    """An agent violated one of the conformance rules."""


def _base(env: Any) -> Any:
    return getattr(env, "unwrapped", env)


def check_policy(policy: Policy, env: Any, who: str = "agent") -> None:
    """Rule 3: a valid arm for every context; ``arm_probs`` rows are distributions."""
    base = _base(env)
    n_arms = int(base.n_prompts) * int(base.n_max)
    weights = base.contexts.weights
    arms = np.asarray(policy.act(weights))
    if arms.shape != (weights.shape[0],):
        raise AgentCheckError(f"{who}: act() on {weights.shape[0]} contexts returned shape {arms.shape}")
    if not np.issubdtype(arms.dtype, np.integer) or arms.min() < 0 or arms.max() >= n_arms:
        raise AgentCheckError(f"{who}: act() returned arms outside 0..{n_arms - 1}: {arms.tolist()}")
    single = policy(weights[0])
    if not isinstance(single, int) or not 0 <= single < n_arms:
        raise AgentCheckError(f"{who}: policy(context) must return an int arm in 0..{n_arms - 1}; got {single!r}")
    probs = np.asarray(policy.arm_probs(weights, n_arms))
    if probs.shape != (weights.shape[0], n_arms) or np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0):
        raise AgentCheckError(f"{who}: arm_probs must be (C, {n_arms}) rows of probabilities")
    if int(policy.n_max) != int(base.n_max):
        raise AgentCheckError(f"{who}: policy.n_max={policy.n_max} but the env has n_max={base.n_max}")


def check_budget(policy: Policy, env: Any, budget: int, who: str = "agent") -> int:
    """Rule 1 for one run: ledger spend ``<= budget`` and ``== policy.budget_used``. Returns the spend."""
    spent = int(_base(env).ledger.spent)
    if spent > budget:
        raise AgentCheckError(f"{who}: spent {spent} completions with a budget of {budget}")
    if int(policy.budget_used) != spent:
        raise AgentCheckError(f"{who}: policy.budget_used={policy.budget_used} but the ledger shows {spent}")
    return spent


def check_determinism(
    agent: Agent, env_factory: Callable[[int], Any], budget: int, seed: int = 0, who: str = "agent"
) -> None:
    """Rule 2: the same seed gives the same policy (arm distribution per context) and the same spend."""
    env_a, env_b = env_factory(seed), env_factory(seed)
    pol_a, pol_b = agent.fit(env_a, budget, seed), agent.fit(env_b, budget, seed)
    base = _base(env_a)
    n_arms = int(base.n_prompts) * int(base.n_max)
    w = base.contexts.weights
    if not np.array_equal(pol_a.arm_probs(w, n_arms), pol_b.arm_probs(w, n_arms)):
        raise AgentCheckError(f"{who}: two fits with seed {seed} (budget {budget}) deploy different arms")
    if int(_base(env_a).ledger.spent) != int(_base(env_b).ledger.spent):
        raise AgentCheckError(f"{who}: two fits with seed {seed} (budget {budget}) spent different budgets")


def check_agent(
    agent: Agent,
    env_factory: Callable[[int], Any],
    budgets: Iterable[int] = (1, 50, 1000, 5000),
    seeds: Sequence[int] = (0, 1, 2),
    determinism: bool = True,
    batch: bool = True,
) -> None:
    """Run every conformance rule on ``agent`` for each budget.

    Args:
        agent: the agent under test.
        env_factory: ``seed -> env`` (fresh env per call).
        budgets: completion budgets to try.
        seeds: seeds of the ``fit`` runs and of the ``fit_many`` batch.
        determinism: also check rule 2 (fits twice per budget).
        batch: also check ``fit_many`` over ``seeds``.
    """
    who = getattr(agent, "name", type(agent).__name__)
    for budget in budgets:
        budget = int(budget)
        env = env_factory(seeds[0])
        policy = agent.fit(env, budget, seeds[0])
        check_budget(policy, env, budget, f"{who} (fit, budget {budget})")
        check_policy(policy, env, f"{who} (fit, budget {budget})")
        if determinism:
            check_determinism(agent, env_factory, budget, seeds[0], who)
        if batch:
            envs: dict[int, Any] = {}

            def make(seed: int, envs: dict[int, Any] = envs) -> Any:  # bind this iteration's dict
                envs[seed] = env_factory(seed)
                return envs[seed]

            policies = agent.fit_many(make, budget, list(seeds))
            if len(policies) != len(seeds):
                raise AgentCheckError(f"{who}: fit_many returned {len(policies)} policies for {len(seeds)} seeds")
            for s, pol in zip(seeds, policies, strict=True):
                check_budget(pol, envs[s], budget, f"{who} (fit_many seed {s}, budget {budget})")
                check_policy(pol, envs[s], f"{who} (fit_many seed {s}, budget {budget})")
