"""Query-controlled PSST vs PSST, Top-K and Uniform: docs/PAIRED.md and docs/figures/paired_*.png.

    python scripts/paired_report.py                          # 3 tasks x 6 budgets x 200 runs (~3 CPU-min)
    python scripts/paired_report.py --tasks IAPO-MATH-v0 --runs 50   # one task, quicker
    python scripts/paired_report.py --analyse-only           # rebuild the report from OUT/*/results.csv

Runs (through the experiment harness ``iapo_gym.experiments.run_experiment``: the same plan,
run loop and exact evaluation as ``train.py``; resumable, one results.csv per task under
``--out``) the agents ``psst_paired``, ``topk_paired`` (both use query-controlled pulls), ``psst``, ``topk4`` and
``uniform`` at budgets 1k..50k with the paper's protocol (run ``seed``: split / world from the
seed, exact test-split ACR from the oracle), then writes:

* per task, mean simple regret (test split, exact) per agent and budget with its Student-t 95 %
  interval (:func:`iapo_gym.experiments.stats.mean_ci`), and the *train-oracle floor*
  (:func:`iapo_gym.experiments.evaluate.train_oracle_regret`): the test regret of the arm that
  is best on the exact train-split Q (the best any agent that learns from the train split can do
  in expectation: the test split's own best arm is partly noise of its 20 % of the queries);
* the paired one-sided Wilcoxon signed-rank test of ``acr(psst_paired) > acr(psst)`` (and of
  ``topk_paired``) per task and budget, over the same seeds
  (:func:`iapo_gym.experiments.robust_stats.wilcoxon_greater`);
* the target check on MATH at T = 20,000 (mean regret at most half of PSST's, p < 0.05).

The MATH table must be installed (``iapo-gym data import ...``; ``IAPO_GYM_DATA``); a task whose
table is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("IAPO-SynthBernoulli-v0", "IAPO-SynthCategorical-v0", "IAPO-MATH-v0")
AGENTS = ("psst_paired", "topk_paired", "psst", "topk4", "uniform")
PAIRED = ("psst_paired", "topk_paired")
BUDGETS = "1k,2k,5k,10k,20k,50k"
TARGET_TASK, TARGET_BUDGET = "IAPO-MATH-v0", 20_000


def task_dir(out: Path, task: str) -> Path:
    from iapo_gym.experiments.plots import short_env

    return out / short_env(task)


def run_task(task: str, out: Path, budgets: str, runs: int, progress: bool) -> bool:
    """Fit and evaluate every agent on one task (resumes); False when the task's table is missing."""
    from iapo_gym.experiments import run_experiment

    runner, _ = run_experiment(
        env=task, agents=",".join(AGENTS), budgets=budgets, runs=runs, out=str(task_dir(out, task)),
        reference="psst", skip_missing=True, track=False, plots=False, progress=progress, log=print,
    )
    return task not in runner.skipped_envs


def load(out: Path, task: str) -> list[dict[str, Any]] | None:
    """The rows of the task's results.csv (read-only), or None when it does not exist."""
    from iapo_gym.experiments.results import ResultsFile

    path = task_dir(out, task) / "results.csv"
    return ResultsFile(path, repair=False).rows if path.exists() else None


def summarise(rows: list[dict[str, Any]], task: str, runs: int) -> dict[str, Any]:
    """Mean regret (Student-t 95 % CI) / ACR per agent and budget over the seeds every agent finished, and the tests."""
    from iapo_gym.experiments.robust_stats import wilcoxon_greater
    from iapo_gym.experiments.stats import mean_ci

    rows = [r for r in rows if r["env"] == task and r["contexts"] == "finite" and int(r["seed"]) < runs]
    by: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["agent"], int(r["budget"])), {})[int(r["seed"])] = r
    budgets = sorted({b for _, b in by})
    agents = [a for a in AGENTS if any((a, b) in by for b in budgets)]
    table: dict[str, Any] = {
        "budgets": budgets,
        "agents": agents,
        "regret": {},
        "ci": {},
        "acr": {},
        "p": {},
        "n": {},
        "seeds": {},
    }
    for b in budgets:
        common = set.intersection(*[set(by.get((a, b), {})) for a in agents]) if agents else set()
        seeds = sorted(common)[:runs]
        table["n"][b] = len(seeds)
        table["seeds"][b] = seeds
        for a in agents:
            reg = np.array([by[(a, b)][s]["regret"] for s in seeds])
            acr = np.array([by[(a, b)][s]["acr"] for s in seeds])
            table["regret"][(a, b)], table["ci"][(a, b)] = mean_ci(reg) if reg.size > 1 else (float("nan"),) * 2
            table["acr"][(a, b)] = acr
        for a in PAIRED:
            if a in agents and "psst" in agents and seeds:
                table["p"][(a, b)] = wilcoxon_greater(table["acr"][(a, b)], table["acr"][("psst", b)])
    return table


def plot(tables: dict[str, dict[str, Any]], floors: dict[str, float], path: Path) -> None:
    import matplotlib.pyplot as plt

    from iapo_gym.experiments.plots import save_figure, short_env

    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.2), squeeze=False)
    for ax, (task, t) in zip(axes[0], tables.items(), strict=True):
        for a in t["agents"]:
            y = np.array([t["regret"][(a, b)] for b in t["budgets"]])
            e = np.array([t["ci"][(a, b)] for b in t["budgets"]])
            style = "-o" if a in PAIRED else "--s"
            ax.errorbar(t["budgets"], y, yerr=e, fmt=style, ms=4, capsize=2, label=a)
        if task in floors:
            ax.axhline(floors[task], color="k", lw=1, ls=":", label="train-oracle floor")
        ax.set_xscale("log")
        ax.set_xlabel("budget T (completions)")
        ax.set_ylabel("mean simple regret (exact, test split; 95 % t CI)")
        ax.set_title(short_env(task))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def report(tables: dict[str, dict[str, Any]], floors: dict[str, float], command: str, figure: str, kept: str = "") -> str:
    """The page; ``kept`` is the hand-written provenance section of the page it replaces."""
    from iapo_gym.experiments.report import hand_written_block

    lines = [
        "# Query-controlled PSST (`psst_paired`, `topk_paired`) vs PSST, Top-K and Uniform",
        "",
        "Reproduce with `python scripts/paired_report.py` (fits and reports; resumable; this file came from",
        f"`{command}`). Every number is exact: the test-split",
        "ACR of each learnt policy from the oracle (no Monte-Carlo noise); runs are paired by seed",
        "(same split / world for every agent). p: paired one-sided Wilcoxon signed-rank test of",
        "`acr(agent) > acr(psst)` over the runs.",
        "",
        "`psst_paired` and `topk_paired` **use query-controlled pulls** (`uses_query_control = True`):",
        "each round pulls every surviving prompt on the same training queries (a seeded walk through",
        "the train split) and ranks arms on per-query (paired) means; see `agents/psst_paired.py`.",
        "",
        "**Train-oracle floor**: the mean test regret of the arm that is best on the *exact* train-split",
        "Q-values. Regret is measured against the best arm of the 20 % test split, which is partly noise",
        "of those queries, so no agent that learns from the train split can be expected to go below it.",
        "",
        "## Provenance and changes since the previous run",
        "",
        *hand_written_block(kept),
        "",
        f"![regret vs budget]({figure})",
        "",
    ]
    for task, t in tables.items():
        floor = floors.get(task, float("nan"))
        n = {b: t["n"][b] for b in t["budgets"]}
        lines += [f"## {task}", "", f"Runs per cell: {sorted(set(n.values()))}; train-oracle floor: {fmt(floor)}.", ""]
        head = "| agent | " + " | ".join(f"T={b:,}" for b in t["budgets"]) + " |"
        lines += ["Mean simple regret +- Student-t 95 % CI half-width:", "", head, "|---|" + "---|" * len(t["budgets"])]
        for a in t["agents"]:
            cells = [f"{fmt(t['regret'][(a, b)])} +- {fmt(t['ci'][(a, b)])}" for b in t["budgets"]]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines += ["", "Ratio to PSST's regret, and p (one-sided, ACR above PSST's):", "", head,
                  "|---|" + "---|" * len(t["budgets"])]
        for a in PAIRED:
            if a not in t["agents"] or "psst" not in t["agents"]:
                continue
            cells = [
                f"{t['regret'][(a, b)] / t['regret'][('psst', b)]:.2f}, p={fmt_p(t['p'].get((a, b)))}"
                if t["regret"][("psst", b)] > 0 else "n/a"
                for b in t["budgets"]
            ]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += target_section(tables, floors)
    return "\n".join(lines) + "\n"


def topk_paired_lower(tables: dict[str, dict[str, Any]]) -> str:
    """Where ``topk_paired``'s mean regret is below ``psst_paired``'s: "MATH (every budget) and ..."."""
    parts = []
    for task, t in tables.items():
        if not {"topk_paired", "psst_paired"} <= set(t["agents"]):
            continue
        lower = [b for b in t["budgets"] if t["regret"][("topk_paired", b)] < t["regret"][("psst_paired", b)]]
        name = task.removeprefix("IAPO-").removesuffix("-v0")
        if len(lower) == len(t["budgets"]):
            parts.append(f"{name} (every budget)")
        elif lower:
            parts.append(f"{name} (T = {', '.join(f'{b:,}' for b in lower)})")
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts) or "no task"


def target_section(tables: dict[str, dict[str, Any]], floors: dict[str, float]) -> list[str]:
    t = tables.get(TARGET_TASK)
    if t is None or TARGET_BUDGET not in t["budgets"]:
        return ["## Target", "", f"{TARGET_TASK} at T = {TARGET_BUDGET:,} was not run.", ""]
    floor = floors.get(TARGET_TASK, float("nan"))
    ps = t["regret"][("psst", TARGET_BUDGET)]
    out = ["## Target: MATH, T = 20,000 (mean regret at most half of PSST's, p < 0.05)", ""]
    for a in PAIRED:
        if a not in t["agents"]:
            continue
        r, p = t["regret"][(a, TARGET_BUDGET)], t["p"].get((a, TARGET_BUDGET), float("nan"))
        met = r <= ps / 2 and p < 0.05
        excess_cut = 1 - (r - floor) / (ps - floor) if ps > floor else float("nan")
        out.append(
            f"- `{a}`: regret {fmt(r)} vs PSST {fmt(ps)} (ratio {r / ps:.2f}; target 0.50), p = {fmt_p(p)}: "
            f"**{'met' if met else 'not met'}**. Above the train-oracle floor ({fmt(floor)}) it removes "
            f"{100 * excess_cut:.0f} % of PSST's excess regret."
        )
    out += [
        "",
        f"Half of PSST's regret is {fmt(ps / 2)}, below the train-oracle floor {fmt(floor)}: even an agent that",
        "knew the exact train-split Q-values of every arm would not reach the target in expectation, because",
        "the regret is measured against the best arm of the test split, whose identity is partly the noise",
        "of its 63 queries (22 of MATH's 25 prompts lie within about 0.05 of the best in ACR). The achievable",
        "improvement is the excess over that floor, reported above.",
        "",
        "Why `psst_paired` gains less than the variance ratio suggests: pairing removes the query noise",
        "of each comparison, but PSST's structure spends every round on the `N_max` arm of every prompt",
        "that survives in any context (on MATH, M = 800 completions per common query at the start), so",
        "at T = 20,000 a round affords only 2 to 4 common queries for the first halvings of 800 arms; the",
        "prompts' per-query differences on so few queries (and their many ties) decide most eliminations.",
        "The gain grows with the budget (MATH T = 50,000: see the ratio table). `topk_paired` first",
        "compares all prompts at N = 1 on ~160 common queries (cheap, and query noise dominates), then",
        "trims the 4 best per context: its mean regret is below `psst_paired`'s on",
        f"{topk_paired_lower(tables)}, but it inherits Top-K's weakness on Synth-Bernoulli (`topk4` is",
        "as bad there; likely the N = 1 screen is a poor proxy for the arms that task's contexts need).",
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="task ids, comma-separated")
    ap.add_argument("--budgets", default=BUDGETS, help="budgets, comma-separated (k = 1000)")
    ap.add_argument("--runs", type=int, default=200, help="runs (seeds 0..runs-1) per configuration")
    ap.add_argument("--out", default=str(REPO / "runs" / "paired"), help="results directory (one sub-directory per task)")
    ap.add_argument("--doc", default=str(REPO / "docs" / "PAIRED.md"), help="markdown report path")
    ap.add_argument("--figure", default=str(REPO / "docs" / "figures" / "paired_regret.png"), help="figure path")
    ap.add_argument("--analyse-only", action="store_true", help="fit nothing; report from OUT/*/results.csv")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    out = Path(a.out)
    tasks = [t for t in a.tasks.split(",") if t]
    present = []
    for task in tasks:
        if a.analyse_only or run_task(task, out, a.budgets, a.runs, not a.no_progress):
            present.append(task)
        else:
            print(f"note: {task} skipped (its outcome table is not installed)")
    tables, floors = {}, {}
    from iapo_gym.experiments.evaluate import train_oracle_regrets

    for task in present:
        res = load(out, task)
        if not res:
            continue
        tables[task] = summarise(res, task, a.runs)
        seeds = sorted({s for b in tables[task]["budgets"] for s in tables[task]["seeds"][b]})
        floors[task] = float(train_oracle_regrets(task, seeds).mean())
    from iapo_gym.experiments.results import atomic_write_text

    doc, fig = Path(a.doc), Path(a.figure)
    plot(tables, floors, fig)
    rel = Path("figures") / fig.name if fig.parent.name == "figures" else fig
    command = " ".join(["python scripts/paired_report.py", *(sys.argv[1:] if argv is None else argv)])
    from iapo_gym.experiments.report import hand_written

    atomic_write_text(doc, report(tables, floors, command.strip(), str(rel), hand_written(doc)))
    print(f"wrote {doc} and {fig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
