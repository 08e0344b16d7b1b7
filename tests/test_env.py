"""IAPOEnv: Gymnasium and SB3 checkers, vector envs, ledger, info contract, seeding, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from iapo_gym.arms import arm_index
from iapo_gym.env import IAPOEnv
from iapo_gym.ledger import BudgetExceededError
from iapo_gym.tables.store import TableNotFoundError

SYNTHETIC = ["IAPO-SynthBernoulli-v0", "IAPO-SynthCategorical-v0"]


@pytest.mark.parametrize("env_id", SYNTHETIC)
def test_gymnasium_and_sb3_checkers_pass(env_id: str) -> None:
    env = gym.make(env_id, budget=100_000)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_checkers_pass_on_math(math_data_dir) -> None:
    env = gym.make("IAPO-MATH-v0", budget=100_000, split_seed=0)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    u = env.unwrapped
    assert (u.n_prompts, u.n_max, u.train_queries.size, u.test_queries.size) == (25, 32, 252, 64)


def test_all_six_ids_registered_and_module_prefix_works() -> None:
    ids = {"IAPO-SynthBernoulli-v0", "IAPO-MATH-v0", "IAPO-CommonsenseQA-v0", "IAPO-SynthCategorical-v0",
           "IAPO-HelpfulHarmless-v0", "IAPO-Summarization-v0"}
    assert ids <= set(gym.registry)
    assert gym.registry["IAPO-MATH-v0"].max_episode_steps is None
    env = gym.make("iapo_gym:IAPO-SynthBernoulli-v0")
    assert isinstance(env.unwrapped, IAPOEnv) and env.unwrapped.task == "SynthBernoulli"


def test_missing_table_names_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("IAPO_GYM_DATA", str(tmp_path))
    with pytest.raises(TableNotFoundError, match=r"iapo-gym data pull.*iapo-gym data import"):
        gym.make("IAPO-HelpfulHarmless-v0")


def test_unknown_env_id_is_reported() -> None:
    with pytest.raises(gym.error.Error, match="IAPO-Nope"):
        gym.make("IAPO-Nope-v0")


def test_one_step_episodes_and_info_contract() -> None:
    env = gym.make("IAPO-SynthCategorical-v0", budget=500)
    u = env.unwrapped
    obs, info0 = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (3,)
    np.testing.assert_array_equal(obs, u.contexts.weights[info0["context"]].astype(np.float32))
    a = arm_index(5, 7, u.n_max)
    obs2, reward, terminated, truncated, info = env.step(a)
    assert terminated and not truncated and isinstance(reward, float)
    assert set(info) == set(info0)
    for key in info:
        assert np.shape(info[key]) == np.shape(info0[key]), key
    assert (info["prompt"], info["n"], info["budget_used"], info["budget_left"]) == (5, 7, 7, 493)
    assert info["mask"].sum() == 7 and np.all(info["outcomes"][7:] == -1)
    # the reward is the BoN utility of the reported outcomes under the episode's context
    w = u.contexts.weights[info0["context"]]
    best = (info["values"][:7] @ w[:2]).max()
    assert reward == pytest.approx(best - w[2] * info["cost"])
    with pytest.raises(gym.error.ResetNeeded):
        env.step(a)


def test_ledger_refuses_overspend_and_mask_tracks_budget() -> None:
    env = gym.make("IAPO-SynthBernoulli-v0", budget=40)
    u = env.unwrapped
    env.reset(seed=0)
    env.step(arm_index(0, 32, 32))
    env.reset()
    assert u.ledger.remaining == 8
    mask = u.action_masks()
    assert mask.reshape(u.n_prompts, u.n_max)[:, :8].all() and not mask.reshape(u.n_prompts, u.n_max)[:, 8:].any()
    with pytest.raises(BudgetExceededError, match="needs 9 completions but only 8"):
        env.step(arm_index(0, 9, 32))
    assert u.ledger.spent == 32  # nothing charged by the refused pull
    with pytest.raises(BudgetExceededError):
        u.pull(np.array([1, 2]), np.array([4, 5]))
    assert u.ledger.spent == 32
    pulls = u.pull(np.array([1, 2]), np.array([4, 4]))
    assert pulls.completions == 8 and u.ledger.remaining == 0
    assert not u.action_masks().any()


def test_batched_pull_charges_ledger_and_honours_named_queries() -> None:
    env = IAPOEnv("SynthBernoulli", budget=1000, world_seed=1)
    env.reset(seed=0)
    q = env.train_queries[:3]
    pulls = env.pull(np.array([0, 1, 2]), np.array([5, 6, 7]), query=q)
    np.testing.assert_array_equal(pulls.query, q)
    assert env.ledger.spent == 18
    assert env.score(pulls).shape == (3, 3)
    with pytest.raises(ValueError, match="training split"):
        env.pull(np.array([0]), np.array([1]), query=env.test_queries[:1])


def test_same_seed_bit_identical_different_seed_differs() -> None:
    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = gym.make("IAPO-SynthCategorical-v0", world_seed=4)
        env.reset(seed=seed)
        rewards = []
        for a in range(0, 300, 7):
            rewards.append(env.step(a)[1])
            env.reset()
        pulls = env.unwrapped.pull(np.arange(10), np.full(10, 32))
        return np.array(rewards), pulls.outcome

    r1, o1 = run(5)
    r2, o2 = run(5)
    r3, o3 = run(6)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(o1, o3)


def test_world_and_split_seeds_change_the_task(math_data_dir) -> None:
    a = IAPOEnv("SynthBernoulli", world_seed=0).table.answer_probs
    b = IAPOEnv("SynthBernoulli", world_seed=1).table.answer_probs
    assert not np.array_equal(a, b)
    e1, e2 = IAPOEnv("MATH", split_seed=1), IAPOEnv("MATH", split_seed=2)
    assert e1.train_queries.size == 252 and not np.array_equal(e1.train_queries, e2.train_queries)
    assert np.intersect1d(e1.train_queries, e1.test_queries).size == 0


def test_make_vec_resets_in_the_same_step_and_shares_one_ledger() -> None:
    venv = gym.make_vec("IAPO-SynthBernoulli-v0", num_envs=4, budget=1000)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 2)
    actions = np.array([arm_index(p, 3, 32) for p in range(4)])
    for step in range(1, 4):
        obs, reward, term, trunc, info = venv.step(actions)
        assert term.all() and not trunc.any()
        np.testing.assert_array_equal(info["budget_used"], 4 * 3 * step)  # one ledger: the run's total
    assert np.any(reward != 0)
    assert venv.unwrapped.ledger.spent == 36 and all(e.ledger is venv.unwrapped.ledger for e in venv.unwrapped.envs)


def test_sb3_dummy_vec_env_accepts_the_env() -> None:
    venv = DummyVecEnv([lambda: gym.make("IAPO-SynthCategorical-v0", budget=100)])
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (1, 3)
    obs, reward, done, infos = venv.step(np.array([arm_index(0, 2, 32)]))
    assert done.all() and infos[0]["budget_used"] == 2


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(TypeError, match="render_mode must be a string"):
        IAPOEnv("SynthBernoulli", render_mode=3)
    with pytest.raises(ValueError, match="contexts must be"):
        IAPOEnv("SynthBernoulli", contexts="sometimes")
    with pytest.raises(ValueError, match="budget must be"):
        IAPOEnv("SynthBernoulli", budget=-3)
    with pytest.raises(KeyError, match="unknown task"):
        IAPOEnv("Nope")


def test_step_draws_exactly_what_pull_draws_for_the_same_rng_state() -> None:
    a, b = IAPOEnv("SynthBernoulli", world_seed=2), IAPOEnv("SynthBernoulli", world_seed=2)
    a.reset(seed=9)
    b.reset(seed=9)
    info = a.step(arm_index(3, 17, 32))[4]
    pulls = b.pull(np.array([3]), np.array([17]), width=32)
    assert info["query"] == pulls.query[0]
    np.testing.assert_array_equal(info["outcomes"], pulls.outcome[0])
    assert a.ledger.spent == b.ledger.spent == 17


def test_refused_or_invalid_pulls_spend_nothing_and_leave_the_rng_alone() -> None:
    env = IAPOEnv("SynthCategorical", budget=10)
    env.reset(seed=1)
    state = env.np_random.bit_generator.state
    with pytest.raises(BudgetExceededError):
        env.pull(np.array([0]), np.array([11]))
    with pytest.raises(ValueError, match="prompt indices"):
        env.pull(np.array([env.n_prompts]), np.array([1]))
    with pytest.raises(ValueError, match="N must lie"):
        env.pull(np.array([0]), np.array([0]))
    assert env.ledger.spent == 0 and env.np_random.bit_generator.state == state


def test_reset_options_fix_the_context_and_are_checked() -> None:
    env = IAPOEnv("SynthCategorical")
    obs, info = env.reset(seed=0, options={"context": 26})
    np.testing.assert_array_equal(obs, env.contexts.weights[26].astype(np.float32))
    assert info["context"] == 26
    obs, info = env.reset(options={"weights": [0.3, 0.7, 0.5]})
    np.testing.assert_allclose(obs, [0.3, 0.7, 0.5])
    assert info["context"] == -1
    _, reward, _, _, info = env.step(arm_index(4, 3, 32))
    assert reward == pytest.approx((info["values"][:3] @ [0.3, 0.7]).max() - 0.5 * info["cost"])
    assert info["cost"] == pytest.approx(3 * env.table.cost[4, info["query"]])
    with pytest.raises(ValueError, match="context index in 0..26"):
        env.reset(options={"context": -1})
    with pytest.raises(ValueError, match="3 finite weights"):
        env.reset(options={"weights": [0.5, 0.5]})


def test_slotted_table_and_contexts_survive_copies_and_wrappers() -> None:
    """``table`` and ``contexts`` live in slots (read per run by batch agents): copies and wrappers keep them."""
    import copy

    env = IAPOEnv("SynthBernoulli", world_seed=3)
    assert "table" not in vars(env) and "contexts" not in vars(env)  # in the object, not its dict
    twin = copy.copy(env)
    assert twin.table is env.table and twin.contexts is env.contexts
    twin.reset(seed=1)
    assert twin.pull(np.array([0]), np.array([2])).n.tolist() == [2]
    wrapped = gym.wrappers.TimeLimit(env, max_episode_steps=5)
    assert wrapped.unwrapped.contexts is env.contexts and wrapped.get_wrapper_attr("table") is env.table
    env.contexts = env.contexts  # still assignable
