"""check_agent catches cheating and hiddenly nondeterministic agents (each passed the checks before)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from agents_helpers import make_env, small_table

from iapo_gym.agents import make_agent
from iapo_gym.agents.base import Agent, TablePolicy
from iapo_gym.agents.testing import (
    AgentCheckError,
    DeploymentView,
    check_across_processes,
    check_agent,
    check_policy_off_contexts,
    fit_guarded,
)

TABLE = small_table("mv")  # 4 prompts x n_max 6 = 24 arms, 3 contexts


def factory(seed: int):
    return make_env(TABLE, seed)


def _policy(env, arms, budget_used: int = 0) -> TablePolicy:
    return TablePolicy(env.contexts, np.asarray(arms, dtype=np.int64), env.n_max, budget_used=budget_used)


class TestSplitOracle(Agent):
    """Reads the test split of env.table and deploys the best single-sample prompt there, for 0 budget."""

    name = "test-split-oracle"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        table, test = env.table, env.test_queries
        acc = np.take_along_axis(table.answer_probs[:, test], table.gold[test][None, :, None], 2)[..., 0].mean(1)
        return _policy(env, np.full(len(env.contexts), int(np.argmax(acc)) * env.n_max))


class LedgerClearer(Agent):
    """Clears the ledger with a seeded reset five times, drawing five budgets' worth."""

    name = "ledger-clearer"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        for _ in range(5):
            env.reset(seed=seed)
            if budget:
                env.pull(np.zeros(budget, np.int64), np.ones(budget, np.int64))
        return _policy(env, np.zeros(len(env.contexts)), int(env.ledger.spent))


class SpentEditor(Agent):
    """Pulls three budgets' worth, then writes ledger.spent back down."""

    name = "spent-editor"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        if budget:
            env.pull(np.zeros(3 * budget, np.int64), np.ones(3 * budget, np.int64))
        env.ledger.spent = min(int(env.ledger.spent), budget)
        return _policy(env, np.zeros(len(env.contexts)), int(env.ledger.spent))


class BudgetEditor(Agent):
    """Lifts ledger.budget to pull more than allowed, and puts both fields back afterwards."""

    name = "budget-editor"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        old = env.ledger.budget
        env.ledger.budget = None
        if budget:
            env.pull(np.zeros(2 * budget, np.int64), np.ones(2 * budget, np.int64))
        env.ledger.budget, env.ledger.spent = old, min(int(env.ledger.spent), budget)
        return _policy(env, np.zeros(len(env.contexts)), int(env.ledger.spent))


class OwnSampler(Agent):
    """Draws free completions from env.table through sample_pulls with its own generator."""

    name = "own-sampler"

    def fit(self, env, budget, seed):
        from iapo_gym.sampling import sample_pulls

        env = env.unwrapped
        rng = np.random.default_rng(seed)
        prompts = np.repeat(np.arange(env.n_prompts), 50)
        pulls = sample_pulls(env.table, prompts, rng.choice(env.train_queries, prompts.size), np.ones_like(prompts), rng)
        best = int(np.argmax(np.bincount(prompts, weights=env.score(pulls)[0], minlength=env.n_prompts)))
        return _policy(env, np.full(len(env.contexts), best * env.n_max))


class HashDependent(Agent):
    """Picks its arm from hash() of a string: the same in one process, different across PYTHONHASHSEED."""

    name = "hash-dependent"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        arm = hash(f"arm-{seed}") % (env.n_prompts * env.n_max)
        return _policy(env, np.full(len(env.contexts), arm))


class RarelyNondeterministic(Agent):
    """Deploys another arm in about 3% of fits (a draw from the global RNG)."""

    name = "rarely-nondeterministic"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        arm = 1 if random.random() < 0.03 else 0
        return _policy(env, np.full(len(env.contexts), arm))


class OffSetPolicy(TablePolicy):
    """Arm -1 for every context that is not exactly one of the finite set."""

    def act(self, weights):
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        known = (np.abs(w[:, None, :] - self.contexts.weights[None]).sum(-1) < 1e-12).any(1)
        return np.where(known, super().act(w), -1).astype(np.int64)


class OffSetArm(Agent):
    """Valid on the finite contexts, arm -1 elsewhere."""

    name = "off-set-arm"

    def fit(self, env, budget, seed):
        env = env.unwrapped
        return OffSetPolicy(env.contexts, np.zeros(len(env.contexts), np.int64), env.n_max)


CHEATS = [
    (TestSplitOracle(), {}, "read env.table"),
    (LedgerClearer(), {}, r"called env.reset\(seed=0\) after spending 5 completions"),
    (SpentEditor(), {}, "set env.ledger.spent = 5"),
    (BudgetEditor(), {}, "set env.ledger.budget = None"),
    (OwnSampler(), {}, "read env.table"),
    (HashDependent(), {"hash_seeds": (1, 2)}, "deploys different arms in a fresh process with PYTHONHASHSEED"),
    (RarelyNondeterministic(), {"repeats": 200}, r"fit \d+ of 200 with seed 0 .* deployed different arms"),
    (OffSetArm(), {}, r"act\(\) returned arm -1 \(outside 0..23\) for the context"),
]


@pytest.mark.parametrize("agent, options, message", CHEATS, ids=[c[0].name for c in CHEATS])
def test_check_agent_fails_every_cheat(agent, options, message) -> None:
    options = {"hash_seeds": (), **options}
    with pytest.raises(AgentCheckError, match=message):
        check_agent(agent, factory, budgets=(5,), seeds=(0,), batch=False, **options)


def test_the_cheats_passed_the_old_checks() -> None:
    """Without the new rules (plain fit, the finite contexts only) each cheat looks conforming.

    The two ledger editors are now also stopped by the ledger itself (read-only counters).
    """
    from iapo_gym.agents.testing import check_budget, check_policy

    for agent, _, _ in CHEATS:
        env = factory(0)
        if isinstance(agent, SpentEditor | BudgetEditor):
            with pytest.raises(AttributeError, match="has no setter"):
                agent.fit(env, 5, 0)
            continue
        policy = agent.fit(env, 5, 0)
        check_budget(policy, env, 5, agent.name)
        check_policy(policy, env, agent.name)


def test_a_swallowed_refusal_still_fails() -> None:
    class Sneaky(Agent):
        name = "sneaky"

        def fit(self, env, budget, seed):
            try:
                env.unwrapped.test_queries  # noqa: B018 - the access is the point
            except AttributeError:
                pass
            return _policy(env, np.zeros(len(env.contexts)))

    with pytest.raises(AgentCheckError, match="read env.test_queries"):
        fit_guarded(Sneaky(), factory(0), 5, 0)


def test_view_counts_draws_and_forwards_the_deployment_interface() -> None:
    env = factory(0)
    view = DeploymentView(env)
    view.reset(seed=3)
    pulls = view.pull(np.array([0, 1]), np.array([2, 3]))
    view.reset()
    view.step(5)  # arm 5 = prompt 0, N = 6
    assert view.drawn == 11 == env.unwrapped.ledger.spent == view.ledger.spent
    assert view.score(pulls).shape == (3, 2) and view.unwrapped is view and view.n_max == 6
    assert view.ledger.remaining is None and view.ledger.fits(10**6)
    with pytest.raises(AgentCheckError, match="env.ledger.charge"):
        view.ledger.charge(1)
    with pytest.raises(AgentCheckError, match="reset"):
        view.reset(seed=4)


def test_unseen_context_probe_accepts_the_zoo_policies() -> None:
    env = factory(0)
    for name in ("psst", "ucb", "random"):
        check_policy_off_contexts(make_agent(name).fit(env, 40, 0), env)


def test_zoo_fits_the_same_in_fresh_processes() -> None:
    """Every table-driven zoo agent fits the same under PYTHONHASHSEED 1 and 2 as here (two processes).

    The SB3 agents are left out: one PPO fit costs ~9 s per process (torch start-up).
    """
    names = ["psst", "topk1", "topk4", "topk8", "uniform", "triple_n1", "triple_nrandom", "seqhalving", "random",
             "ucb", "egreedy", "softmax", "psst_paired", "topk_paired"]
    from iapo_gym.agents import AGENTS

    jobs = [(make_agent(n), factory, 40, 3) for n in names if n in AGENTS]
    assert len(jobs) == len(names)
    check_across_processes(jobs, hash_seeds=(1, 2))


class BatchCheat(Agent):
    """Honest fit, but fit_many reads each env's test split (the batch path is guarded too)."""

    name = "batch-cheat"

    def fit(self, env, budget, seed):
        return _policy(env.unwrapped, np.zeros(len(env.unwrapped.contexts)))

    def fit_many(self, make_env, budget, seeds):
        envs = [make_env(s) for s in seeds]
        return [_policy(e, np.full(len(e.contexts), int(e.test_queries[0]) % e.n_arms)) for e in envs]


def test_fit_many_is_guarded_too() -> None:
    with pytest.raises(AgentCheckError, match=r"batch-cheat \(budget 5\): during fit_many the agent read env.test_queries"):
        check_agent(BatchCheat(), factory, budgets=(5,), seeds=(0, 1), hash_seeds=())
