"""Task specs, sample query files and the shipped tables, installed as package data of ``iapo_gym``.

The folder lives at the top of the repository (``envs_data/``) and is installed as the package
``iapo_gym.envs_data``; :data:`ROOT` is where its files are, in a checkout or an installed wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The directory of the task folders (``<task>/spec.json``, sample queries, ``<task>/table/``).
ROOT: Path = Path(str(files(__name__)))

__all__ = ["ROOT"]
