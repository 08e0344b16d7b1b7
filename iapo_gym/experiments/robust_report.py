"""The robust-statistics section of an experiment report (the ``rliable`` protocol of Agarwal et al., 2021).

For every (task, budget, agent) against a reference agent (PSST by default):

* the **interquartile mean** of the runs' regret (oracle ACR minus exact test ACR; lower is better)
  with a bootstrap 95 % interval (one task is one stratum, so within a task this is the ordinary
  bootstrap of its runs);
* the **probability of improvement** over the reference, ``P(regret_agent < regret_ref)`` (ties
  count one half), with its bootstrap interval; aggregated over tasks with a stratified bootstrap
  (each task's runs resampled independently, then averaged over tasks);
* the paired two-sided **Wilcoxon** p-value and its **Holm**-adjusted value. The family is one
  task: every (agent, budget) comparison against the reference on that task (``agents x budgets``
  tests), so a verdict controls the family-wise error rate of everything claimed about that task.

All numbers come from :mod:`iapo_gym.experiments.robust_stats` (scipy-based, checked against hand
computations in the test suite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from iapo_gym.experiments import robust_stats as rs
from iapo_gym.experiments.results import Results
from iapo_gym.experiments.stats import ALPHA, format_p, paired_wilcoxon

__all__ = ["RobustRow", "robust_rows", "aggregate_improvement", "robust_markdown"]


@dataclass(frozen=True)
class RobustRow:
    """One agent at one (task, budget): robust aggregates of its regret and its comparison to the reference."""

    env: str
    budget: int
    agent: str
    runs: int
    iqm: float
    iqm_low: float
    iqm_high: float
    poi: float
    poi_low: float
    poi_high: float
    mean_diff: float
    p: float
    p_holm: float

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` than the reference at the Holm-adjusted level, else ``n.s.``.

        The direction is the sign of the mean paired regret difference (the test is paired).
        """
        if not self.p_holm < ALPHA:
            return "n.s."
        return "better" if self.mean_diff < 0 else "worse"


def _paired_regret(res: Results, env: str, budget: int, agent: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    _, a, r = res.paired("regret", env, budget, agent, reference)
    return np.asarray(a, dtype=np.float64), np.asarray(r, dtype=np.float64)


def robust_rows(res: Results, reference: str = "psst", n_resamples: int = rs.N_RESAMPLES) -> list[RobustRow]:
    """Every (task, budget, agent other than the reference) row, Holm-adjusted per task.

    Runs are paired by seed (:meth:`Results.paired`); a budget where an agent has no runs is left out
    of the family.
    """
    rows: list[RobustRow] = []
    for env in res.unique("env"):
        m_env = res.mask(env=env)
        budgets = sorted(set(res.budget[m_env].tolist()))
        agents = [a for a in res.unique("agent") if a != reference and np.any(m_env & res.mask(agent=a))]
        family: list[dict[str, Any]] = []
        for budget in budgets:
            for agent in agents:
                a, r = _paired_regret(res, env, budget, agent, reference)
                if a.size == 0:
                    continue
                point, lo, hi = rs.iqm_ci(a, n_resamples=n_resamples)
                # higher is better for the probability of improvement: compare negated regrets
                poi, plo, phi = rs.probability_of_improvement(-a, -r, n_resamples=n_resamples)
                family.append(dict(env=env, budget=int(budget), agent=agent, runs=int(a.size), iqm=point,
                                   iqm_low=lo, iqm_high=hi, poi=poi, poi_low=plo, poi_high=phi,
                                   mean_diff=float(np.mean(a - r)), p=paired_wilcoxon(a, r)[1]))
        adjusted = rs.holm([f["p"] for f in family])
        rows += [RobustRow(**f, p_holm=float(h)) for f, h in zip(family, adjusted, strict=True)]
    return rows


def aggregate_improvement(
    res: Results, agent: str, budget: int, reference: str = "psst", n_resamples: int = rs.N_RESAMPLES
) -> tuple[float, float, float, int]:
    """``(P, low, high, tasks)``: probability of improvement over the reference averaged over tasks.

    The interval is the stratified bootstrap (each task's runs resampled independently); tasks where
    either agent has no runs at ``budget`` are left out (``tasks`` says how many were used).
    """
    xs, ys = [], []
    for env in res.unique("env"):
        a, r = _paired_regret(res, env, budget, agent, reference)
        if a.size:
            xs.append(-a)
            ys.append(-r)
    if not xs:
        return float("nan"), float("nan"), float("nan"), 0
    p, lo, hi = rs.probability_of_improvement(xs, ys, n_resamples=n_resamples)
    return p, lo, hi, len(xs)


def robust_markdown(
    res: Results,
    rows: Sequence[RobustRow],
    label: Callable[[str], str],
    short_env: Callable[[str], str],
    reference: str = "psst",
    n_resamples: int = rs.N_RESAMPLES,
) -> list[str]:
    """Markdown lines: per task, IQM regret and probability of improvement tables, then the aggregate."""
    lines: list[str] = []
    for env in dict.fromkeys(r.env for r in rows):
        sub = [r for r in rows if r.env == env]
        budgets = sorted({r.budget for r in sub})
        agents = list(dict.fromkeys(r.agent for r in sub))
        cell = {(r.agent, r.budget): r for r in sub}
        m = len(sub)
        lines += [
            f"### {short_env(env)} — IQM regret [95% bootstrap CI]; P(better than {label(reference)}) "
            f"[95% CI]; Holm-adjusted p (family: the {m} comparisons against {label(reference)} on this task)",
            "",
            "| agent | " + " | ".join(f"T={b:,}" for b in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        ref_cells = []
        for b in budgets:
            ref_regret = np.asarray(res.paired("regret", env, b, reference, reference)[1], dtype=np.float64)
            if ref_regret.size:
                point, lo, hi = rs.iqm_ci(ref_regret, n_resamples=n_resamples)
                ref_cells.append(f"{point:.4f} [{lo:.4f}, {hi:.4f}]")
            else:
                ref_cells.append("–")
        lines.append(f"| {label(reference)} (reference) | " + " | ".join(ref_cells) + " |")
        for agent in agents:
            cells = []
            for b in budgets:
                r = cell.get((agent, b))
                if r is None:
                    cells.append("–")
                    continue
                mark = {"better": " ▲", "worse": " ▼"}.get(r.verdict, "")
                cells.append(
                    f"{r.iqm:.4f} [{r.iqm_low:.4f}, {r.iqm_high:.4f}]<br>P {r.poi:.2f} [{r.poi_low:.2f}, "
                    f"{r.poi_high:.2f}]<br>p_Holm {format_p(r.p_holm)}{mark}"
                )
            lines.append(f"| {label(agent)} | " + " | ".join(cells) + " |")
        lines.append("")
    budgets = sorted({r.budget for r in rows})
    agents = list(dict.fromkeys(r.agent for r in rows))
    if len({r.env for r in rows}) > 1:
        lines += [
            f"### All tasks — probability of improvement over {label(reference)} (mean over tasks, "
            "stratified bootstrap 95% CI)",
            "",
            "| agent | " + " | ".join(f"T={b:,}" for b in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        for agent in agents:
            cells = []
            for b in budgets:
                p, lo, hi, k = aggregate_improvement(res, agent, b, reference, n_resamples)
                cells.append("–" if k == 0 else f"{p:.2f} [{lo:.2f}, {hi:.2f}]")
            lines.append(f"| {label(agent)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
