"""The experiment harness and its helpers (``train.py`` and every report script run through it).

The public entry point is :func:`run_experiment` (``iapo_gym.experiments.run_experiment(env=...,
agents=..., budgets=[...], runs=..., out=...)``): one plan, one run loop, exact evaluation, a
resumable ``results.csv``, TensorBoard, Wilcoxon tables, figures and report. ``train.py`` is its
command line. Exported lazily (importing the package stays cheap):

* :func:`run_experiment`, :class:`Args`, :func:`make_args`, :func:`parse_args` (the command line),
  :func:`env_factory` (the env of run ``seed``), :func:`parse_budgets`, :class:`ArgumentError`,
  :class:`Interrupted`

Each helper module has one job:

* :mod:`~iapo_gym.experiments.train`    the harness (plan, run loop, analysis) and train.py's command line
* :mod:`~iapo_gym.experiments.cliargs`  dataclass -> argparse, field docstrings become the help
* :mod:`~iapo_gym.experiments.agentspec` agents by zoo name, entry point or import path; hyper-parameters
* :mod:`~iapo_gym.experiments.progress` the progress line (runs done / total, agent-weighted ETA)
* :mod:`~iapo_gym.experiments.threads`  torch / BLAS thread limits (``--threads``)
* :mod:`~iapo_gym.experiments.evaluate` exact test-split metrics of fitted policies (:func:`iapo_gym.oracle.acr`)
* :mod:`~iapo_gym.experiments.results`  results.csv schema, crash-safe appends, resume
* :mod:`~iapo_gym.experiments.tblog`    TensorBoard scalars, policies and hyper-parameters
* :mod:`~iapo_gym.experiments.stats`    Student-t confidence intervals and paired Wilcoxon tables
* :mod:`~iapo_gym.experiments.robust_stats` IQM, stratified bootstrap, probability of improvement, Holm
* :mod:`~iapo_gym.experiments.plots`    PNG figures (ACR against budget, chosen N against cost)
* :mod:`~iapo_gym.experiments.report`   the paper's claims checked on the numbers, REPRODUCTION.md
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Args",
    "ArgumentError",
    "Interrupted",
    "env_factory",
    "make_args",
    "parse_args",
    "parse_budgets",
    "run_experiment",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from iapo_gym.experiments import train

        return getattr(train, name)
    raise AttributeError(f"module 'iapo_gym.experiments' has no attribute {name!r}")
