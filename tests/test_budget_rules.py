"""The budget rule on every public path: a refused call spends nothing, threads never overspend,
vector envs spend one budget, and bad arguments get one clear error naming the argument."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import pytest
from thread_helpers import run_threads, yield_on_every_line

import iapo_gym  # noqa: F401  (registers the ids)
from iapo_gym.arms import arm_index
from iapo_gym.env import IAPOEnv
from iapo_gym.ledger import BudgetExceededError, BudgetLedger


def _spent(env) -> int:
    return env.unwrapped.ledger.spent


# ---------------------------------------------------------------------- refused calls spend nothing
def test_pull_with_a_bad_width_spends_nothing() -> None:
    env = IAPOEnv("SynthBernoulli", budget=1)
    env.reset(seed=0)
    state = env.np_random.bit_generator.state
    for width in (0, -1, 1.5, "1", 33, True):
        with pytest.raises((TypeError, ValueError), match="width"):
            env.pull([0], [1], width=width)
    assert _spent(env) == 0 and env.np_random.bit_generator.state == state
    assert env.pull([0], [1], width=1).completions == 1 and _spent(env) == 1


@pytest.mark.parametrize(
    ("prompt", "n", "query", "match"),
    [
        ([0], [2.9], None, "n must hold whole numbers"),
        ([0], ["5"], None, "n must hold whole numbers"),
        ([0], [True], None, "n must hold whole numbers"),
        ([0.5], [1], None, "prompt must hold whole numbers"),
        ([[0, 1]], [1], None, "prompt must be a 1-D array"),
        ([0, 1], [1, 2, 3], None, "n must be one whole number or one per pull"),
        ([0, 1], [1, 2], [0, 1, 2], "query must be one index or one per pull"),
        ([0], [1], [10**6], "training split"),
        ([0], [1], [-1], "training split"),
    ],
)
def test_pull_refuses_bad_shapes_and_types_before_charging(prompt, n, query, match) -> None:
    env = IAPOEnv("SynthBernoulli", budget=100)
    env.reset(seed=0)
    with pytest.raises((TypeError, ValueError), match=match):
        env.pull(prompt, n, query)
    assert _spent(env) == 0


@pytest.mark.parametrize("action", [True, np.bool_(True), 2.9, "5", None, 32 * 32, -1, [1]])
def test_step_refuses_anything_but_an_arm_index(action) -> None:
    env = IAPOEnv("SynthBernoulli", budget=100)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an arm index"):
        env.step(action)
    assert _spent(env) == 0
    assert env.step(np.int64(arm_index(0, 2, 32)))[4]["n"] == 2  # the episode is still open
    assert env.step.__self__ is env


def test_a_failing_live_backend_gives_its_charge_back() -> None:
    class DroppedConnection:  # fault injection: a backend whose server goes away mid-request
        def generate(self, prompt, n, query, rng, width=None):
            raise ConnectionError("server closed the connection")

    env = IAPOEnv("SynthBernoulli", budget=20, backend=DroppedConnection())
    env.reset(seed=0)
    with pytest.raises(ConnectionError):
        env.step(arm_index(0, 8, 32))
    with pytest.raises(ConnectionError):
        env.pull([0, 1], [4, 4])
    assert _spent(env) == 0 and env.ledger.lifetime_spent == 0


# ---------------------------------------------------------------------- clear errors for bad arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": 123}, TypeError, "task must be a task name or env id"),
        ({"contexts": 123}, TypeError, "contexts must be 'finite', 'continuous', a ContextSet"),
        ({"backend": 123}, TypeError, "backend must be 'vllm', 'openai'"),
        ({"backend": "bogus"}, ValueError, "backend must be one of 'vllm', 'openai'"),
        ({"world_seed": 1.5}, ValueError, "world_seed must be a whole number"),
        ({"world_seed": "1"}, TypeError, "world_seed must be a whole number"),
        ({"split_seed": -2}, ValueError, "split_seed must be >= 0"),
        ({"budget": 2.5}, ValueError, "budget must be a non-negative whole number"),
        ({"on_exhausted": "clip"}, ValueError, "on_exhausted must be 'raise' or 'truncate'"),
        ({"train_fraction": float("nan")}, ValueError, "train_fraction must be a number strictly between 0 and 1"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(kwargs, error, match) -> None:
    kwargs = {"task": "SynthBernoulli", **kwargs}
    with pytest.raises(error, match=match):
        IAPOEnv(**kwargs)


def test_gym_make_with_a_bad_backend_is_refused_before_any_charge() -> None:
    with pytest.raises(TypeError, match="backend must be"):
        gym.make("IAPO-SynthBernoulli-v0", budget=5, backend=123)


@pytest.mark.parametrize("num_envs", [0, -1, 2.5, "4"])
def test_make_vec_refuses_a_bad_num_envs(num_envs) -> None:
    with pytest.raises((TypeError, ValueError), match="num_envs"):
        gym.make_vec("IAPO-SynthBernoulli-v0", num_envs=num_envs, budget=10)


@pytest.mark.parametrize("weights", [[np.nan, 0.5], [np.inf, 0.5], [1.0, -0.5], [[1.0, 0.2, 0.3]]])
def test_score_refuses_bad_weights(weights) -> None:
    env = IAPOEnv("SynthBernoulli", budget=10)
    env.reset(seed=0)
    pulls = env.pull([0], [3])
    with pytest.raises(ValueError, match="weights"):
        env.score(pulls, weights)
    assert env.score(pulls, [1.0, 0.5]).shape == (1, 1)


# ---------------------------------------------------------------------- vector envs: one budget
def test_vector_step_refused_in_one_sub_env_charges_none_of_the_others() -> None:
    venv = gym.make_vec("IAPO-SynthBernoulli-v0", num_envs=4, budget=30)
    obs, _ = venv.reset(seed=0)
    good = np.array([arm_index(p, 5, 32) for p in range(4)])
    for bad in (np.array([good[0], good[1], 32 * 32, good[3]]), np.array([1, 2, 3.5, 4]), good[:3]):
        with pytest.raises(ValueError, match="actions"):
            venv.step(bad)
    assert venv.unwrapped.ledger.spent == 0
    venv.step(good)  # 20 of 30
    with pytest.raises(BudgetExceededError):
        venv.step(good)  # needs 20, 10 left: refused as a whole
    assert venv.unwrapped.ledger.spent == 20
    _, _, term, _, info = venv.step(np.array([arm_index(0, 1, 32)] * 4))  # the step after a refusal works
    assert term.all() and venv.unwrapped.ledger.spent == 24 and (info["budget_used"] == 24).all()


def test_vector_env_truncates_at_the_budget_when_asked() -> None:
    venv = gym.make_vec("IAPO-SynthBernoulli-v0", num_envs=3, budget=25, on_exhausted="truncate")
    venv.reset(seed=1)
    arms = np.array([arm_index(p, 8, 32) for p in range(3)])
    _, _, term, trunc, _ = venv.step(arms)  # 24
    assert term.all() and not trunc.any()
    _, reward, term, trunc, info = venv.step(arms)  # 1 left: sub-env 0 draws 1, the others nothing
    assert term.tolist() == [True, False, False] and trunc.tolist() == [False, True, True]
    assert reward[1] == reward[2] == 0.0
    final = info["final_info"]
    assert final["n"].tolist() == [1, -1, -1] and final["clipped"].tolist() == [True, True, True]
    assert venv.unwrapped.ledger.spent == 25
    venv.reset(seed=1)  # a seeded reset starts a new run of the vector env's own ledger
    assert venv.unwrapped.ledger.spent == 0


def test_single_env_truncation_mode_clips_then_truncates() -> None:
    env = gym.make("IAPO-SynthBernoulli-v0", budget=10, on_exhausted="truncate")
    env.reset(seed=0)
    assert env.step(arm_index(0, 8, 32))[4]["n"] == 8
    env.reset()
    _, _, term, trunc, info = env.step(arm_index(1, 8, 32))
    assert (term, trunc, info["n"], info["clipped"], info["budget_left"]) == (True, False, 2, True, 0)
    env.reset()
    _, reward, term, trunc, info = env.step(arm_index(1, 8, 32))
    assert (reward, term, trunc, info["n"], info["budget_used"]) == (0.0, False, True, -1, 10)


def test_a_ledger_shared_by_envs_is_one_budget_and_survives_their_seeded_resets() -> None:
    ledger = BudgetLedger(12)
    a = IAPOEnv("SynthBernoulli", budget=ledger)
    b = IAPOEnv("SynthBernoulli", budget=ledger)
    a.reset(seed=0)
    b.reset(seed=1)
    a.step(arm_index(0, 8, 32))
    b.reset(seed=2)  # not its ledger: a seeded reset leaves it alone
    with pytest.raises(BudgetExceededError):
        b.step(arm_index(0, 8, 32))
    assert ledger.spent == 8 and b.step(arm_index(0, 4, 32))[4]["budget_left"] == 0


# ---------------------------------------------------------------------- threads on one env
def test_step_and_reset_from_threads_never_leave_a_charged_pull_without_its_result() -> None:
    import iapo_gym.env
    import iapo_gym.ledger

    env = IAPOEnv("SynthBernoulli", budget=400)
    env.reset(seed=0)
    delivered = [0] * 6
    start = threading.Barrier(6)

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        start.wait()
        for _ in range(25):
            try:
                if rng.random() < 0.5:
                    env.reset()
                info = env.step(int(rng.integers(0, env.n_arms)))[4]
                delivered[i] += info["n"]
            except (gym.error.ResetNeeded, BudgetExceededError):
                pass  # refused: must have spent nothing
            try:
                delivered[i] += env.pull([int(rng.integers(0, 32))], [int(rng.integers(1, 5))]).completions
            except BudgetExceededError:
                pass

    run_threads(worker, 6, yield_on_every_line(iapo_gym.env, iapo_gym.ledger))
    assert sum(delivered) == env.ledger.spent <= 400


# ---------------------------------------------------------------------- policies and agents
@pytest.mark.parametrize("weights", [[np.nan, 0.2], [np.inf, 0.2], [1.0, -0.2], [1.0, 1e300], [[1.0, 0.2, 0.3]], "x"])
def test_policy_act_refuses_bad_weights_instead_of_mapping_them_to_context_0(weights) -> None:
    from iapo_gym.agents import make_agent

    env = IAPOEnv("SynthBernoulli", budget=64)
    policy = make_agent("uniform").fit(env, 64, 0)
    with pytest.raises((TypeError, ValueError), match="weights"):
        policy.act(weights)
    with pytest.raises((TypeError, ValueError), match="weights"):
        env.contexts.index_of(np.asarray([np.nan, 0.2]))
    assert policy.act([1.0, 0.2]).shape == (1,)


@pytest.mark.parametrize(("name", "kwargs"), [("ucb", {"c": float("nan")}), ("ucb", {"c": float("inf")}),
                                              ("ucb", {"c": "0.1"}), ("ucb", {"c": -1.0}),
                                              ("softmax", {"tau": float("nan")}), ("softmax", {"tau": 0.0})])
def test_agent_constants_must_be_finite_numbers(name, kwargs) -> None:
    from iapo_gym.agents import make_agent

    with pytest.raises((TypeError, ValueError), match="must be"):
        make_agent(name, **kwargs)
