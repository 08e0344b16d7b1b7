"""PNG figures of an experiment: ACR against budget, paired regret differences, deployed N against cost.

All read a :class:`~iapo_gym.experiments.results.Results`; the N-vs-cost figure also needs each
task's context weights (``contexts.json`` beside ``results.csv``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iapo_gym.experiments.results import Results  # noqa: E402
from iapo_gym.experiments.stats import mean_ci  # noqa: E402

__all__ = [
    "plot_acr_vs_budget",
    "plot_n_vs_cost",
    "plot_regret_difference",
    "plot_performance_profiles",
    "plot_pareto",
    "save_figure",
    "short_env",
]


def short_env(env: str) -> str:
    """``IAPO-SynthBernoulli-v0`` -> ``SynthBernoulli``."""
    name = env.split(":")[-1]
    if name.startswith("IAPO-"):
        name = name[5:]
    return name.rsplit("-v", 1)[0]


def _grid(n: int, width: float = 4.6, height: float = 3.6) -> tuple[plt.Figure, list]:
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` whole (a temporary file renamed into place) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_acr_vs_budget(results: Results, path: str | Path, agents: Sequence[str] | None = None) -> Path:
    """One panel per task: mean exact test ACR against budget per agent, 95% t-interval bands.

    The dashed black line is the mean oracle ACR (the best achievable); with a single budget it is
    drawn across the panel and each agent is a point with its 95% interval.
    """
    envs = results.unique("env")
    agents = list(agents) if agents is not None else results.unique("agent")
    fig, axes = _grid(len(envs))
    cmap = plt.get_cmap("tab20" if len(agents) > 10 else "tab10")
    for ax, env in zip(axes, envs, strict=False):
        m_env = results.mask(env=env)
        budgets = sorted(set(results.budget[m_env].tolist()))
        for i, agent in enumerate(agents):
            xs, mean, half = [], [], []
            for b in budgets:
                m = m_env & results.mask(agent=agent, budget=b)
                if m.any():
                    mu, h = mean_ci(results.acr[m])
                    xs.append(b)
                    mean.append(mu)
                    half.append(h)
            if not xs:
                continue
            mus, hs = np.array(mean), np.array(half)
            color = cmap(i % cmap.N)
            if len(budgets) == 1:  # one budget: agents side by side with error bars
                x = np.array(xs, dtype=np.float64) * (1 + 0.02 * (i - (len(agents) - 1) / 2))
                ax.errorbar(x, mus, yerr=hs, fmt="o", ms=4, capsize=3, color=color, label=agent)
            else:
                ax.plot(xs, mus, marker="o", ms=3, lw=1.4, color=color, label=agent)
                ax.fill_between(xs, mus - hs, mus + hs, color=color, alpha=0.18, lw=0)
        oracle = [results.oracle_acr[m_env & (results.budget == b)].mean() for b in budgets]
        if len(budgets) == 1:
            ax.axhline(oracle[0], color="k", ls="--", lw=1, label="oracle")
            ax.set_xticks(budgets)
            ax.set_xlim(budgets[0] * 0.85, budgets[0] * 1.15)
        else:
            ax.plot(budgets, oracle, "k--", lw=1, label="oracle")
            ax.set_xscale("log")
        ax.set_title(short_env(env))
        ax.set_xlabel("training budget (completions)")
        ax.set_ylabel("exact test ACR")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("ACR against budget (mean, 95% CI)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_n_vs_cost(
    results: Results,
    path: str | Path,
    cost_weights: Mapping[str, Sequence[float]],
    budget: int | None = None,
    agents: Sequence[str] | None = None,
    binned: bool = False,
) -> Path:
    """One panel per task: deployed N against each context's cost weight, at ``budget`` (default the largest).

    Points are means over seeds (and over the contexts sharing a cost weight); the black dashed line
    is the oracle's N. ``binned`` (continuous contexts: the "contexts" are cost-weight bins) labels
    the x axis with the bins' mean cost weights at two significant digits, rotated, at most eight.
    """
    envs = [e for e in results.unique("env") if e in cost_weights]
    agents = list(agents) if agents is not None else results.unique("agent")
    fig, axes = _grid(max(len(envs), 1))
    cmap = plt.get_cmap("tab20" if len(agents) > 10 else "tab10")
    for ax, env in zip(axes, envs, strict=False):
        m_env = results.mask(env=env)
        b = int(results.budget[m_env].max()) if budget is None else int(budget)
        cw = np.asarray(cost_weights[env], dtype=np.float64)
        levels = np.unique(cw)
        spread = 0.004 * max(float(np.ptp(levels)), 1e-9)  # small horizontal offsets keep agents apart

        def by_level(per_context: np.ndarray, cw: np.ndarray = cw, levels: np.ndarray = levels) -> np.ndarray:
            return np.array([per_context[:, cw == lv].mean() for lv in levels])

        oracle_n = None
        for i, agent in enumerate(agents):
            idx = np.flatnonzero(m_env & results.mask(agent=agent, budget=b))
            if idx.size == 0:
                continue
            n = np.array([results.policy[j]["n_mean"] for j in idx], dtype=np.float64)
            ax.plot(levels + (i - len(agents) / 2) * spread, by_level(n), marker="o", ms=4, lw=1.2,
                    color=cmap(i % cmap.N), label=agent)
            oracle_n = np.array([results.policy[j]["best_n"] for j in idx], dtype=np.float64)
        if oracle_n is not None:
            ax.plot(levels, by_level(oracle_n), "k--", marker="x", lw=1, label="oracle")
        ticks = levels if levels.size <= 8 else levels[:: int(np.ceil(levels.size / 8))]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:.2g}" for t in ticks], rotation=45 if binned or ticks.size > 5 else 0,
                           ha="right" if binned or ticks.size > 5 else "center")
        ax.set_title(f"{short_env(env)} (budget {b})")
        ax.set_xlabel("mean cost weight of the bin" if binned else "cost weight of the context")
        ax.set_ylabel("deployed N")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("chosen N against cost weight (mean over runs)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_regret_difference(
    results: Results, path: str | Path, reference: str, agents: Sequence[str] | None = None
) -> Path:
    """One panel per task: mean paired regret difference ``agent - reference`` against budget.

    Runs are paired by seed (same split / world), so the 95% t-interval of the *difference* is
    much narrower than the per-agent ACR bands of :func:`plot_acr_vs_budget`, which can overlap
    while the paired Wilcoxon test finds a significant difference. Below zero: lower regret than
    the reference. Filled markers: paired two-sided Wilcoxon ``p < 0.05``.
    """
    from iapo_gym.experiments.stats import ALPHA, paired_wilcoxon

    envs = results.unique("env")
    agents = [a for a in (list(agents) if agents is not None else results.unique("agent")) if a != reference]
    fig, axes = _grid(len(envs))
    cmap = plt.get_cmap("tab20" if len(agents) > 10 else "tab10")
    for ax, env in zip(axes, envs, strict=False):
        budgets = sorted(set(results.budget[results.mask(env=env)].tolist()))
        for i, agent in enumerate(agents):
            xs, mean, half, sig = [], [], [], []
            for b in budgets:
                _, a, r = results.paired("regret", env, b, agent, reference)
                if a.size:
                    mu, h = mean_ci(a - r)
                    xs.append(b)
                    mean.append(mu)
                    half.append(h)
                    sig.append(paired_wilcoxon(a, r)[1] < ALPHA)
            if not xs:
                continue
            color = cmap(i % cmap.N)
            x = np.array(xs, dtype=np.float64) * (1 + 0.015 * (i - (len(agents) - 1) / 2))
            ax.errorbar(x, mean, yerr=half, color=color, lw=1.2, capsize=2, marker="none", label=agent,
                        ls="-" if len(xs) > 1 else "none")
            s = np.array(sig)
            ax.scatter(x[s], np.array(mean)[s], color=color, s=22, zorder=3)
            ax.scatter(x[~s], np.array(mean)[~s], facecolor="white", edgecolor=color, s=22, zorder=3)
        ax.axhline(0.0, color="k", lw=1, ls="--")
        if len(budgets) > 1:
            ax.set_xscale("log")
        else:
            ax.set_xticks(budgets)
        ax.set_title(short_env(env))
        ax.set_xlabel("training budget (completions)")
        ax.set_ylabel(f"regret minus {reference}'s (paired)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"paired regret difference vs {reference} (mean, 95% CI; filled: Wilcoxon p < 0.05)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_performance_profiles(
    results: Results, path: str | Path, budgets: Sequence[int] | None = None, agents: Sequence[str] | None = None
) -> Path:
    """Performance profiles of regret (Agarwal et al., 2021): one row per task, one column per budget.

    Each curve is an agent's run-score distribution: the share of runs whose regret is at most
    ``tau``, for every threshold ``tau`` (higher and further left is better). Unlike a mean, it
    shows the spread and the tail of bad runs. ``budgets`` defaults to the smallest, a middle and
    the largest budget of the experiment.
    """
    from iapo_gym.experiments.robust_stats import performance_profile

    envs = results.unique("env")
    agents = list(agents) if agents is not None else results.unique("agent")
    all_budgets = sorted(set(results.budget.tolist()))
    if budgets is None:
        budgets = sorted({all_budgets[0], all_budgets[len(all_budgets) // 2], all_budgets[-1]})
    budgets = [int(b) for b in budgets]
    fig, axes = plt.subplots(len(envs), len(budgets), figsize=(4.0 * len(budgets), 3.0 * len(envs)), squeeze=False)
    cmap = plt.get_cmap("tab20" if len(agents) > 10 else "tab10")
    for row, env in zip(axes, envs, strict=True):
        m_env = results.mask(env=env)
        top = float(np.quantile(results.regret[m_env], 0.98)) if m_env.any() else 1.0
        taus = np.linspace(0.0, max(top, 1e-9), 200)
        for ax, b in zip(row, budgets, strict=True):
            for i, agent in enumerate(agents):
                m = m_env & results.mask(agent=agent, budget=b)
                if m.any():
                    ax.plot(taus, performance_profile(results.regret[m], taus, lower_is_better=True),
                            color=cmap(i % cmap.N), lw=1.1, label=agent)
            ax.set_title(f"{short_env(env)}, T = {b:,}", fontsize=9)
            ax.set_xlabel("regret threshold tau")
            ax.set_ylabel("share of runs with regret <= tau", fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("performance profiles of regret (per run)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pareto(
    results: Results,
    tables: Mapping[str, tuple[object, Sequence[int] | None]],
    path: str | Path,
    budget: int,
    agents: Sequence[str],
) -> Path:
    """Pareto view per task: exact quality against expected completions ``N`` for every arm.

    ``tables`` maps each task to ``(outcome table, seeds)``: the table whose arms are drawn, and the
    runs whose deployments match it (``None``: every run, for a task whose table is the same in every
    run; a synthetic task draws a world per seed, so only that world's run is marked). Quality is the
    exact Q over all queries with the cost term removed, for one context (MV: any; BoN: the one whose
    first weight is nearest 0.5). Grey: one line per prompt; black: the best prompt per N (the
    front); markers: each agent's deployed (prompt, N) at ``budget``, area = share of (run, context)
    deployments.
    """
    from iapo_gym import oracle

    envs = [e for e in results.unique("env") if e in tables]
    fig, axes = _grid(max(len(envs), 1))
    for ax, env in zip(axes, envs, strict=False):
        table, seeds = tables[env]
        w = np.array(table.contexts.weights, dtype=np.float64)  # type: ignore[attr-defined]
        w[:, -1] = 0.0
        c = 0 if table.strategy == "mv" else int(np.argmin(np.abs(w[:, 0] - 0.5)))  # type: ignore[attr-defined]
        quality = oracle.q_values(table, None, weights=w[c : c + 1])[0]  # type: ignore[arg-type]
        n = np.arange(1, quality.shape[1] + 1)
        for p in range(quality.shape[0]):
            ax.plot(n, quality[p], color="0.85", lw=0.6, zorder=1)
        ax.plot(n, quality.max(axis=0), color="k", lw=1.2, label="best prompt per N", zorder=2)
        m_env = results.mask(env=env, budget=int(budget))
        if seeds is not None:
            m_env &= np.isin(results.seed, np.asarray(list(seeds)))
        for i, agent in enumerate(agents):
            idx = np.flatnonzero(m_env & results.mask(agent=agent))
            if idx.size == 0:
                continue
            pairs = np.concatenate(
                [np.c_[np.asarray(results.policy[j]["prompt"]), np.asarray(results.policy[j]["n"])] for j in idx]
            ).astype(np.int64)
            arms, counts = np.unique(pairs, axis=0, return_counts=True)
            ax.scatter(arms[:, 1], quality[arms[:, 0], arms[:, 1] - 1], s=12 + 300 * counts / counts.sum(),
                       alpha=0.5, color=f"C{i}", label=agent, zorder=3 + i)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=float(np.quantile(quality, 0.2)))
        ax.set_xlabel("expected completions per query (N)")
        ax.set_ylabel("exact quality, cost excluded", fontsize=8)
        ax.set_title(f"{short_env(env)}: deployed arms at T = {int(budget):,}", fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("every arm's exact quality against its completions, with the deployed arms marked")
    fig.tight_layout()
    return save_figure(fig, path)
