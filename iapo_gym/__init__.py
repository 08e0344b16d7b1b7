"""iapo-gym: inference-aware prompt optimisation (IAPO) as Gymnasium contextual bandits.

``import iapo_gym`` registers one env id per task (``IAPO-<task>-v0``, see
:data:`iapo_gym.tasks.TASKS`); ``gym.make("iapo_gym:IAPO-MATH-v0")`` imports and registers in one go.
"""

from __future__ import annotations

from iapo_gym.arms import Arm, arm_from_index, arm_index
from iapo_gym.contexts import ContextSet
from iapo_gym.env import IAPOEnv
from iapo_gym.ledger import BudgetExceededError, BudgetLedger, ProcessBudgetLedger
from iapo_gym.sampling import Pulls, sample_pulls
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tasks import TASKS, TaskInfo, load_task_table, register_env_id, register_task

__version__ = "0.2.0"


def register_envs() -> None:
    """Register ``IAPO-<name>-v0`` for every task in :data:`TASKS` (idempotent)."""
    for info in TASKS.values():
        register_env_id(info)


register_envs()



def __getattr__(name: str) -> object:
    # load_policy imports the zoo's policy classes: loaded on first use, not at import time
    if name == "load_policy":
        from iapo_gym.deploy.policy_io import load_policy

        return load_policy
    raise AttributeError(f"module 'iapo_gym' has no attribute {name!r}")


__all__ = [
    "Arm",
    "BudgetExceededError",
    "BudgetLedger",
    "ContextSet",
    "IAPOEnv",
    "OutcomeTable",
    "ProcessBudgetLedger",
    "Pulls",
    "TASKS",
    "TaskInfo",
    "arm_from_index",
    "arm_index",
    "load_policy",
    "load_task_table",
    "register_envs",
    "register_env_id",
    "register_task",
    "sample_pulls",
]
