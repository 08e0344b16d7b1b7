"""psst_model against PSST and Top-K 1/4/8, with the statistics RL reviewers expect: docs/BEYOND.md.

    python scripts/beyond_report.py                               # 4 tasks x 6 budgets x 200 runs (resumable)
    python scripts/beyond_report.py --runs 30 --budgets 1k,20k    # quicker
    python scripts/beyond_report.py --analyse-only                # rebuild the report from OUT/*/results.csv

Fits (through the experiment harness ``iapo_gym.experiments.run_experiment``, as ``train.py``:
run ``seed`` re-splits a real task / draws a synthetic world from the seed, exact test-split ACR
from the oracle; resumable, one results.csv per task under ``--out``) ``psst_model``
(query-controlled pulls), ``psst``, ``topk1``, ``topk4`` and ``topk8``, then writes, per task and budget:

* the mean simple regret (standard error) and its **interquartile mean with a stratified bootstrap
  95 % interval** (:mod:`iapo_gym.experiments.robust_stats`; one stratum per task when aggregated);
* the **probability of improvement** of ``psst_model`` over PSST (``P(regret lower)``, ties one
  half) with its bootstrap interval;
* **paired one-sided Wilcoxon** p-values, **Holm-adjusted** within two families (each family is all
  task x budget cells of one question): F1 "psst_model has lower regret than PSST" and F2 "the best
  of PSST / Top-K 1/4/8 (by mean regret in that cell) has lower regret than psst_model";
* the **train-oracle floor** (the test regret of the arm that is best on the exact train-split Q)
  and the issue's three targets;
* figures: regret against budget, performance profiles (share of runs with regret <= tau) at two
  budgets, and a Pareto view per task (exact quality against expected completions for every arm,
  each agent's deployed arms marked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("IAPO-SynthBernoulli-v0", "IAPO-SynthCategorical-v0", "IAPO-MATH-v0", "IAPO-SmolArith-v0")
NEW = "psst_model"
PAPER = ("psst", "topk1", "topk4", "topk8")
AGENTS = (NEW, *PAPER)
BUDGETS = "1k,2k,5k,10k,20k,50k"
PROFILE_BUDGETS = (5_000, 20_000)
PARETO_BUDGET = 20_000


def task_dir(out: Path, task: str) -> Path:
    return out / task.removeprefix("IAPO-").removesuffix("-v0")


def short(task: str) -> str:
    return task.removeprefix("IAPO-").removesuffix("-v0")


def run_task(
    task: str, out: Path, budgets: str, runs: int, seed: int, progress: bool, analyse_only: bool,
    agents: tuple[str, ...] = AGENTS,
) -> bool:
    """Fit and evaluate ``agents`` (default: every agent) on one task (resumes); False when the task's table is missing."""
    from iapo_gym.experiments import run_experiment

    runner, _ = run_experiment(
        env=task, agents=",".join(agents), budgets=budgets, runs=runs, seed=seed, out=str(task_dir(out, task)),
        reference="psst", skip_missing=True, track=False, plots=False, progress=progress, analyse_only=analyse_only,
        log=print,
    )
    return task not in runner.skipped_envs


# ------------------------------------------------------------------------------------ analysis
def load(out: Path, task: str, seeds: list[int]) -> dict[tuple[str, int], dict[int, float]]:
    """``(agent, budget) -> {seed: regret}`` of one task (only the requested seeds)."""
    from iapo_gym.experiments.results import Results

    path = task_dir(out, task) / "results.csv"
    res = Results.read(path)
    want = set(seeds)
    table: dict[tuple[str, int], dict[int, float]] = {}
    for a, b, s, r, ctx in zip(res.agent, res.budget, res.seed, res.regret, res.contexts, strict=True):
        if int(s) in want and ctx == "finite":
            table.setdefault((str(a), int(b)), {})[int(s)] = float(r)
    return table


def paired(
    cell: dict[tuple[str, int], dict[int, float]], a: str, b: str, budget: int, budget_b: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The regrets of ``a`` at ``budget`` and ``b`` at ``budget_b`` (default: the same) on their common seeds."""
    x, y = cell.get((a, budget), {}), cell.get((b, budget if budget_b is None else budget_b), {})
    seeds = sorted(set(x) & set(y))
    return np.array([x[s] for s in seeds]), np.array([y[s] for s in seeds])


def target_ratios(
    cell: dict[tuple[str, int], dict[int, float]], floor: dict[int, float]
) -> dict[str, tuple[float, float, float]]:
    """The two ratio targets, each with a paired bootstrap 95 % interval (`robust_stats.ratio_of_means_ci`).

    ``"eff"``: mean regret of ``psst_model`` at 5k over PSST's at 50k (the same seeds: each run's
    split / world is the same at both budgets); ``"exc"``: the excess regret above each seed's
    train-oracle floor at 20k, ``psst_model``'s over PSST's.
    """
    from iapo_gym.experiments import robust_stats as rs

    out: dict[str, tuple[float, float, float]] = {}
    x, y = paired(cell, NEW, "psst", 5_000, 50_000)
    if x.size and y.mean() > 0:
        out["eff"] = rs.ratio_of_means_ci(x, y)
    seeds = sorted(set(cell.get((NEW, 20_000), {})) & set(cell.get(("psst", 20_000), {})) & set(floor))
    if seeds:
        f = np.array([floor[s] for s in seeds])
        x = np.array([cell[(NEW, 20_000)][s] for s in seeds]) - f
        y = np.array([cell[("psst", 20_000)][s] for s in seeds]) - f
        if y.mean() > 0:
            out["exc"] = rs.ratio_of_means_ci(x, y)
    return out


def analyse(out: Path, tasks: list[str], seeds: list[int]) -> dict[str, Any]:
    """Every statistic of the report, as plain data."""
    from iapo_gym.experiments import robust_stats as rs
    from iapo_gym.experiments.evaluate import train_oracle_regrets

    data: dict[str, Any] = {"tasks": {}, "F1": [], "F2": []}
    for task in tasks:
        cell = load(out, task, seeds)
        budgets = sorted({b for (_, b) in cell})
        floor = train_oracle_regrets(task, seeds)
        t: dict[str, Any] = {"budgets": budgets, "floor": float(floor.mean()), "cells": {}, "regret": cell}
        t["ratios"] = target_ratios(cell, dict(zip(seeds, floor.tolist(), strict=True)))
        for b in budgets:
            row: dict[str, Any] = {}
            for agent in AGENTS:
                r = np.array(list(cell.get((agent, b), {}).values()))
                if r.size == 0:
                    continue
                point, lo, hi = rs.iqm_ci(-r)  # higher is better inside rliable's convention
                row[agent] = {
                    "n": int(r.size),
                    "mean": float(r.mean()),
                    "se": float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else 0.0,
                    "iqm": -point, "iqm_lo": -hi, "iqm_hi": -lo,
                }
            if NEW in row and "psst" in row:
                x, y = paired(cell, NEW, "psst", b)
                poi = rs.probability_of_improvement(-x, -y)
                p1 = rs.wilcoxon_greater(y, x)  # PSST's regret greater than psst_model's
                row["poi"] = poi
                row["p_vs_psst"] = p1
                data["F1"].append((task, b, p1))
                papers = [a for a in PAPER if a in row]
                best = min(papers, key=lambda a: row[a]["mean"])
                xb, yb = paired(cell, NEW, best, b)
                p2 = rs.wilcoxon_greater(xb, yb)  # psst_model's regret greater than the best paper agent's
                row["best_paper"], row["p_worse_than_best"] = best, p2
                data["F2"].append((task, b, p2))
            t["cells"][b] = row
        data["tasks"][task] = t
    for fam in ("F1", "F2"):
        adj = rs.holm([p for (_, _, p) in data[fam]])
        data[fam + "_holm"] = {(task, b): float(a) for (task, b, _), a in zip(data[fam], adj, strict=True)}
    return data


def fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.4f}"


def fmt_p(p: float) -> str:
    return "nan" if not np.isfinite(p) else ("<1e-10" if p < 1e-10 else f"{p:.2g}")


def ci(t: dict[str, Any], key: str) -> str:
    """``", 95 % CI [lo, hi]"`` of a target ratio, or nothing where it was not computed."""
    r = t.get("ratios", {}).get(key)
    return "" if r is None else f", 95 % CI [{r[1]:.2f}, {r[2]:.2f}]"


def targets(t: dict[str, Any]) -> list[str]:
    """The issue's three targets for one task."""
    c, floor = t["cells"], t["floor"]
    lines = []
    if 5_000 in c and 50_000 in c and NEW in c[5_000] and "psst" in c[50_000]:
        a, p = c[5_000][NEW]["mean"], c[50_000]["psst"]["mean"]
        lines.append(f"* 10x budget efficiency: regret at T = 5,000 {fmt(a)} vs PSST at T = 50,000 {fmt(p)} "
                     f"(ratio {a / p:.2f}{ci(t, 'eff')}): **{'met' if a <= p else 'not met'}**.")
    if 20_000 in c and NEW in c[20_000] and "psst" in c[20_000]:
        a, p = c[20_000][NEW]["mean"], c[20_000]["psst"]["mean"]
        ratio = (a - floor) / (p - floor) if p > floor else float("nan")
        lines.append(f"* Excess regret above the train-oracle floor ({fmt(floor)}) at T = 20,000: {fmt(a - floor)} vs PSST "
                     f"{fmt(p - floor)} (ratio {ratio:.2f}{ci(t, 'exc')}; target <= 0.33): "
                     f"**{'met' if ratio <= 1 / 3 else 'not met'}**.")
    return lines


def summary(data: dict[str, Any]) -> list[str]:
    """One row per task: the issue's three targets and the budgets where psst_model is not better than PSST."""
    lines = [
        "| task | regret at 5k vs PSST at 50k | excess over the floor at 20k, ratio to PSST's | "
        "budgets not better than PSST (F1, Holm) | significantly worse than the best paper agent (F2, Holm) |",
        "|---|---|---|---|---|",
    ]
    for task, t in data["tasks"].items():
        c, floor = t["cells"], t["floor"]
        eff = exc = "-"
        if 5_000 in c and 50_000 in c and NEW in c[5_000] and "psst" in c[50_000]:
            a, p = c[5_000][NEW]["mean"], c[50_000]["psst"]["mean"]
            eff = f"{fmt(a)} vs {fmt(p)} ({a / p:.2f}x{ci(t, 'eff')}): " + ("**met**" if a <= p else "not met")
        if 20_000 in c and NEW in c[20_000] and "psst" in c[20_000]:
            a, p = c[20_000][NEW]["mean"], c[20_000]["psst"]["mean"]
            ratio = (a - floor) / (p - floor) if p > floor else float("nan")
            exc = f"{ratio:.2f}{ci(t, 'exc')}: " + ("**met**" if ratio <= 1 / 3 else "not met")
        f1, f2 = data["F1_holm"], data["F2_holm"]
        worse_psst = [f"{b // 1000}k" for b in t["budgets"] if (task, b) in f1 and f1[(task, b)] >= 0.05]
        worse_best = [f"{b // 1000}k ({c[b]['best_paper']})" for b in t["budgets"]
                      if (task, b) in f2 and f2[(task, b)] < 0.05]
        not_better, worse = ", ".join(worse_psst) or "none", ", ".join(worse_best) or "never"
        lines.append(f"| {short(task)} | {eff} | {exc} | {not_better} | {worse} |")
    return lines


def report(data: dict[str, Any], command: str, figures: dict[str, str]) -> str:
    lines = [
        "# Beyond the paper: `psst_model` against PSST and Top-K, with robust statistics",
        "",
        f"Reproduce with `{command}` (fits are resumable; `--analyse-only` rebuilds this page).",
        "Every number is exact: the test-split ACR of each learnt policy from the oracle; runs are paired",
        "by seed (same split / world for every agent). Simple regret = oracle test ACR - policy test ACR.",
        "",
        "`psst_model` **uses query-controlled pulls** (it names the training query of every pull, like",
        "`psst_paired`); its default configuration was chosen on seeds 1000-1399 and 2000-2999, not on the report's seeds.",
        "",
        "Statistics (`iapo_gym.experiments.robust_stats`, checked against hand computations in",
        "`tests/test_robust_stats.py`): **IQM** = interquartile mean of the runs' regret with a 95 %",
        "percentile-bootstrap interval (2,000 resamples; stratified by task where tasks are pooled);",
        "**P(impr.)** = probability that a `psst_model` run has lower regret than a PSST run (ties 1/2),",
        "with its bootstrap interval; **p** = paired one-sided Wilcoxon signed-rank test. Holm's",
        "correction is applied within two families, each over every (task, budget) cell of this report:",
        "**F1** `psst_model` better than PSST; **F2** the best paper agent of the cell (lowest mean regret among",
        "PSST, Top-K 1/4/8) better than `psst_model` (a small F2 p would mean `psst_model` is significantly worse).",
        "**Train-oracle floor**: the mean test regret of the arm that is best on the exact train-split Q",
        "(no agent learning from the train split can be expected to go below it; docs/PAIRED.md).",
        "**Target ratios** carry a 95 % paired percentile-bootstrap interval over the seeds (each resample",
        "draws the same seeds for both agents; `ratio_of_means_ci`): a target is met by the report's 200 runs",
        "when the ratio is at most its bound, and the interval says how much of a miss or a margin is the runs' noise.",
        "",
    ]
    lines += ["## Summary: the issue's targets", ""] + summary(data) + [""]
    for key in ("regret", "profile"):
        if key in figures:
            lines += [f"![{key}]({figures[key]})", ""]
    for task, t in data["tasks"].items():
        lines += [f"## {task}", "", f"Train-oracle floor: {fmt(t['floor'])}.", ""]
        lines += targets(t)
        lines += ["", "Mean regret (standard error) | IQM [95 % CI]:", ""]
        lines += ["| agent | " + " | ".join(f"T={b:,}" for b in t["budgets"]) + " |",
                  "|---|" + "---|" * len(t["budgets"])]
        for agent in AGENTS:
            cells = []
            for b in t["budgets"]:
                s = t["cells"][b].get(agent)
                cells.append("-" if s is None else (
                    f"{fmt(s['mean'])} ({fmt(s['se'])}) \\| {fmt(s['iqm'])} [{fmt(s['iqm_lo'])}, {fmt(s['iqm_hi'])}]"))
            lines.append(f"| {agent} | " + " | ".join(cells) + " |")
        lines += ["", "`psst_model` against PSST and against the best paper agent of each cell:", "",
                  "| T | ratio to PSST | P(impr.) [95 % CI] | F1 p (Holm) | best paper agent | F2 p (Holm) | verdict |",
                  "|---:|---:|---|---|---|---|---|"]
        for b in t["budgets"]:
            c = t["cells"][b]
            if "poi" not in c:
                continue
            h1 = data["F1_holm"][(task, b)]
            h2 = data["F2_holm"][(task, b)]
            ratio = c[NEW]["mean"] / c["psst"]["mean"] if c["psst"]["mean"] > 0 else float("nan")
            verdict = ("better than PSST" if h1 < 0.05 else "not significantly different from PSST") + (
                f"; significantly worse than {c['best_paper']}" if h2 < 0.05 else "")
            poi = c["poi"]
            lines.append(
                f"| {b:,} | {ratio:.2f} | {poi[0]:.2f} [{poi[1]:.2f}, {poi[2]:.2f}] | {fmt_p(c['p_vs_psst'])} ({fmt_p(h1)}) | "
                f"{c['best_paper']} | {fmt_p(c['p_worse_than_best'])} ({fmt_p(h2)}) | {verdict} |"
            )
        lines.append("")
        if f"pareto_{short(task)}" in figures:
            lines += [f"![Pareto {short(task)}]({figures[f'pareto_{short(task)}']})", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- figures
def plot_regret(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(data["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = data["tasks"][task]
        for agent in AGENTS:
            bs = [b for b in t["budgets"] if agent in t["cells"][b]]
            iq = np.array([t["cells"][b][agent]["iqm"] for b in bs])
            lo = np.array([t["cells"][b][agent]["iqm_lo"] for b in bs])
            hi = np.array([t["cells"][b][agent]["iqm_hi"] for b in bs])
            ax.plot(bs, iq, marker="o", lw=2 if agent == NEW else 1, label=agent)
            ax.fill_between(bs, lo, hi, alpha=0.15)
        ax.axhline(t["floor"], color="k", ls=":", lw=1, label="train-oracle floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(short(task))
        ax.set_xlabel("budget T (completions)")
    axes[0][0].set_ylabel("IQM simple regret (95 % CI)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iapo_gym.experiments import robust_stats as rs

    tasks = list(data["tasks"])
    size = (4.2 * len(tasks), 3.0 * len(PROFILE_BUDGETS))
    fig, axes = plt.subplots(len(PROFILE_BUDGETS), len(tasks), figsize=size, squeeze=False)
    for j, task in enumerate(tasks):
        t = data["tasks"][task]
        for i, b in enumerate(PROFILE_BUDGETS):
            ax = axes[i][j]
            runs = {a: np.array(list(t["regret"].get((a, b), {}).values())) for a in AGENTS}
            runs = {a: r for a, r in runs.items() if r.size}
            if not runs:
                ax.set_visible(False)
                continue
            top = max(float(np.quantile(r, 0.95)) for r in runs.values())
            taus = np.linspace(0.0, max(top, 1e-6), 200)
            for a, r in runs.items():
                ax.plot(taus, rs.performance_profile(r, taus, lower_is_better=True), lw=2 if a == NEW else 1, label=a)
            ax.axvline(t["floor"], color="k", ls=":", lw=1)
            ax.set_title(f"{short(task)}, T = {b:,}", fontsize=9)
            ax.set_xlabel("regret tau")
            ax.set_ylabel("share of runs with regret <= tau")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(task: str, out: Path, seeds: list[int], path: Path) -> None:
    """Pareto view of one task (:func:`iapo_gym.experiments.plots.plot_pareto`) at :data:`PARETO_BUDGET`.

    Every arm's exact quality (cost excluded) against its expected completions ``N``, with the
    deployed arms of psst_model, PSST and Top-K4 marked; a synthetic task draws a world per seed, so
    only run ``seeds[0]``'s world is drawn and marked.
    """
    from iapo_gym.experiments import env_factory
    from iapo_gym.experiments.executors import shares_table
    from iapo_gym.experiments.plots import plot_pareto as pareto
    from iapo_gym.experiments.results import Results

    res = Results.read(task_dir(out, task) / "results.csv")
    table = env_factory(task, 1)(seeds[0]).table
    marked = seeds if shares_table(task) else seeds[:1]
    pareto(res, {task: (table, marked)}, path, PARETO_BUDGET, (NEW, "psst", "topk4"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--budgets", default=BUDGETS)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/beyond")
    ap.add_argument("--doc", default="docs/BEYOND.md")
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--agents", default=",".join(AGENTS),
                    help="fit only these of the report's agents (the others' cells are read from --out as they are)")
    args = ap.parse_args(argv)
    out, figs = Path(args.out), Path(args.figures)
    seeds = list(range(args.seed, args.seed + args.runs))
    from iapo_gym.experiments import ArgumentError
    from iapo_gym.tasks import TASKS as KNOWN
    from iapo_gym.tasks import task_name

    tasks = []
    agents = tuple(a.strip() for a in args.agents.split(",") if a.strip())
    for given in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        try:
            task = KNOWN[task_name(given)].env_id  # a task name (SmolArith) or its env id
        except KeyError:
            ap.error(f"--tasks: unknown task {given!r}; give task names or env ids of: {', '.join(KNOWN)}")
        try:
            found = run_task(task, out, args.budgets, args.runs, args.seed, not args.no_progress, args.analyse_only, agents)
        except ArgumentError as exc:
            ap.error(str(exc))
        if found:
            tasks.append(task)
        else:
            print(f"skipping {task}: its outcome table is not installed")
    data = analyse(out, tasks, seeds)
    figs.mkdir(parents=True, exist_ok=True)
    doc = Path(args.doc)
    rel = lambda p: str(Path("figures") / p.name) if doc.parent.name == "docs" else str(p)  # noqa: E731
    figures: dict[str, str] = {}
    plot_regret(data, figs / "beyond_regret.png")
    figures["regret"] = rel(figs / "beyond_regret.png")
    plot_profiles(data, figs / "beyond_profiles.png")
    figures["profile"] = rel(figs / "beyond_profiles.png")
    for task in tasks:
        p = figs / f"beyond_pareto_{short(task)}.png"
        plot_pareto(task, out, seeds, p)
        figures[f"pareto_{short(task)}"] = rel(p)
    command = "python scripts/beyond_report.py" + ("" if args.runs == 200 else f" --runs {args.runs}") + (
        "" if args.budgets == BUDGETS else f" --budgets {args.budgets}")
    from iapo_gym.experiments.report import hand_written, hand_written_block
    from iapo_gym.experiments.results import atomic_write_text

    text = report(data, command, figures).rstrip("\n") + "\n\n" + "\n".join(hand_written_block(hand_written(doc))) + "\n"
    atomic_write_text(doc, text)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
