"""TensorBoard logging of one configuration (task x agent over many seeds), CleanRL style.

One run directory per configuration, ``{env}__{agent}__{first_seed}x{runs}__{contexts}``, stable
across invocations: a resumed or extended experiment appends to the same run (a new event file in
the same directory, which TensorBoard merges), with the training budget as the step axis:

* ``charts/acr``, ``charts/acr_ci95``, ``charts/oracle_acr``, ``charts/regret``,
  ``charts/optimal_frac``, ``charts/budget_used``, ``charts/wall_s``: means over the seeds;
* ``policy/n/<ctx>`` (mean deployed N), ``policy/optimal/<ctx>`` (share of runs deploying an
  optimal arm), ``<ctx>`` = ``c{i}_{name}``;
* ``policy/prompt/<ctx>``: the deployed prompt is categorical, so it is a *histogram* over the
  runs (one bin per prompt id), not a line; ``policy/choices`` is a text table per budget (each
  context's prompts with their share of runs, mean N, optimal share);
* ``runs/acr``, ``runs/regret``: histograms of the per-seed ACR and simple regret over the runs;
* ``seeds/acr/s{seed}``, ``seeds/regret/s{seed}``: **per-seed scalars** (one line per seed against
  the budget, so an outlier run can be found by its seed and re-run alone: ``--seed S --runs 1``),
  and ``seeds/worst`` (text): the :data:`WORST_SEEDS` runs with the largest regret at each budget,
  with their deployed prompts and N. Per-seed tags stay in TensorBoard (they are not mirrored to
  the trackers: a tracker run with a key per seed is unreadable);
* ``hyperparameters`` (text table) and the HParams plugin (agent config, final ACR and regret).

With ``trackers`` (``train.py --tracker wandb,mlflow``) every scalar above is also sent, same tag and
step, to one wandb / MLflow run per configuration (:mod:`iapo_gym.experiments.tracking`).

Which budgets a run directory already shows is kept in ``logged.json`` beside the event files, so
a configuration whose runs finished before a kill is logged on resume. Points are written in
increasing step order: when a later invocation adds a budget smaller than one already shown, the
run's event files are rewritten from the results (everything in them is derived from
``results.csv``), since TensorBoard would otherwise draw the line back and forth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.experiments.stats import mean_ci
from iapo_gym.experiments.tracking import Mirror

__all__ = ["run_name", "context_tag", "seed_tag", "ConfigLogger", "WORST_SEEDS"]

#: How many of the worst runs (largest regret) ``seeds/worst`` lists at each budget.
WORST_SEEDS = 5


def run_name(env: str, agent: str, seeds: Sequence[int], contexts: str = "finite") -> str:
    """Stable run name ``{env}__{agent}__{first_seed}x{runs}__{contexts}`` (the same on every resume)."""
    first = int(seeds[0]) if len(seeds) else 0
    return f"{env}__{agent}__{first}x{len(seeds)}__{contexts}"


def context_tag(index: int, name: str) -> str:
    """TensorBoard-safe label of context ``index``: ``c{index}_{name}`` with odd characters as ``_``."""
    return f"c{index}_" + re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("_")


def seed_tag(metric: str, seed: int) -> str:
    """Tag of one seed's scalar: ``seeds/{metric}/s{seed}`` (zero-padded to 4 digits, so tags sort by seed)."""
    return f"seeds/{metric}/s{int(seed):04d}"


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
        contexts: str = "finite",
        n_prompts: int | None = None,
        trackers: Sequence[str] = (),
    ) -> None:
        self.name = run_name(env, agent, seeds, contexts)
        self.dir = Path(root) / self.name
        self.tags = [context_tag(i, n) for i, n in enumerate(context_names)]
        self.hparams = {k: _hparam_value(v) for k, v in hparams.items()}
        self.n_prompts = n_prompts
        self.last: dict[str, float] = {}
        self._writer: Any = None
        self._ledger = self.dir / "logged.json"
        self.logged: set[int] = set(json.loads(self._ledger.read_text())) if self._ledger.exists() else set()
        # every scalar below also goes to the optional trackers (wandb / MLflow), same tag and step
        self.mirror = Mirror(trackers, self.dir, self.name, self.hparams)

    @property
    def writer(self) -> Any:
        """The event writer, opened on first use (a resume that logs nothing adds no file)."""
        if self._writer is None:
            # tensorboardX writes the same event files as torch.utils.tensorboard without needing
            # torch, so the runner works in the `train` extra alone.
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(self.dir))
            table = "\n".join(f"|{k}|{v}|" for k, v in self.hparams.items())
            self._writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        return self._writer

    def log_budgets(self, complete: dict[int, Sequence[dict[str, Any]]]) -> list[int]:
        """Log every budget of ``complete`` (budget -> all its rows) not shown yet; returns those written.

        A budget smaller than one already shown makes every larger one be written again after it
        (larger budgets already shown make the run be rewritten in step order).
        """
        new = sorted(b for b in complete if int(b) not in self.logged)
        if not new:
            return []
        if self.logged and new[0] < max(self.logged):  # out of step order: rewrite the run in order
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
            self.logged = set()
            self.last = {}
            new = sorted(complete)
        for b in new:
            self.log_budget(b, complete[b])
        return new

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
        mirrored = dict(scalars)
        prompts = np.array([r["policy"]["prompt"] for r in rows], dtype=np.int64)  # (S, C)
        n_mean = np.array([r["policy"]["n_mean"] for r in rows])
        optimal = np.array([r["policy"]["optimal"] for r in rows])
        n_prompts = int(self.n_prompts or prompts.max() + 1)
        edges = np.arange(n_prompts + 1, dtype=np.float64) - 0.5  # one bin per prompt id
        lines = ["| context | deployed prompts (share of runs) | mean N | optimal share |", "|---|---|---:|---:|"]
        for c, tag in enumerate(self.tags):
            w.add_histogram(f"policy/prompt/{tag}", prompts[:, c].astype(np.float64), step, bins=edges)
            mirrored[f"policy/n/{tag}"] = float(n_mean[:, c].mean())
            mirrored[f"policy/optimal/{tag}"] = float(optimal[:, c].mean())
            w.add_scalar(f"policy/n/{tag}", mirrored[f"policy/n/{tag}"], step)
            w.add_scalar(f"policy/optimal/{tag}", mirrored[f"policy/optimal/{tag}"], step)
            counts = np.bincount(prompts[:, c], minlength=n_prompts)
            order = np.argsort(-counts, kind="stable")[: int((counts > 0).sum())]
            shares = ", ".join(f"{p} ({counts[p] / len(rows):.0%})" for p in order)
            lines.append(f"| {tag} | {shares} | {n_mean[:, c].mean():.2f} | {optimal[:, c].mean():.2f} |")
        w.add_text("policy/choices", "\n".join(lines), step)
        regret = np.array([r["regret"] for r in rows])
        if acr.size > 1:
            w.add_histogram("runs/acr", acr, step)
            w.add_histogram("runs/regret", regret, step)
        seeds = np.array([int(r["seed"]) for r in rows], dtype=np.int64)
        for s_, a_, g_ in zip(seeds.tolist(), acr.tolist(), regret.tolist(), strict=True):
            w.add_scalar(seed_tag("acr", s_), a_, step)
            w.add_scalar(seed_tag("regret", s_), g_, step)
        worst = np.lexsort((seeds, -regret))[:WORST_SEEDS]  # largest regret first, ties by seed
        table = ["| seed | regret | ACR | deployed prompt per context | N per context |", "|---:|---:|---:|---|---|"]
        for i in worst:
            pol = rows[i]["policy"]
            table.append(f"| {seeds[i]} | {regret[i]:.4f} | {acr[i]:.4f} | {list(pol['prompt'])} | {list(pol.get('n', []))} |")
        w.add_text("seeds/worst", "\n".join(table), step)
        if not self.last or step >= self.last["step"]:
            self.last = {"step": step, "hparam/acr": scalars["charts/acr"], "hparam/regret": scalars["charts/regret"]}
        w.flush()
        self.mirror.log(mirrored, step)
        self.logged.add(step)
        self._ledger.write_text(json.dumps(sorted(self.logged)))

    def close(self) -> None:
        """Write the HParams summary (with the largest budget's metrics) and close the writer and trackers."""
        if self._writer is None:
            self.mirror.close()
            return
        if self.last:
            from tensorboardX.summary import hparams as hparams_summary

            metrics = {k: v for k, v in self.last.items() if k != "step"}
            exp, ssi, sei = hparams_summary(self.hparams, metrics)
            fw = self.writer._get_file_writer()
            for summary in (exp, ssi, sei):
                fw.add_summary(summary)
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, int(self.last["step"]))
            self.mirror.log(metrics, int(self.last["step"]))
        self.writer.close()
        self.mirror.close()
