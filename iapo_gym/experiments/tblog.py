"""TensorBoard logging of one configuration (task x agent over many seeds), CleanRL style.

One run directory per configuration and invocation, ``{env}__{agent}__{seed}x{runs}__{time}``,
with the training budget as the step axis:

* ``charts/acr``, ``charts/acr_ci95``, ``charts/oracle_acr``, ``charts/regret``,
  ``charts/optimal_frac``, ``charts/budget_used``, ``charts/wall_s``: means over the seeds;
* ``policy/prompt/<ctx>`` (modal prompt over seeds), ``policy/n/<ctx>`` (mean deployed N),
  ``policy/optimal/<ctx>`` (share of runs deploying an optimal arm), ``<ctx>`` = ``c{i}_{name}``;
* ``runs/acr``: histogram of the per-seed ACR;
* ``hyperparameters`` (text table) and the HParams plugin (agent config, final ACR and regret).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.experiments.stats import mean_ci

__all__ = ["run_name", "context_tag", "ConfigLogger"]


def run_name(env: str, agent: str, seeds: Sequence[int], stamp: int | None = None) -> str:
    """CleanRL-style run name ``{env}__{agent}__{first_seed}x{runs}__{time}``."""
    stamp = int(time.time()) if stamp is None else int(stamp)
    first = int(seeds[0]) if len(seeds) else 0
    return f"{env}__{agent}__{first}x{len(seeds)}__{stamp}"


def context_tag(index: int, name: str) -> str:
    """TensorBoard-safe label of context ``index``: ``c{index}_{name}`` with odd characters as ``_``."""
    return f"c{index}_" + re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("_")


def _hparam_value(v: Any) -> int | float | str | bool:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


class ConfigLogger:
    """Writer for one (env, agent) configuration; call :meth:`log_budget` per budget, then :meth:`close`."""

    def __init__(
        self,
        root: str | Path,
        env: str,
        agent: str,
        seeds: Sequence[int],
        context_names: Sequence[str],
        hparams: dict[str, Any],
        stamp: int | None = None,
    ) -> None:
        # tensorboardX writes the same event files as torch.utils.tensorboard without needing torch,
        # so the runner works in the `train` extra alone.
        from tensorboardX import SummaryWriter

        self.name = run_name(env, agent, seeds, stamp)
        self.dir = Path(root) / self.name
        self.writer = SummaryWriter(logdir=str(self.dir))
        self.tags = [context_tag(i, n) for i, n in enumerate(context_names)]
        self.hparams = {k: _hparam_value(v) for k, v in hparams.items()}
        self.last: dict[str, float] = {}
        table = "\n".join(f"|{k}|{v}|" for k, v in self.hparams.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def log_budget(self, budget: int, rows: Sequence[dict[str, Any]]) -> None:
        """Log the runs ``rows`` (results rows of this configuration at ``budget``) at step ``budget``."""
        if not rows:
            return
        w, step = self.writer, int(budget)
        acr = np.array([r["acr"] for r in rows])
        mean, half = mean_ci(acr)
        scalars = {
            "charts/acr": mean,
            "charts/acr_ci95": half,
            "charts/oracle_acr": float(np.mean([r["oracle_acr"] for r in rows])),
            "charts/regret": float(np.mean([r["regret"] for r in rows])),
            "charts/optimal_frac": float(np.mean([r["optimal_frac"] for r in rows])),
            "charts/budget_used": float(np.mean([r["budget_used"] for r in rows])),
            "charts/wall_s": float(np.mean([r["wall_s"] for r in rows])),
        }
        for tag, v in scalars.items():
            w.add_scalar(tag, v, step)
        prompts = np.array([r["policy"]["prompt"] for r in rows])  # (S, C)
        n_mean = np.array([r["policy"]["n_mean"] for r in rows])
        optimal = np.array([r["policy"]["optimal"] for r in rows])
        for c, tag in enumerate(self.tags):
            w.add_scalar(f"policy/prompt/{tag}", float(np.bincount(prompts[:, c]).argmax()), step)
            w.add_scalar(f"policy/n/{tag}", float(n_mean[:, c].mean()), step)
            w.add_scalar(f"policy/optimal/{tag}", float(optimal[:, c].mean()), step)
        if acr.size > 1:
            w.add_histogram("runs/acr", acr, step)
        self.last = {"hparam/acr": scalars["charts/acr"], "hparam/regret": scalars["charts/regret"]}
        w.flush()

    def close(self) -> None:
        """Write the HParams summary (with the largest budget's metrics) and close the writer."""
        if self.last:
            from tensorboardX.summary import hparams as hparams_summary

            exp, ssi, sei = hparams_summary(self.hparams, self.last)
            fw = self.writer._get_file_writer()
            for summary in (exp, ssi, sei):
                fw.add_summary(summary)
            for k, v in self.last.items():
                self.writer.add_scalar(k, v)
        self.writer.close()
