"""Every agent of the zoo passes the public conformance checks (iapo_gym.agents.testing), incl. a budget property test."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from agents_helpers import make_env, small_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iapo_gym.agents import AGENTS, make_agent
from iapo_gym.agents.base import Agent, TablePolicy
from iapo_gym.agents.testing import AgentCheckError, check_agent, check_policy

SB3 = {"ppo", "a2c", "dqn", "maskable_ppo"}
BATCH = ["psst", "topk1", "topk4", "topk8", "uniform", "triple_n1", "triple_nrandom", "seqhalving", "random"]
SEQUENTIAL = ["ucb", "egreedy", "softmax"]
MATH_PICKLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "published" / "MATH_final.pkl"


def test_registry_names_the_whole_zoo():
    expected = {"psst", "topk1", "topk4", "topk8", "uniform", "ucb", "egreedy", "softmax", "triple_n1",
                "triple_nrandom", "seqhalving", "random", "ppo", "a2c", "dqn"}
    assert expected <= set(AGENTS)
    assert make_agent("topk4").k == 4 and make_agent("topk1", rho=0.1).rho == 0.1
    assert make_agent("ucb").c == 0.1 and make_agent("egreedy").epsilon == 0.15
    with pytest.raises(KeyError, match="available"):
        make_agent("nope")


@pytest.mark.parametrize("strategy", ["mv", "bon"])
@pytest.mark.parametrize("name", BATCH + SEQUENTIAL)
def test_agent_conforms(name, strategy):
    table = small_table(strategy)
    # the fresh-process check runs once for the whole zoo (test_zoo_fits_the_same_in_fresh_processes)
    check_agent(make_agent(name), lambda s: make_env(table, s), budgets=(0, 1, 23, 400), seeds=(0, 5, 9), hash_seeds=())


class Overspender(Agent):
    """A broken agent: pulls once more than its budget allows (no ledger budget set)."""

    name = "overspender"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        env.pull(np.array([0]), np.array([budget + 1]) if budget + 1 <= env.n_max else np.array([1]))
        return TablePolicy(env.contexts, np.zeros(len(env.contexts), np.int64), env.n_max, budget_used=budget)


class Dishonest(Agent):
    """A broken agent: spends but reports nothing."""

    name = "dishonest"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        if budget >= 1:
            env.pull(np.array([0]), np.array([1]))
        return TablePolicy(env.contexts, np.zeros(len(env.contexts), np.int64), env.n_max)


class BadArm(Agent):
    name = "badarm"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        return TablePolicy(env.contexts, np.full(len(env.contexts), env.n_prompts * env.n_max), env.n_max)


class Moody(Agent):
    """A broken agent: ignores its seed."""

    name = "moody"
    calls = 0

    def fit(self, env, budget, seed):
        env = env.unwrapped
        Moody.calls += 1
        return TablePolicy(env.contexts, np.full(len(env.contexts), Moody.calls % 2), env.n_max)


@pytest.mark.parametrize(
    "agent,message",
    [(Overspender(), "spent 2 completions with a budget of 1"), (Dishonest(), "budget_used=0 but the ledger shows 1"),
     (BadArm(), "outside"), (Moody(), "different arms")],
)
def test_checks_catch_broken_agents(agent, message):
    table = small_table("mv")
    with pytest.raises(AgentCheckError, match=message):
        check_agent(agent, lambda s: make_env(table, s), budgets=(1,), seeds=(0,))


@cache
def _task_tables() -> dict[str, object]:
    """Every task table available here: the registered synthetic tasks, MATH if present, small tables."""
    tables: dict[str, object] = {"small-mv": small_table("mv"), "small-bon": small_table("bon", n_prompts=5, n_max=8)}
    try:
        from iapo_gym.tasks import TASKS, load_task_table
    except ImportError:
        TASKS = {}
    for task in TASKS:
        try:
            tables[task] = load_task_table(task, world_seed=0)
        except Exception:  # real tasks whose data is not installed here
            continue
    if "MATH" not in tables and MATH_PICKLE.exists():
        from iapo_gym.tables.importer import import_released

        t = import_released(MATH_PICKLE)
        tables["MATH"] = t[0] if isinstance(t, list) else t
    return tables


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), budget=st.integers(1, 50_000), name=st.sampled_from(BATCH))
def test_batch_agents_never_exceed_the_budget(data, budget, name):
    task = data.draw(st.sampled_from(sorted(_task_tables())), label="task")
    table = _task_tables()[task]
    envs = [make_env(table, s, budget=budget) for s in (0, 1)]
    policies = make_agent(name).fit_many(lambda s: envs[s], budget, [0, 1])
    for env, policy in zip(envs, policies, strict=True):
        spent = env.unwrapped.ledger.spent
        assert spent <= budget and policy.budget_used == spent
        check_policy(policy, env)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.integers(1, 3_000), name=st.sampled_from(SEQUENTIAL), strategy=st.sampled_from(["mv", "bon"]))
def test_sequential_agents_spend_exactly_the_budget(budget, name, strategy):
    table = small_table(strategy)
    env = make_env(table, 0, budget=budget)
    policy = make_agent(name).fit(env, budget, 0)
    assert env.unwrapped.ledger.spent == policy.budget_used == budget  # N = 1 always fits: nothing is wasted
    check_policy(policy, env)


def test_the_one_file_agent_example_in_the_docs_passes_the_checks():
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "AGENTS.md").read_text()
    code = re.findall(r"```python\n# my_agent.py\n(.*?)```", doc, re.S)[0]
    exec(compile(code, "docs/AGENTS.md", "exec"), {})  # defines the agent and runs check_agent on it
