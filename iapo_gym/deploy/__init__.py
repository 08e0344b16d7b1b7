"""Deploy what was learned: saved policies, the IAPO router, and ``iapo-gym serve``.

* :mod:`~iapo_gym.deploy.policy_io`: ``policy.save(path, task=...)`` / :func:`load_policy`, the
  versioned policy document and the task identity a deployment is checked against;
* :mod:`~iapo_gym.deploy.router`: :class:`Router` (``answer(query, context) -> Answer``): pick the
  arm, call the LLM ``N`` times, aggregate by majority voting or best-of-N, count the cost;
* :mod:`~iapo_gym.deploy.server`: the OpenAI-compatible HTTP server (``pip install 'iapo-gym[serve]'``).

Importing this package is cheap; the server's ASGI stack loads only when an app is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FORMAT_VERSION": "policy_io",
    "PolicyFormatError": "policy_io",
    "PolicyMismatchError": "policy_io",
    "TaskIdentity": "policy_io",
    "load_policy": "policy_io",
    "save_policy": "policy_io",
    "Answer": "router",
    "ContextError": "router",
    "Router": "router",
    "create_app": "server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"iapo_gym.deploy.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'iapo_gym.deploy' has no attribute {name!r}")
