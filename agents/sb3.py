"""Stable-Baselines3 adapter: train PPO, A2C, DQN (or MaskablePPO) on the IAPO env under a completion budget.

The IAPO env is a contextual bandit in Gymnasium form (one step = one episode: observe the context
weights, choose a flat arm, receive the utility), so any SB3 algorithm can learn on it. The
adapter makes the training respect the same budget of completions as every other agent:

* **Ledger-aware wrapper** (:class:`BudgetWrapper`): each step of arm ``(p, N)`` costs ``N``
  completions. When fewer than ``N`` completions remain, the action is clipped to ``(p, remaining)``
  (the largest affordable ``N`` of the same prompt), so a step never exceeds the budget and the
  last completions are not wasted. The env's own ledger is charged by the env itself.
* **Stop callback** (:class:`iapo_gym.sb3.BudgetCallback`): training stops as soon as the budget
  is spent (``learn`` gets ``total_timesteps = T``, an upper bound since every step costs at least
  one completion). With ``log_dir`` set (``train.py --track`` sets it), the algorithm logs to
  TensorBoard and the callback adds ``budget/spent`` and ``budget/remaining`` with completions
  spent as the x-axis.
* **Deployment policy** = the trained policy's deterministic action for each context of the task's
  finite set (:class:`iapo_gym.agents.base.TablePolicy`; other weight vectors use the nearest context).

Defaults are sized for budgets of a few thousand completions, i.e. a few hundred steps: short
rollouts (PPO ``n_steps=64``, A2C ``n_steps=8``), DQN learning from step 50 with exploration decaying
over the first half of the *expected* number of steps (``2T / (N_max + 1)``, the mean cost of a
uniformly random arm). Pass ``algo_kwargs`` to override anything.

``MaskablePPO`` (sb3-contrib) reads the env's affordable-arm mask through ``action_masks()``.
Runs are seeded (``seed`` goes to the algorithm and to ``env.reset``); PyTorch runs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np

from iapo_gym._checks import finite_weights
from iapo_gym.agents.base import Agent, Policy, TablePolicy
from iapo_gym.contexts import ContextSet
from iapo_gym.runs import RunBatch, _unwrap

ALGORITHMS = ("ppo", "a2c", "dqn", "maskable_ppo")


class BudgetWrapper(gym.Wrapper):
    """Clips each action to what the remaining completion budget affords; tracks the spend.

    Args:
        env: an IAPO env (its unwrapped env has ``n_max`` and ``ledger``).
        budget: completions this training may spend.
    """

    def __init__(self, env: gym.Env, budget: int) -> None:
        super().__init__(env)
        base: Any = env.unwrapped  # an IAPOEnv (n_max, ledger)
        self.n_max = int(base.n_max)
        self.budget = int(budget)
        self._start = int(base.ledger.spent)
        self.clipped = 0

    def start(self, seed: int) -> None:
        """Begin a training run: seeded reset (IAPOEnv clears its ledger), then fix the budget."""
        self.env.reset(seed=int(seed))
        base: Any = self.env.unwrapped
        self._start = int(base.ledger.spent)
        self.budget = int(min(self.budget, RunBatch._ledger_room(base)))

    @property
    def spent(self) -> int:
        """Completions spent through this wrapper."""
        base: Any = self.env.unwrapped
        return int(base.ledger.spent) - self._start

    @property
    def remaining(self) -> int:
        """Completions left for training."""
        return self.budget - self.spent

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Pull ``action``'s arm, with ``N`` clipped to the completions left in the budget."""
        prompt, n = divmod(int(action), self.n_max)
        n += 1
        left = self.remaining
        if left < 1:
            raise RuntimeError("the training budget is spent; the stop callback should have ended learn()")
        if n > left:
            n = left
            self.clipped += 1
        return self.env.step(prompt * self.n_max + n - 1)

    def action_masks(self) -> np.ndarray:
        """Affordable arms (for MaskablePPO): ``N <= remaining``."""
        space = self.env.action_space
        assert isinstance(space, gym.spaces.Discrete), "IAPO envs have a Discrete action space"
        n_arms = int(space.n)
        return (np.arange(n_arms) % self.n_max + 1) <= max(self.remaining, 1)


def _defaults(algo: str, budget: int, n_max: int) -> dict[str, Any]:
    expected_steps = max(1, int(2 * budget / (n_max + 1)))
    if algo in ("ppo", "maskable_ppo"):
        return dict(n_steps=64, batch_size=64, n_epochs=10, learning_rate=3e-3, gamma=0.0, ent_coef=0.01)
    if algo == "a2c":
        return dict(n_steps=8, learning_rate=3e-3, gamma=0.0, ent_coef=0.01)
    if algo == "dqn":
        return dict(
            learning_rate=1e-3, buffer_size=max(1000, expected_steps), learning_starts=50, batch_size=32,
            train_freq=1, gradient_steps=1, target_update_interval=50, gamma=0.0,
            exploration_fraction=min(1.0, 0.5 * expected_steps / max(budget, 1)),
            exploration_final_eps=0.05,
        )
    raise ValueError(f"unknown algorithm {algo!r}; choose one of {ALGORITHMS}")


def _algorithm_class(algo: str) -> Any:
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "a2c":
        from stable_baselines3 import A2C

        return A2C
    if algo == "dqn":
        from stable_baselines3 import DQN

        return DQN
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    raise ValueError(f"unknown algorithm {algo!r}; choose one of {ALGORITHMS}")


@dataclass(eq=False)
class ModelPolicy(Policy):
    """Deploys a trained SB3 model's deterministic action for any context (continuous contexts)."""

    model: Any
    algo: str
    n_arms: int
    n_max: int
    budget_used: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def act(self, weights: Any) -> np.ndarray:
        """The model's deterministic arm per context row of ``weights``."""
        obs = finite_weights(weights, int(self.model.observation_space.shape[0]) - 1).astype(np.float32)
        if self.algo == "maskable_ppo":
            arms, _ = self.model.predict(obs, deterministic=True, action_masks=np.ones((obs.shape[0], self.n_arms), bool))
        else:
            arms, _ = self.model.predict(obs, deterministic=True)
        return np.asarray(arms, dtype=np.int64).reshape(-1)


@dataclass
class SB3Agent(Agent):
    """Trains a Stable-Baselines3 algorithm on the env within the completion budget.

    Args:
        algo: ``"ppo"``, ``"a2c"``, ``"dqn"`` or ``"maskable_ppo"``.
        algo_kwargs: overrides of the algorithm's constructor arguments (see ``_defaults``).
        policy: SB3 policy name (``"MlpPolicy"``).
        log_dir: TensorBoard directory of the algorithm's training logs (None: no logging).
    """

    algo: str = "ppo"
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    policy: str = "MlpPolicy"
    log_dir: str | None = None
    name: ClassVar[str] = "sb3"

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {ALGORITHMS}")

    def fit(self, env: Any, budget: int, seed: int) -> Policy:
        """Train the SB3 model on ``env`` until ``budget`` completions are spent."""
        base = _unwrap(env)
        wrapper = BudgetWrapper(base, budget)
        wrapper.start(seed)
        if wrapper.budget < 1:
            arms = np.zeros(len(base.contexts), dtype=np.int64)
            return TablePolicy(base.contexts, arms, int(base.n_max), 0, {"algo": self.algo, "steps": 0})
        kwargs = {**_defaults(self.algo, wrapper.budget, wrapper.n_max), **self.algo_kwargs}
        cls = _algorithm_class(self.algo)
        from iapo_gym.sb3 import BudgetCallback

        model = cls(self.policy, wrapper, seed=int(seed), device="cpu", verbose=0, tensorboard_log=self.log_dir, **kwargs)
        model.learn(
            total_timesteps=wrapper.budget,
            callback=BudgetCallback(budget=wrapper.budget),
            tb_log_name=f"{base.task}__{self.algo}__seed{int(seed)}__T{wrapper.budget}",
        )
        obs = base.contexts.weights.astype(np.float32)
        if self.algo == "maskable_ppo":
            masks = np.ones((obs.shape[0], int(base.n_prompts) * int(base.n_max)), dtype=bool)
            arms, _ = model.predict(obs, deterministic=True, action_masks=masks)
        else:
            arms, _ = model.predict(obs, deterministic=True)
        info = {"algo": self.algo, "steps": int(model.num_timesteps), "clipped_actions": wrapper.clipped}
        if not isinstance(getattr(base, "context_source", base.contexts), ContextSet):
            # continuous contexts: deploy the trained network's deterministic action for ANY context
            return ModelPolicy(model, self.algo, int(base.n_prompts) * int(base.n_max), int(base.n_max),
                               budget_used=wrapper.spent, info=info)
        return TablePolicy(base.contexts, np.asarray(arms, dtype=np.int64).reshape(-1), int(base.n_max),
                           budget_used=wrapper.spent, info=info)
