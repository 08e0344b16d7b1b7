"""The agent zoo: ``make_agent(name, **overrides)`` builds any agent by name.

>>> import gymnasium as gym
>>> from iapo_gym.agents import AGENTS, make_agent
>>> def make_env(seed):  # the env of run ``seed``: its world, its split, its ledger
...     return gym.make("IAPO-SynthBernoulli-v0", budget=5000, world_seed=seed).unwrapped
>>> agent = make_agent("psst")
>>> policy = agent.fit(make_env(0), budget=5000, seed=0)
>>> 0 < policy.budget_used <= 5000
True
>>> policies = agent.fit_many(make_env, 5000, range(8))  # 8 seeds as one vectorised batch
>>> len(policies), policy.act(make_env(0).contexts.weights).shape
(8, (3,))

``AGENTS`` maps each name to a factory taking keyword overrides of the agent's hyper-parameters.
Factories import their module lazily, so ``import agents`` stays cheap (no torch until an SB3
agent is built). See docs/AGENTS.md for adding an agent in one file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from iapo_gym.agents.base import Agent, Policy, StochasticPolicy, TablePolicy, policy_acr

__all__ = ["AGENTS", "Agent", "Policy", "StochasticPolicy", "TablePolicy", "make_agent", "policy_acr"]


def _factory(module: str, cls: str, **defaults: Any) -> Callable[..., Agent]:
    def build(**overrides: Any) -> Agent:
        klass = getattr(importlib.import_module(module), cls)
        return klass(**{**defaults, **overrides})

    build.__doc__ = f"{module}.{cls}({', '.join(f'{k}={v!r}' for k, v in defaults.items())})"
    return build


AGENTS: dict[str, Callable[..., Agent]] = {
    "psst": _factory("iapo_gym.agents.psst", "PSST"),
    "psst_paired": _factory("iapo_gym.agents.psst_paired", "PSSTPaired"),
    "topk_paired": _factory("iapo_gym.agents.psst_paired", "TopKPaired"),
    "psst_model": _factory("iapo_gym.agents.psst_model", "PSSTModel"),
    "topk1": _factory("iapo_gym.agents.topk", "TopK", k=1, rho=0.2),
    "topk4": _factory("iapo_gym.agents.topk", "TopK", k=4, rho=0.2),
    "topk8": _factory("iapo_gym.agents.topk", "TopK", k=8, rho=0.2),
    "uniform": _factory("iapo_gym.agents.uniform", "Uniform"),
    "ucb": _factory("iapo_gym.agents.ucb", "UCB", c=0.1),
    "egreedy": _factory("iapo_gym.agents.greedy", "EpsilonGreedy", epsilon=0.15),
    "softmax": _factory("iapo_gym.agents.greedy", "Softmax", tau=0.05),
    "triple_n1": _factory("iapo_gym.agents.triple", "TRIPLE", n="one"),
    "triple_nrandom": _factory("iapo_gym.agents.triple", "TRIPLE", n="random"),
    "seqhalving": _factory("iapo_gym.agents.halving", "SequentialHalving"),
    "random": _factory("iapo_gym.agents.random", "RandomAgent"),
    "neural": _factory("iapo_gym.agents.neural", "NeuralAgent"),
    "psst_grid": _factory("iapo_gym.agents.psst_grid", "PSSTGrid"),
    "ppo": _factory("iapo_gym.agents.sb3", "SB3Agent", algo="ppo"),
    "a2c": _factory("iapo_gym.agents.sb3", "SB3Agent", algo="a2c"),
    "dqn": _factory("iapo_gym.agents.sb3", "SB3Agent", algo="dqn"),
    "maskable_ppo": _factory("iapo_gym.agents.sb3", "SB3Agent", algo="maskable_ppo"),
}


def make_agent(name: str, **overrides: Any) -> Agent:
    """Build the agent registered as ``name`` with hyper-parameter ``overrides``."""
    try:
        factory = AGENTS[name]
    except KeyError:
        raise KeyError(f"unknown agent {name!r}; available: {', '.join(sorted(AGENTS))}") from None
    return factory(**overrides)
