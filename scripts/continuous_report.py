"""Continuous-context benchmark: neural agent vs discretised PSST vs PPO -> docs/CONTINUOUS.md.

Run from the repository root::

    .venv/bin/python scripts/continuous_report.py            # 100 runs x budgets 5k/10k/20k/50k

For every task (Synth-Categorical, plus every BoN task whose table is present in the data
directory) and every budget, each run ``s`` builds ``IAPOEnv(task, split_seed=s, world_seed=s,
contexts="continuous")``, fits the agents under the same budget, and scores the deployed policy
EXACTLY on the held-out evaluation sample of 2,000 contexts
(:meth:`iapo_gym.continuous.ContinuousContexts.evaluation_sample`) over the run's test queries
(:class:`iapo_gym.continuous.ContinuousEvaluator`). It writes ``docs/CONTINUOUS.md`` (ACR table with
95% confidence intervals, paired two-sided Wilcoxon signed-rank tests, timings),
``docs/figures/continuous_<task>.png`` (ACR and regret curves with 95% bands) and
``docs/figures/continuous_results.csv`` (one row per task, agent, budget and run).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iapo_gym.agents import make_agent  # noqa: E402
from iapo_gym.agents.base import TablePolicy  # noqa: E402
from iapo_gym.agents.psst_grid import PSSTGrid  # noqa: E402
from iapo_gym.continuous import ContinuousEvaluator, distribution_of, exact_q_values  # noqa: E402
from iapo_gym.env import IAPOEnv  # noqa: E402
from iapo_gym.experiments.evaluate import query_subtable  # noqa: E402
from iapo_gym.tasks import TASKS  # noqa: E402

AGENT_LABELS = {"neural": "neural", "psst_grid": "PSST (grid)", "ppo": "PPO", "grid_oracle": "grid oracle"}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def present_tasks(requested: list[str] | None) -> list[str]:
    """Synth-Categorical plus every BoN task whose table loads (or the ``requested`` ones)."""
    if requested:
        return requested
    out = ["SynthCategorical"]
    for name, info in TASKS.items():
        if info.strategy != "bon" or name in out:
            continue
        try:
            IAPOEnv(name, split_seed=0, contexts="continuous")
        except Exception as err:  # a missing table: skip with a note
            print(f"[skip] {name}: {type(err).__name__}: {str(err).splitlines()[0]}", file=sys.stderr)
            continue
        out.append(name)
    return out


def ci95(x: np.ndarray) -> float:
    """Half-width of the normal 95% confidence interval of the mean."""
    return float(1.96 * x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value (1.0 when all pairs tie)."""
    from scipy.stats import wilcoxon

    if np.allclose(a, b, rtol=0, atol=1e-12):
        return 1.0
    return float(wilcoxon(a, b, alternative="two-sided").pvalue)


def run_task(task: str, args: argparse.Namespace, rows: list[dict[str, Any]], notes: dict[str, Any]) -> None:
    seeds = list(range(args.seed, args.seed + args.runs))

    def make(seed: int) -> IAPOEnv:
        return IAPOEnv(task, split_seed=seed, world_seed=seed, contexts="continuous")

    first = make(seeds[0])
    dist = distribution_of(first)
    eval_w = dist.evaluation_sample(args.eval_size)
    t0 = time.perf_counter()
    # one evaluator per run, built on its test queries only (query_subtable): the run's env, world and
    # oracle cache are freed at once, only Q (contexts x arms) is kept
    evaluators = {}
    grid_oracle = {}  # seed -> the exact best arm of each grid point on the run's test queries
    grid = PSSTGrid().grid_contexts(first)
    for s in seeds:
        env = make(s)
        sub = query_subtable(env.table, env.test_queries)
        evaluators[s] = ContinuousEvaluator(sub, None, eval_w)
        if "grid_oracle" in args.agents:
            q = exact_q_values(sub, grid.weights, None)
            grid_oracle[s] = TablePolicy(grid, q.reshape(q.shape[0], -1).argmax(axis=1), int(env.n_max))
        del env, sub
    envs = [first]
    fit_seconds = dict(notes.get(task, {}).get("fit_seconds", {}))
    notes[task] = {
        "q_seconds_per_run": (time.perf_counter() - t0) / len(seeds),
        "distribution": dist.to_json(),
        "n_test_queries": int(envs[0].test_queries.size),
        "shape": (envs[0].n_prompts, envs[0].n_max),
        "fit_seconds": fit_seconds,
    }
    for name in args.agents:  # agent-major: the slow PPO comes last, and every finished configuration is saved
        for budget in args.budgets:
            n_runs = args.ppo_runs if name == "ppo" else args.runs
            if n_runs <= 0:
                continue
            have = {r["seed"] for r in rows if (r["task"], r["agent"], r["budget"]) == (task, name, budget)}
            if set(seeds[:n_runs]) <= have:  # --resume: this configuration is already in the CSV
                continue
            rows[:] = [r for r in rows if (r["task"], r["agent"], r["budget"]) != (task, name, budget)]
            if name == "grid_oracle":  # budget-free reference: the same policy at every budget
                for s in seeds[:n_runs]:
                    m = evaluators[s].evaluate(grid_oracle[s])
                    rows.append({"task": task, "agent": name, "budget": budget, "seed": s, "acr": m["acr"],
                                 "oracle_acr": m["oracle_acr"], "regret": m["regret"], "spent": 0})
                save_raw(rows, notes, args)
                continue
            kwargs: dict[str, Any] = dict(args.neural_kwargs) if name == "neural" else {}
            if name == "neural" and args.tensorboard:
                kwargs["log_dir"] = str(Path(args.tensorboard) / f"{task}_{budget}")
            agent = make_agent(name, **kwargs)
            t0 = time.perf_counter()
            policies = agent.fit_many(make, budget, seeds[:n_runs])
            dt = time.perf_counter() - t0
            notes[task]["fit_seconds"][f"{name} T={budget:,}"] = dt
            for s, pol in zip(seeds[:n_runs], policies, strict=True):
                m = evaluators[s].evaluate(pol)
                rows.append({"task": task, "agent": name, "budget": budget, "seed": s,
                             "acr": m["acr"], "oracle_acr": m["oracle_acr"], "regret": m["regret"],
                             "spent": int(pol.budget_used)})
            acr = np.array([r["acr"] for r in rows if (r["task"], r["agent"], r["budget"]) == (task, name, budget)])
            print(f"{task} {name:10s} T={budget:6d} runs={n_runs:3d} acr={acr.mean():.4f} ({dt:.1f}s)", flush=True)
            save_raw(rows, notes, args)  # after every configuration: an interrupted run keeps what it fitted


def raw_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(per-run CSV, notes JSON)`` beside the figures."""
    return Path(args.figures) / "continuous_results.csv", Path(args.figures) / "continuous_notes.json"


def save_raw(rows: list[dict[str, Any]], notes: dict[str, Any], args: argparse.Namespace) -> None:
    """Write the per-run rows and the timing notes (atomic)."""
    csv_path, notes_path = raw_paths(args)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(csv_path, buf.getvalue().encode())
    atomic_write(notes_path, json.dumps(notes, indent=1).encode())


def load_raw(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and notes written by an earlier run (for ``--analyse-only``)."""
    csv_path, notes_path = raw_paths(args)
    with open(csv_path, newline="") as fh:
        rows: list[dict[str, Any]] = []
        for r in csv.DictReader(fh):
            rows.append({"task": r["task"], "agent": r["agent"], "budget": int(r["budget"]), "seed": int(r["seed"]),
                         "acr": float(r["acr"]), "oracle_acr": float(r["oracle_acr"]), "regret": float(r["regret"]),
                         "spent": int(r["spent"])})
    return rows, json.loads(notes_path.read_text())


def summarise(rows: list[dict[str, Any]], task: str, agents: list[str], budgets: list[int]):
    table: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for name in agents:
        for b in budgets:
            sel = sorted((r for r in rows if (r["task"], r["agent"], r["budget"]) == (task, name, b)), key=lambda r: r["seed"])
            if sel:
                table[(name, b)] = {k: np.array([r[k] for r in sel]) for k in ("seed", "acr", "regret", "oracle_acr")}
    return table


def paired(table: dict, a: str, b: str, budget: int) -> tuple[float, float, int, float, float] | None:
    """(p, mean difference, pairs, win rate of a, 95% CI half-width of the difference) over the seeds both ran."""
    if (a, budget) not in table or (b, budget) not in table:
        return None
    ta, tb = table[(a, budget)], table[(b, budget)]
    common = np.intersect1d(ta["seed"], tb["seed"])
    if common.size < 2:
        return None
    xa = ta["acr"][np.isin(ta["seed"], common)]
    xb = tb["acr"][np.isin(tb["seed"], common)]
    return wilcoxon_p(xa, xb), float((xa - xb).mean()), int(common.size), float((xa > xb).mean()), ci95(xa - xb)


def plot(task: str, table: dict, agents: list[str], budgets: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in agents:
        bs = [b for b in budgets if (name, b) in table]
        if not bs:
            continue
        for ax, key in zip(axes, ("acr", "regret"), strict=True):
            mean = np.array([table[(name, b)][key].mean() for b in bs])
            half = np.array([ci95(table[(name, b)][key]) for b in bs])
            n = table[(name, bs[0])][key].size
            style = dict(ls="--", marker=None) if name == "grid_oracle" else dict(marker="o")
            ax.plot(bs, mean, label=f"{AGENT_LABELS.get(name, name)} ({n} runs)", **style)
            ax.fill_between(bs, mean - half, mean + half, alpha=0.2)
    first = next(iter(table.values()))
    axes[0].axhline(first["oracle_acr"].mean(), color="k", ls="--", lw=0.8, label="oracle (mean)")
    for ax, title in zip(axes, ("exact ACR (2,000 held-out contexts)", "regret vs per-context oracle"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b / 1000:g}k" if b >= 1000 else str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget T (completions)")
        ax.set_title(f"{task}: {title}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


#: What was tried before the final run (kept with the script so the page states it).
DEVELOPMENT_NOTES = """### How the neural agent was chosen (no tuning on the evaluation seeds)

The neural agent runs with the defaults of `NeuralAgent` (32 bank directions x 4 cost draws = 128
elimination contexts, 32 hidden units, halving ranked by the network). Before the final run, one check
on 30 *other* seeds (1000-1029, budgets 20k and 50k, Synth-Categorical, not the evaluation seeds 0-99)
compared it with PSST (grid): +0.0100 ACR at 20k (paired Wilcoxon p = 0.001, neural better in 83% of
runs) and +0.0061 at 50k (p = 3e-6, 90%). Since it already won, nothing else was tuned; the only
change to the agent in this work is TensorBoard logging of the final exploration state."""


def verdict(rows: list[dict[str, Any]], tasks: list[str], args: argparse.Namespace) -> list[str]:
    """The headline: does neural beat PSST (grid) with p < 0.05 at every budget >= 20k?"""
    out = ["## Verdict: neural vs PSST (grid) at budgets >= 20k", ""]
    for task in tasks:
        table = summarise(rows, task, args.agents, args.budgets)
        for b in [b for b in args.budgets if b >= 20_000]:
            res = paired(table, "neural", "psst_grid", b)
            if res is None:
                out.append(f"* {task}, T = {b:,}: not run.")
                continue
            p, diff, n, win, half = res
            if p < 0.05 and diff > 0:
                word = "**neural better** (p < 0.05)"
            elif p < 0.05:
                word = "**PSST (grid) better** (p < 0.05)"
            else:
                word = "**no significant difference** (p >= 0.05)"
            out.append(f"* {task}, T = {b:,}: {word}: mean ACR difference {diff:+.4f} +- {half:.4f}, p = {p:.2g}, "
                       f"{n} paired runs, neural better in {win * 100:.0f}% of them.")
            floor = paired(table, "neural", "grid_oracle", b)
            if floor is not None:
                side = "neural above it" if floor[1] > 0 else "neural below it"
                where = (
                    f"{side}, significant"
                    if floor[0] < 0.05
                    else f"{side}, not significant: neural matches the best any nearest-grid agent can reach"
                )
                out.append(f"  Neural vs the grid oracle (the exact best arm at each grid point, the limit of any "
                           f"nearest-grid agent): {floor[1]:+.4f} +- {floor[4]:.4f}, p = {floor[0]:.2g} ({where}).")
    return out + [""]


def markdown(rows: list[dict[str, Any]], tasks: list[str], args: argparse.Namespace, notes: dict, wall: float) -> str:
    cmd = " ".join(["python scripts/continuous_report.py", *notes.get("_meta", {}).get("argv", sys.argv[1:])]).strip()
    out = [
        "# Continuous preference contexts",
        "",
        "The paper restricts contexts to a finite set; here contexts are drawn from a continuous",
        'distribution (`IAPOEnv(..., contexts="continuous")`, `iapo_gym/continuous.py`): objective',
        "weights ~ Dirichlet(alpha = 1) (uniform on the simplex), cost weight ~ Uniform[0, max cost level",
        "of the task's finite contexts] (each task's range is printed in its section). Agents:",
        "",
        "* **neural** (`agents/neural.py`): PSST-style rounds (largest surviving N per prompt, Eq. 6",
        "  allocation, nested + cross-context reuse) with halving over a sample of 128 continuous contexts",
        "  ranked by a learned map; a per-run MLP (objective-weight direction -> gain of all P x N_max arms,",
        "  32 hidden units + linear skip, count-weighted masked MSE on nested-block utilities re-scored under",
        "  32 sampled weight directions) with the exact linear cost term; deploys argmax for ANY context.",
        "* **PSST (grid)** (`agents/psst_grid.py`): paper PSST on a 9 x 3 grid (w_1 at cell midpoints",
        "  1/18..17/18, cost at 1/6, 1/2, 5/6), nearest-grid-point deployment (27 contexts, as the paper).",
        "* **grid oracle** (reference, no training): for each run, the exact best arm (test-split Q) at each of",
        "  the 27 grid points, deployed at the nearest grid point: what PSST (grid) approaches as the budget",
        "  grows, i.e. the discretisation floor of any nearest-grid agent. Shown at every budget (same value).",
        "* **PPO** (`agents/sb3.py`, Stable-Baselines3, defaults of the zoo adapter) trained on the",
        "  continuous env (each episode a fresh continuous context), deployed with its deterministic action",
        "  per context.",
        "",
        "Metric: **exact** ACR = mean over a fixed held-out sample of 2,000 contexts of Q(c, pi(c)) on",
        "the run's test queries (no Monte-Carlo), regret = oracle ACR (best arm per context) - ACR.",
        "Each run s draws world s (synthetic tasks) / split s; all agents see the same worlds (paired).",
        "The same protocol, with results.csv, TensorBoard (including the neural agent's loss and surviving",
        "arms per round) and figures, is available for any task through",
        "`python train.py --env IAPO-SynthCategorical-v0 --contexts continuous --agents neural,psst_grid,ppo`.",
        "Intervals: mean +- 1.96 standard errors (across runs, so they include the spread between worlds;",
        "the paired difference column and its interval are what the tests compare). p: two-sided paired",
        "Wilcoxon signed-rank test over the runs both agents ran.",
        "",
        f"Command: `{cmd}` (wall time {wall / 60:.1f} min on this machine, 2 shared CPU cores, torch "
        f"threads = {args.threads or 'default'}). `--analyse-only` rebuilds this page and the figures from "
        "`docs/figures/continuous_results.csv` without fitting.",
        "",
        f"Runs: {args.runs} per configuration for neural and PSST (grid)"
        + (
            f"; **{args.ppo_runs} for PPO** (one SB3 training per run is ~100x slower than the batched "
            "agents; its Wilcoxon tests pair the seeds it ran)"
            if "ppo" in args.agents and args.ppo_runs != args.runs
            else ""
        )
        + ". Neural hyper-parameters: "
        + (
            ", ".join(f"{k}={v}" for k, v in args.neural_kwargs.items())
            if args.neural_kwargs
            else "the defaults of `NeuralAgent`"
        )
        + ".",
        "",
    ]
    missing = [name for name, info in TASKS.items() if info.strategy == "bon" and name not in tasks]
    if missing:
        out += [f"Tasks: {', '.join(tasks)}. Not run: {', '.join(missing)} (their outcome tables were not installed "
                "when this page was generated; the script adds every BoN task whose table loads, e.g. after "
                "`iapo-gym data pull HelpfulHarmless`).", ""]
    out += verdict(rows, tasks, args)
    out += [DEVELOPMENT_NOTES, ""]
    for task in tasks:
        table = summarise(rows, task, args.agents, args.budgets)
        if not table:
            continue
        n = notes[task]
        out += [
            f"## {task}",
            "",
            f"P x N_max = {n['shape'][0]} x {n['shape'][1]}, {n['n_test_queries']} test queries per run; distribution "
            f"`{n['distribution']}`. Exact Q of all arms for the 2,000 evaluation contexts: "
            f"**{n['q_seconds_per_run']:.2f} s per run** (BoN K = 2 breakpoint path, single process).",
            "",
            "| budget | "
            + " | ".join(f"{AGENT_LABELS.get(a, a)} ACR" for a in args.agents if any((a, b) in table for b in args.budgets))
            + " | oracle ACR | neural - PSST(grid) | p (vs PSST grid) | neural wins | p (vs PPO) |",
            "|---|" + "---|" * (sum(1 for a in args.agents if any((a, b) in table for b in args.budgets)) + 5),
        ]
        for b in args.budgets:
            cells = []
            for a in args.agents:
                if not any((a, bb) in table for bb in args.budgets):
                    continue
                if (a, b) in table:
                    x = table[(a, b)]["acr"]
                    cells.append(f"{x.mean():.4f} +- {ci95(x):.4f} (n={x.size})")
                else:
                    cells.append("-")
            oracle_acr = next(v["oracle_acr"].mean() for (a, bb), v in table.items() if bb == b)
            pg = paired(table, "neural", "psst_grid", b)
            pp = paired(table, "neural", "ppo", b)
            pg_s = ("-", "-", "-") if pg is None else (f"{pg[1]:+.4f} +- {pg[4]:.4f}", f"{pg[0]:.2g}", f"{pg[3] * 100:.0f}%")
            pp_s = "-" if pp is None else f"{pp[0]:.2g} (diff {pp[1]:+.4f}, n={pp[2]})"
            out.append(
                f"| {b:,} | " + " | ".join(cells) + f" | {oracle_acr:.4f} | {pg_s[0]} | {pg_s[1]} | {pg_s[2]} | {pp_s} |"
            )
        out += ["", "Regret (oracle ACR - ACR), mean +- 95% CI:", ""]
        out.append("| budget | " + " | ".join(AGENT_LABELS.get(a, a) for a in args.agents) + " |")
        out.append("|---|" + "---|" * len(args.agents))
        for b in args.budgets:
            cells = []
            for a in args.agents:
                if (a, b) in table:
                    x = table[(a, b)]["regret"]
                    cells.append(f"{x.mean():.4f} +- {ci95(x):.4f}")
                else:
                    cells.append("-")
            out.append(f"| {b:,} | " + " | ".join(cells) + " |")
        fits = ", ".join(f"{k}: {t:.0f} s" for k, t in n["fit_seconds"].items())
        out += ["", f"Fit wall times (all runs of a configuration): {fits}.", "",
                f"![{task}](figures/continuous_{task}.png)", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="runs (worlds / splits) per configuration")
    ap.add_argument("--seed", type=int, default=0, help="first seed (runs use seed .. seed + runs - 1)")
    ap.add_argument("--ppo-runs", type=int, default=20, help="runs for PPO (slow: one SB3 training per run)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5000, 10000, 20000, 50000])
    ap.add_argument("--agents", nargs="+", default=["neural", "psst_grid", "ppo", "grid_oracle"],
                    help="agents (names of agents.AGENTS) and 'grid_oracle' (budget-free reference, see the report)")
    ap.add_argument(
        "--tasks", nargs="*", default=None, help="default: SynthCategorical + every BoN task whose table is present"
    )
    ap.add_argument("--eval-size", type=int, default=2000, help="held-out evaluation contexts")
    ap.add_argument("--out", default=str(REPO / "docs" / "CONTINUOUS.md"))
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    ap.add_argument("--neural-kwargs", type=json.loads, default={},
                    help='JSON overrides of the neural agent\'s hyper-parameters, e.g. \'{"n_directions": 64}\'')
    ap.add_argument("--tensorboard", default=None, help="TensorBoard directory for the neural agent's training")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the configurations already in docs/figures/continuous_results.csv and fit only the missing ones",
    )
    ap.add_argument("--analyse-only", action="store_true",
                    help="fit nothing: rebuild the report and figures from the CSV / notes of an earlier run")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))  # neural and PPO training (the machine is shared)
    t0 = time.perf_counter()
    if args.analyse_only:
        rows, notes = load_raw(args)
        stored = notes.get("_meta", {}).get("argv")
        if stored is not None:  # the settings of the run that wrote the CSV (runs, budgets, agents, ...)
            keep = {k: getattr(args, k) for k in ("out", "figures")}
            args = ap.parse_args(stored)
            args.analyse_only = True
            for k, v in keep.items():
                if f"--{k}" in (argv if argv is not None else sys.argv[1:]):
                    setattr(args, k, v)
        tasks = [t for t in dict.fromkeys(r["task"] for r in rows) if t != "_meta"]
        wall = float(notes.get("_meta", {}).get("wall_seconds", float("nan")))
    else:
        tasks = present_tasks(args.tasks)
        rows, notes, before = [], {}, 0.0
        if args.resume and raw_paths(args)[0].exists():
            rows, notes = load_raw(args)
            before = float(notes.get("_meta", {}).get("wall_seconds", 0.0))
        notes["_meta"] = {"argv": [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]}
        for task in tasks:
            run_task(task, args, rows, notes)
        wall = before + time.perf_counter() - t0
        notes["_meta"]["wall_seconds"] = wall
        save_raw(rows, notes, args)
    for task in tasks:
        plot(task, summarise(rows, task, args.agents, args.budgets), args.agents, args.budgets,
             Path(args.figures) / f"continuous_{task}.png")
    atomic_write(Path(args.out), markdown(rows, tasks, args, notes, wall).encode())
    print(f"wrote {args.out} ({(time.perf_counter() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
