"""Confidence intervals and paired two-sided Wilcoxon signed-rank tables.

The paper compares methods at each budget with a paired, two-sided Wilcoxon signed-rank test at
alpha = 0.05; runs are paired by seed (same world / split for every agent).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from iapo_gym.experiments.results import Results

__all__ = ["mean_ci", "paired_wilcoxon", "WilcoxonRow", "wilcoxon_table", "wilcoxon_csv", "wilcoxon_markdown"]

ALPHA = 0.05


def mean_ci(x: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of a Student-t confidence interval of the mean (half-width 0 for n < 2)."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    if a.size < 2:
        return float(a.mean()), 0.0
    sem = a.std(ddof=1) / np.sqrt(a.size)
    return float(a.mean()), float(sps.t.ppf(0.5 + level / 2, a.size - 1) * sem)


def paired_wilcoxon(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """``(statistic, p)`` of ``scipy.stats.wilcoxon(a, b)`` (two-sided, zero_method="wilcox").

    When every paired difference is zero the samples are indistinguishable: ``(0.0, 1.0)``.
    Fewer than one non-zero pair gives ``(nan, nan)``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if np.all(x == y):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties notes from scipy
        res = sps.wilcoxon(x, y, alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class WilcoxonRow:
    """One paired comparison ``agent`` vs ``reference`` at one budget on one task."""

    env: str
    budget: int
    agent: str
    reference: str
    n_pairs: int
    agent_acr: float
    reference_acr: float
    mean_diff: float
    statistic: float
    p_value: float
    verdict: str

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def _verdict(diff: float, p: float, alpha: float) -> str:
    if not np.isfinite(p) or p >= alpha:
        return "n.s."
    return "agent better" if diff > 0 else "reference better"


def compare(results: Results, env: str, budget: int, agent: str, reference: str, alpha: float = ALPHA) -> WilcoxonRow:
    """Paired Wilcoxon test of ``agent``'s ACR against ``reference``'s (paired by seed)."""
    seeds, a, r = results.paired("acr", env, budget, agent, reference)
    stat, p = paired_wilcoxon(a, r)
    diff = float(np.mean(a - r)) if seeds.size else float("nan")
    return WilcoxonRow(
        env=env,
        budget=int(budget),
        agent=agent,
        reference=reference,
        n_pairs=int(seeds.size),
        agent_acr=float(a.mean()) if seeds.size else float("nan"),
        reference_acr=float(r.mean()) if seeds.size else float("nan"),
        mean_diff=diff,
        statistic=stat,
        p_value=p,
        verdict=_verdict(diff, p, alpha),
    )


def wilcoxon_table(results: Results, reference: str = "psst", alpha: float = ALPHA) -> list[WilcoxonRow]:
    """Every agent against ``reference`` at every (env, budget) where both have runs."""
    rows: list[WilcoxonRow] = []
    for env in results.unique("env"):
        m_env = results.mask(env=env)
        agents = [a for a in results.unique("agent") if np.any(m_env & (results.agent == a))]
        if reference not in agents:
            continue
        for budget in sorted(set(results.budget[m_env].tolist())):
            for agent in agents:
                if agent == reference:
                    continue
                row = compare(results, env, budget, agent, reference, alpha)
                if row.n_pairs:
                    rows.append(row)
    return rows


def wilcoxon_csv(rows: Sequence[WilcoxonRow]) -> str:
    """CSV text of a Wilcoxon table."""
    buf = io.StringIO()
    fields = list(WilcoxonRow.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.to_dict().items()})
    return buf.getvalue()


def format_p(p: float) -> str:
    """A p-value for humans (``<1e-10`` below that)."""
    if not np.isfinite(p):
        return "n/a"
    return "<1e-10" if p < 1e-10 else f"{p:.2g}"


def wilcoxon_markdown(rows: Sequence[WilcoxonRow]) -> str:
    """Markdown table of a Wilcoxon table."""
    out = [
        "| task | budget | agent | reference | pairs | agent ACR | ref ACR | mean diff | p | verdict |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.env} | {r.budget} | {r.agent} | {r.reference} | {r.n_pairs} | {r.agent_acr:.4f} | "
            f"{r.reference_acr:.4f} | {r.mean_diff:+.4f} | {format_p(r.p_value)} | {r.verdict} |"
        )
    return "\n".join(out) + "\n"
