"""Stable-Baselines3 runs unmodified on IAPO envs: make_vec_env, one run budget, clean stop, logging."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import iapo_gym  # noqa: F401  (registers the ids)
from iapo_gym.arms import arm_index
from iapo_gym.ledger import BudgetLedger
from iapo_gym.sb3 import BudgetCallback

ID = "IAPO-SynthBernoulli-v0"


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in Path(log_dir).rglob("events.out.tfevents.*")]
    assert len(runs) == 1, runs
    acc = EventAccumulator(str(runs[0].parent))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_make_vec_env_with_sb3s_default_render_mode_works() -> None:
    with pytest.warns(UserWarning, match="render_mode='rgb_array' that is not in the possible render_modes"):
        venv = make_vec_env(ID, n_envs=4, seed=0, env_kwargs={"budget": 100})  # SB3 asks for 'rgb_array
    assert isinstance(venv, DummyVecEnv)
    obs = venv.reset()
    assert venv.get_attr("render_mode") == [None] * 4 and venv.env_method("render") == [None] * 4
    assert obs.shape == (4, 2)
    _, _, done, infos = venv.step(np.array([arm_index(p, 2, 32) for p in range(4)]))
    assert done.all() and [i["budget_used"] for i in infos] == [2, 2, 2, 2]  # an int budget: one ledger per sub-env


def test_ppo_learn_a_million_steps_stops_cleanly_at_exactly_the_run_budget(tmp_path) -> None:
    T = 2000
    ledger = BudgetLedger(T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        venv = make_vec_env(ID, n_envs=4, seed=0, env_kwargs={"budget": ledger, "on_exhausted": "truncate"})
    callback = BudgetCallback()
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=2, seed=0, device="cpu",
                tensorboard_log=str(tmp_path))
    model.learn(10**6, callback=callback)  # nothing raised
    assert ledger.spent == T and callback.spent == T and callback.remaining == 0 and callback.shared
    assert 0 < model.num_timesteps < 10**6
    spent = _scalars(tmp_path, "budget/spent")
    remaining = _scalars(tmp_path, "budget/remaining")
    assert spent[0] == (0, 0.0) and spent[-1] == (T, float(T))
    assert all(step == value for step, value in spent)  # the x-axis is completions spent
    assert np.all(np.diff([s for s, _ in spent]) > 0)
    assert remaining[-1] == (T, 0.0) and all(step + value == T for step, value in remaining)


def test_separate_sub_env_budgets_are_named_in_a_warning_and_all_spent() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*render_mode.*")
        venv = make_vec_env(ID, n_envs=3, seed=1, env_kwargs={"budget": 150, "on_exhausted": "truncate"})
    model = A2C("MlpPolicy", venv, n_steps=4, seed=1, device="cpu")
    callback = BudgetCallback()
    with pytest.warns(UserWarning, match="separate budget ledgers"):
        model.learn(10**6, callback=callback)
    assert sum(venv.get_attr("ledger")[i].spent for i in range(3)) == 450 == callback.spent
    assert callback.remaining == 0 and not callback.shared


def test_budget_callback_cap_and_raise_mode_warning() -> None:
    env = gym.make(ID, budget=10_000)
    model = A2C("MlpPolicy", env, n_steps=4, seed=0, device="cpu")
    callback = BudgetCallback(budget=300)
    model.learn(10**6, callback=callback)  # the cap stops learn() before the ledger's 10,000
    assert 300 <= callback.spent < 300 + 32 and env.unwrapped.ledger.spent == callback.spent
    with pytest.raises(ValueError, match="budget must be >= 0"):
        BudgetCallback(budget=-1)
    with pytest.warns(UserWarning, match="on_exhausted='truncate'"):
        A2C("MlpPolicy", gym.make(ID, budget=5000), n_steps=4, device="cpu").learn(8, callback=BudgetCallback())


def test_subprocess_vec_env_refuses_an_in_process_ledger_and_shares_a_process_ledger_exactly() -> None:
    ledger = BudgetLedger(100)
    with pytest.raises(TypeError, match="cannot be sent to another process"):
        make_vec_env(ID, n_envs=2, env_kwargs={"budget": ledger}, vec_env_cls=SubprocVecEnv,
                     vec_env_kwargs={"start_method": "spawn"})
    assert ledger.spent == 0
    T = 300
    shared = BudgetLedger.across_processes(T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        venv = make_vec_env("iapo_gym:" + ID, n_envs=3, seed=0, env_kwargs={"budget": shared, "on_exhausted": "truncate"},
                            vec_env_cls=SubprocVecEnv, vec_env_kwargs={"start_method": "spawn"})
        try:
            callback = BudgetCallback()
            A2C("MlpPolicy", venv, n_steps=4, seed=0, device="cpu").learn(10**6, callback=callback)
            assert shared.spent == T == callback.spent and callback.shared and callback.remaining == 0
            assert [led.spent for led in venv.get_attr("ledger")] == [T] * 3  # one budget seen from 3 processes
        finally:
            venv.close()


def test_zoo_sb3_agent_logs_the_budget_to_tensorboard(tmp_path) -> None:
    from iapo_gym.agents import make_agent

    env = gym.make(ID, budget=400)
    agent = make_agent("ppo")
    agent.log_dir = str(tmp_path)
    policy = agent.fit(env, 300, 0)
    assert policy.budget_used == env.unwrapped.ledger.spent <= 300
    spent = _scalars(tmp_path, "budget/spent")
    assert spent[-1] == (policy.budget_used, float(policy.budget_used))
    assert _scalars(tmp_path, "budget/remaining")[-1] == (policy.budget_used, float(300 - policy.budget_used))


ZOO_HYPERPARAMS = """\
IAPO-SynthBernoulli-v0:
  n_envs: 1
  n_timesteps: !!float 1e6
  policy: 'MlpPolicy'
  n_steps: 64
  batch_size: 64
  n_epochs: 2
  gamma: 0.0
  callback: iapo_gym.sb3.BudgetCallback
"""


def test_rl_zoo_trains_to_the_budget_and_stops(tmp_path, monkeypatch) -> None:
    pytest.importorskip("rl_zoo3")
    import sys

    from rl_zoo3.train import train

    (tmp_path / "iapo.yml").write_text(ZOO_HYPERPARAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "rl_zoo3.train", "--algo", "ppo", "--env", ID, "--gym-packages", "iapo_gym",
        "--env-kwargs", "budget:1500", "on_exhausted:'truncate'", "-conf", "iapo.yml", "-f", "logs",
        "--eval-freq", "-1", "--seed", "0", "--device", "cpu", "--tensorboard-log", "tb", "--verbose", "0",
    ])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*render_mode.*")
        train()
    assert (tmp_path / "logs" / "ppo" / f"{ID}_1" / f"{ID}.zip").is_file()
    assert _scalars(tmp_path / "tb", "budget/spent")[-1] == (1500, 1500.0)
    assert _scalars(tmp_path / "tb", "budget/remaining")[-1] == (1500, 0.0)
