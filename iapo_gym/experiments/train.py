r"""Benchmark IAPO agents on IAPO tasks: exact test-split metrics per run, TensorBoard, plots, Wilcoxon.

Single-file experiment runner in the CleanRL style: the ``Args`` dataclass below is the command
line (each field's docstring is its ``--help``), then the plan (tasks x agents x budgets x seeds),
the run loop, and the analysis. Heavy lifting lives in small modules of :mod:`iapo_gym.experiments`.

    python train.py                                  # demo: Synth-Bernoulli, 6 agents, ~10 s
    python train.py --env IAPO-MATH-v0 --agents psst,topk4,uniform --budgets 1k,5k,20k --runs 50
    python train.py --preset reproduction            # docs/REPRODUCTION.md + docs/figures/
    python train.py --env IAPO-SynthCategorical-v0 --contexts continuous \
        --agents neural,psst_grid,ppo --budgets 5k,20k --runs 20
    tensorboard --logdir runs/demo/tb

Protocol (the paper's, evaluated exactly): run ``seed`` of a configuration (task, agent, budget)
builds its env with ``gym.make(env, budget=budget, split_seed=seed, world_seed=seed)`` (real tasks
re-split their queries 80/20 from the seed; synthetic tasks draw a fresh world from it), fits the
agent with at most ``budget`` completions on the train split, and scores the learnt policy on the
test split with the exact oracle (no Monte-Carlo noise). Every agent sees the same seeds, so runs
are paired for the Wilcoxon signed-rank tests. All seeds of a configuration are fitted as one
vectorised batch (``Agent.fit_many``).

Outputs under ``--out``: ``results.csv`` (one row per run, see
:mod:`iapo_gym.experiments.results`; re-running skips finished runs), ``contexts.json`` (``contexts.continuous.json`` with
``--contexts continuous``),
``tb/`` (TensorBoard), ``wilcoxon.csv`` / ``wilcoxon.md`` (every agent against ``--reference``),
``acr_vs_budget.png`` and ``n_vs_cost.png`` (or under ``--figures``), and ``--report`` if set.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.experiments.cliargs import build_parser, explicit_fields


@dataclass
class Args:
    """The runner's options: one command-line flag per field, its help text the field's docstring."""

    env: str = "IAPO-SynthBernoulli-v0"
    """task ids, comma-separated (any registered IAPO-* id, e.g. IAPO-MATH-v0); 'all' = every registered IAPO task"""
    agents: str = "psst,topk4,uniform,ucb,triple_n1,random"
    """agent names from iapo_gym.agents.AGENTS, comma-separated; 'all' = every registered agent"""
    budgets: str = "1k,5k,20k"
    """training budgets in completions, comma-separated; a 'k' suffix multiplies by 1000 (5k = 5000)"""
    runs: int = 50
    """independent runs (seeds) per configuration; the seeds are seed .. seed+runs-1 for every agent"""
    seed: int = 0
    """first seed"""
    out: str = "runs/demo"
    """output directory (results.csv, tb/, wilcoxon tables, figures); re-running resumes from results.csv"""
    reference: str = "psst"
    """reference agent of the paired Wilcoxon table (every other agent is tested against it);
    if it is not run, the first agent"""
    contexts: str = "finite"
    """context mode: 'finite' (the task's context set, the paper's protocol) or 'continuous' (envs draw
    contexts from a continuous distribution; every run is scored exactly on its 2,000-context held-out
    evaluation sample, see docs/CONTINUOUS.md)"""
    track: bool = True
    """write TensorBoard event files under OUT/tb"""
    plots: bool = True
    """write the PNG figures"""
    figures: str = ""
    """directory of the PNG figures; empty = OUT"""
    report: str = ""
    """write a markdown reproduction report (paper claims checked with p-values) to this path"""
    skip_missing: bool = False
    """skip tasks whose outcome table is not installed (instead of stopping with an error)"""
    analyse_only: bool = False
    """fit nothing: rebuild the tables, figures and report from OUT/results.csv"""
    progress: bool = True
    """show a progress bar"""
    save_policies: str = ""
    """save fitted policies as documents under OUT/policies/ENV/AGENT/T<budget>/seed<k>.json (iapo-gym
    serve reads them): 'all' runs, or the 'best' run (highest test ACR) per task x agent x budget; empty = none"""
    preset: str = ""
    """named settings that fill every option not given explicitly: 'reproduction' (the paper's protocol)"""


#: Every agent the paper's two experiments compare (Fig. 4 and Fig. 5), plus naive Sequential
#: Halving and Random. The Stable-Baselines3 agents (ppo, a2c, dqn) are not part of it: they learn
#: a single-step RL policy from step() rewards, are ~100x slower and are not in the paper.
REPRODUCTION_AGENTS = (
    "psst,topk1,topk4,topk8,uniform,ucb,egreedy,softmax,triple_n1,triple_nrandom,seqhalving,random"
)
#: Task order of the paper's Table 1.
TASK_ORDER = (
    "IAPO-SynthBernoulli-v0",
    "IAPO-MATH-v0",
    "IAPO-CommonsenseQA-v0",
    "IAPO-SynthCategorical-v0",
    "IAPO-HelpfulHarmless-v0",
    "IAPO-Summarization-v0",
)
PRESETS: dict[str, dict[str, Any]] = {
    "reproduction": dict(
        env="all",
        agents=REPRODUCTION_AGENTS,
        budgets="1k,2k,5k,10k,20k,50k",
        runs=200,
        seed=0,
        out="runs/reproduction",
        report=str(Path("docs") / "REPRODUCTION.md"),
        figures=str(Path("docs") / "figures"),
        skip_missing=True,
    ),
}


# --------------------------------------------------------------------------- argument handling
class ArgumentError(ValueError):
    """An invalid command line (the message names the fix)."""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse ``argv``: explicit options override the preset, which overrides the defaults."""
    paragraphs = __doc__.split("\n\n")
    head, examples = paragraphs[0], paragraphs[2]
    parser = build_parser(Args, prog="train.py", description=head, epilog="examples:\n" + examples)
    given = explicit_fields(parser, argv)
    preset = given.get("preset", "")
    if preset:
        if preset not in PRESETS:
            parser.error(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        given = {**PRESETS[preset], **given}
    return Args(**given)


def parse_budgets(text: str) -> list[int]:
    """``"1k,5000"`` -> ``[1000, 5000]`` (positive integers; sorted, duplicates dropped)."""
    out = []
    for tok in (t.strip().lower() for t in text.split(",")):
        if not tok:
            continue
        scale = 1000 if tok.endswith("k") else 1
        try:
            value = float(tok[:-1] if scale == 1000 else tok) * scale
        except ValueError:
            raise ArgumentError(f"--budgets: {tok!r} is not a number (use e.g. 1000,5k)") from None
        if value <= 0 or value != int(value):
            raise ArgumentError(f"--budgets: {tok!r} must be a positive whole number of completions")
        out.append(int(value))
    if not out:
        raise ArgumentError("--budgets is empty; give e.g. --budgets 1000,5000")
    return sorted(set(out))


def registered_tasks() -> list[str]:
    """Registered IAPO env ids, in the paper's order then any others."""
    import gymnasium as gym

    import iapo_gym  # noqa: F401  (registers the ids)

    ids = [k for k in gym.envs.registry if k.startswith("IAPO-")]
    return [t for t in TASK_ORDER if t in ids] + sorted(t for t in ids if t not in TASK_ORDER)


def parse_envs(text: str) -> list[str]:
    """Comma-separated env ids ('all' = every registered IAPO id); unknown ids list the valid ones."""
    known = registered_tasks()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return known
    bad = [n for n in names if n.split(":")[-1] not in known]
    if bad:
        raise ArgumentError(f"--env: unknown task id(s) {', '.join(bad)}; available: {', '.join(known)}")
    if not names:
        raise ArgumentError(f"--env is empty; available: {', '.join(known)}")
    return list(dict.fromkeys(n.split(":")[-1] for n in names))


def parse_agents(text: str, *, lenient: bool = False) -> tuple[list[str], list[str]]:
    """Agent names -> ``(known, missing)``; unknown names raise (listing the valid ones) unless ``lenient``."""
    from iapo_gym.agents import AGENTS

    names = [a.strip() for a in text.split(",") if a.strip()]
    if names == ["all"]:
        return list(AGENTS), []
    missing = [n for n in names if n not in AGENTS]
    if missing and not lenient:
        raise ArgumentError(f"--agents: unknown agent(s) {', '.join(missing)}; available: {', '.join(sorted(AGENTS))}")
    known = [n for n in dict.fromkeys(names) if n in AGENTS]
    if not known:
        raise ArgumentError(f"--agents names no registered agent; available: {', '.join(sorted(AGENTS))}")
    return known, missing


@dataclass(frozen=True)
class Plan:
    """The validated experiment: what to run and where to write."""

    envs: list[str]
    agents: list[str]
    budgets: list[int]
    seeds: list[int]
    out: Path
    figures: Path
    report: Path | None
    missing_agents: list[str]
    reference: str


def make_plan(args: Args) -> Plan:
    """Validate ``args`` into a :class:`Plan` (raises :class:`ArgumentError` naming the fix)."""
    if args.runs < 1:
        raise ArgumentError(f"--runs must be >= 1; got {args.runs}")
    from iapo_gym.experiments.evaluate import MODES

    if args.contexts not in MODES:
        raise ArgumentError(f"--contexts must be one of {', '.join(MODES)}; got {args.contexts!r}")
    if args.save_policies not in ("", "all", "best"):
        raise ArgumentError(f"--save-policies must be 'all' or 'best' (or empty for none); got {args.save_policies!r}")
    agents, missing = parse_agents(args.agents, lenient=bool(args.preset))
    budgets = parse_budgets(args.budgets)
    envs = parse_envs(args.env)
    out = Path(args.out)
    return Plan(
        envs=envs,
        agents=agents,
        budgets=budgets,
        seeds=list(range(args.seed, args.seed + args.runs)),
        out=out,
        figures=Path(args.figures) if args.figures else out,
        report=Path(args.report) if args.report else None,
        missing_agents=missing,
        reference=args.reference if args.reference in agents else agents[0],
    )


# --------------------------------------------------------------------------- environments
def env_factory(env_id: str, budget: int, contexts: str = "finite") -> Callable[[int], Any]:
    """``make_env(seed)``: the unwrapped env of run ``seed`` (its split, its world, its ledger)."""
    import gymnasium as gym

    extra: dict[str, Any] = {} if contexts == "finite" else {"contexts": contexts}

    def make_env(seed: int) -> Any:
        return gym.make(env_id, budget=int(budget), split_seed=int(seed), world_seed=int(seed), **extra).unwrapped

    return make_env


def is_missing_table(exc: BaseException) -> bool:
    """Whether ``exc`` says a task's outcome table is not installed."""
    from iapo_gym.tables.store import TableNotFoundError

    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, TableNotFoundError):
            return True
        cur = cur.__cause__ or cur.__context__  # gym.make may wrap the loader's error
    return False


def contexts_path(out: Path, mode: str) -> Path:
    """Where the contexts of ``mode`` are written, so both modes can share one output directory.

    ``OUT/contexts.json`` (finite mode) or ``OUT/contexts.continuous.json`` (continuous mode: the
    cost-weight bins of the evaluation sample).
    """
    return out / ("contexts.json" if mode == "finite" else f"contexts.{mode}.json")


# --------------------------------------------------------------------------- the run loop
class Runner:
    """Runs every (task, agent, budget) configuration of a plan, skipping finished runs."""

    def __init__(self, args: Args, plan: Plan, log: Callable[[str], None] = print) -> None:
        from iapo_gym.experiments.results import ResultsFile

        self.args, self.plan, self.log = args, plan, log
        self.results = ResultsFile(plan.out / "results.csv", repair=not args.analyse_only)
        self.evaluators: dict[tuple[str, int], Any] = {}
        self.fits = 0  # fit_many calls made by this runner (a resumed, finished plan makes none)
        self.skipped_envs: dict[str, str] = {}
        self.contexts: dict[str, dict[str, Any]] = {}
        self.first_tables: dict[str, Any] = {}  # env id -> run 0's table (is it shared by every run?)

    def key(self, env: str, agent: str, budget: int, seed: int) -> tuple:
        """The results-file key of one run."""
        return (env, self.args.contexts, agent, int(budget), int(seed))

    def todo(self, env: str, agent: str, budget: int) -> list[int]:
        """The seeds of this cell that the results file does not have yet."""
        return [s for s in self.plan.seeds if not self.results.done(self.key(env, agent, budget, s))]

    def check_env(self, env_id: str) -> bool:
        """Build run 0's env once: records its contexts; a missing table skips or stops."""
        try:
            env = env_factory(env_id, max(self.plan.budgets), self.args.contexts)(self.plan.seeds[0])
        except Exception as exc:
            if is_missing_table(exc) and self.args.skip_missing:
                self.skipped_envs[env_id] = str(exc).splitlines()[0]
                self.log(f"skipping {env_id}: its outcome table is not installed ({self.skipped_envs[env_id]})")
                return False
            raise
        self.first_tables[env_id] = env.table
        from iapo_gym.tables.importer import is_modified

        if is_modified(env.table.provenance):  # the table's manifest says it is not the pinned release
            prov = env.table.provenance
            self.log(f"{env_id}: table {env.table.task} is MODIFIED (from {prov.get('source_file')}, "
                     f"sha256 {prov.get('source_sha256')}, not the pinned release); results do not reproduce the paper")
        if self.args.contexts == "continuous":
            # continuous mode: per-context policy columns are summarised over cost-weight bins of
            # the held-out evaluation sample; record the bins (mean context of each) as the contexts
            from iapo_gym.continuous import distribution_of
            from iapo_gym.experiments.evaluate import cost_bins, evaluation_contexts

            weights, _, _ = evaluation_contexts(env, "continuous")
            bins, centres, names = cost_bins(weights)
            record: dict[str, Any] = {
                "names": list(names),
                "weights": centres.tolist(),
                "probs": (np.bincount(bins) / bins.size).tolist(),
                "distribution": distribution_of(env).to_json(),
                "evaluation_contexts": int(weights.shape[0]),
            }
        else:
            ctx = env.contexts
            record = {
                "names": list(ctx.names),
                "weights": np.asarray(ctx.weights).tolist(),
                "probs": np.asarray(ctx.probs).tolist(),
            }
        self.contexts[env_id] = record | {
            "n_prompts": int(env.n_prompts),
            "n_max": int(env.n_max),
            "strategy": str(env.strategy),
        }
        return True

    def evaluator(self, env_id: str, seed: int, env: Any | None) -> Any:
        """The exact evaluator of run ``seed`` (test split / world of that seed), cached."""
        from iapo_gym.experiments.evaluate import ExactEvaluator

        key = (env_id, int(seed))
        if key not in self.evaluators:
            if env is None:
                env = env_factory(env_id, 0, self.args.contexts)(seed)
            shared = env.table is self.first_tables.get(env_id)
            self.evaluators[key] = ExactEvaluator(env, self.args.contexts, shared_table=shared)
        return self.evaluators[key]

    def run_config(self, env_id: str, agent_name: str, budget: int, seeds: list[int]) -> list[dict[str, Any]]:
        """Fit ``seeds`` as one batch, evaluate exactly, append to results.csv; returns the new rows."""
        from iapo_gym.agents import make_agent

        agent = self.with_training_log(make_agent(agent_name), env_id, agent_name, budget)
        base = env_factory(env_id, budget, self.args.contexts)
        built: dict[int, Any] = {}

        def make_env(seed: int) -> Any:
            env = base(seed)
            built[int(seed)] = env
            return env

        t0 = time.perf_counter()
        policies = agent.fit_many(make_env, budget, seeds)
        wall = (time.perf_counter() - t0) / len(seeds)
        self.fits += 1
        if len(policies) != len(seeds):
            raise RuntimeError(f"{agent_name}.fit_many returned {len(policies)} policies for {len(seeds)} seeds")
        rows = []
        best: tuple[float, int, Any, Any] | None = None  # --save-policies best: (acr, seed, policy, env)
        for seed, policy in zip(seeds, policies, strict=True):
            used = int(policy.budget_used)
            if used > budget:
                raise RuntimeError(f"agent {agent_name!r} reports {used} completions spent with a budget of {budget}")
            # pop: each run's env (and its world's oracle cache) is freed as soon as it is scored
            env = built.pop(int(seed), None)
            metrics = self.evaluator(env_id, seed, env).evaluate(policy)
            keep = self.args.save_policies
            if keep == "all" or (keep == "best" and (best is None or metrics.acr > best[0])):
                best = (metrics.acr, seed, policy, env)
                if keep == "all":
                    self.save_policy(env_id, agent_name, agent, budget, *best[1:])
            rows.append(
                dict(
                    zip(
                        ("env", "contexts", "agent", "budget", "seed"), self.key(env_id, agent_name, budget, seed), strict=True
                    )
                )
                | {"budget_used": used, "wall_s": wall}
                | metrics.row()
            )
        if best is not None and self.args.save_policies == "best":
            self.save_policy(env_id, agent_name, agent, budget, *best[1:])
        self.results.append(rows)
        return rows

    def save_policy(self, env_id: str, agent_name: str, agent: Any, budget: int, seed: int, policy: Any, env: Any) -> None:
        """Write one run's policy document (``--save-policies``) under ``OUT/policies``."""
        env = env if env is not None else env_factory(env_id, budget, self.args.contexts)(seed)
        path = self.plan.out / "policies" / env_id / agent_name / f"T{int(budget)}" / f"seed{int(seed)}.json"
        policy.save(path, env, agent=agent, agent_name=agent_name, budget=budget, seed=seed, overwrite=True)

    def with_training_log(self, agent: Any, env_id: str, agent_name: str, budget: int) -> Any:
        """``agent`` logging its own training under ``OUT/tb`` when tracking; other agents unchanged.

        An agent logs its own training when it has a ``log_dir`` field (e.g. the neural agent's loss
        and exploration statistics).
        """
        if not self.args.track or not is_dataclass(agent) or isinstance(agent, type):
            return agent
        if "log_dir" not in {f.name for f in fields(agent)}:
            return agent
        return replace(agent, log_dir=str(self.plan.out / "tb" / f"{env_id}__{agent_name}__training__T{int(budget)}"))

    def rows_of(self, env: str, agent: str, budget: int) -> list[dict[str, Any]]:
        """Recorded rows of the plan's seeds for one configuration."""
        want = set(self.plan.seeds)
        return [
            r
            for r in self.results.rows
            if r["env"] == env and r["agent"] == agent and r["budget"] == budget and r["seed"] in want
            and r["contexts"] == self.args.contexts
        ]

    def run(self) -> None:
        """Every configuration of the plan (finished runs skipped), with a progress bar and TensorBoard."""
        from tqdm.auto import tqdm

        from iapo_gym.agents import make_agent
        from iapo_gym.experiments.results import atomic_write_text

        plan = self.plan
        envs = [e for e in plan.envs if self.check_env(e)]
        known = self.contexts_file()
        known.update(self.contexts)
        atomic_write_text(contexts_path(plan.out, self.args.contexts), json.dumps(known, indent=1))
        total = sum(len(self.todo(e, a, b)) for e in envs for a in plan.agents for b in plan.budgets)
        self.log(
            f"{len(envs)} task(s) x {len(plan.agents)} agent(s) x {len(plan.budgets)} budget(s) x {len(plan.seeds)} runs: "
            f"{total} to run, {len(envs) * len(plan.agents) * len(plan.budgets) * len(plan.seeds) - total} already in "
            f"{plan.out / 'results.csv'}"
        )
        stamp = int(time.time())
        with tqdm(total=total, disable=not self.args.progress or total == 0, unit="run", dynamic_ncols=True) as bar:
            for env_id in envs:
                for agent_name in plan.agents:
                    logger = None
                    for budget in plan.budgets:
                        seeds = self.todo(env_id, agent_name, budget)
                        if not seeds:
                            continue
                        bar.set_description(f"{env_id.removeprefix('IAPO-')} {agent_name} T={budget}")
                        self.run_config(env_id, agent_name, budget, seeds)
                        bar.update(len(seeds))
                        if self.args.track:
                            if logger is None:
                                logger = self.tb_logger(env_id, agent_name, make_agent(agent_name).config(), stamp)
                            logger.log_budget(budget, self.rows_of(env_id, agent_name, budget))
                    if logger is not None:
                        logger.close()

    def tb_logger(self, env_id: str, agent_name: str, config: dict[str, Any], stamp: int) -> Any:
        """A TensorBoard logger for one (env, agent) cell, with its hyperparameters."""
        from iapo_gym.experiments.tblog import ConfigLogger

        hparams = {"env": env_id, "agent": agent_name, "runs": len(self.plan.seeds), "first_seed": self.plan.seeds[0]}
        hparams.update({f"agent.{k}": v for k, v in config.items()})
        names = self.contexts[env_id]["names"]
        return ConfigLogger(self.plan.out / "tb", env_id, agent_name, self.plan.seeds, names, hparams, stamp)

    def contexts_file(self) -> dict[str, Any]:
        """The contexts file of this output directory and mode (empty if not written yet)."""
        path = contexts_path(self.plan.out, self.args.contexts)
        return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------- analysis
def selected_results(plan: Plan, args: Args) -> Any:
    """The recorded rows that belong to this plan (other rows of the same file are left out)."""
    from iapo_gym.experiments.results import Results, ResultsFile

    envs, agents, budgets, seeds = set(plan.envs), set(plan.agents), set(plan.budgets), set(plan.seeds)
    rows = [
        r
        for r in ResultsFile(plan.out / "results.csv", repair=False).rows
        if r["env"] in envs and r["agent"] in agents and r["budget"] in budgets and r["seed"] in seeds
        and r["contexts"] == args.contexts
    ]
    return Results.from_rows(rows)


def analyse(
    args: Args, plan: Plan, skipped_envs: dict[str, str] | None = None, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """Wilcoxon tables, figures, the summary table and (if asked) the report; returns the paths written."""
    from iapo_gym.experiments import stats
    from iapo_gym.experiments.results import atomic_write_text

    res = selected_results(plan, args)
    written: dict[str, Path] = {"results": plan.out / "results.csv"}
    if len(res) == 0:
        log("no results to analyse")
        return written
    agents = [a for a in plan.agents if a in set(res.agent.tolist())]
    rows = stats.wilcoxon_table(res, reference=plan.reference)
    written["wilcoxon_csv"] = atomic_write_text(plan.out / "wilcoxon.csv", stats.wilcoxon_csv(rows))
    written["wilcoxon_md"] = atomic_write_text(plan.out / "wilcoxon.md", stats.wilcoxon_markdown(rows))
    ctx_path = contexts_path(plan.out, args.contexts)
    contexts = json.loads(ctx_path.read_text()) if ctx_path.exists() else {}
    if args.plots:
        from iapo_gym.experiments.plots import plot_acr_vs_budget, plot_n_vs_cost

        written["acr_plot"] = plot_acr_vs_budget(res, plan.figures / "acr_vs_budget.png", agents)
        cost_w = {e: [w[-1] for w in c["weights"]] for e, c in contexts.items()}
        if any(e in cost_w for e in res.unique("env")):
            written["n_plot"] = plot_n_vs_cost(res, plan.figures / "n_vs_cost.png", cost_w, agents=agents)
    log(summary_table(res, agents, plan.reference))
    if plan.report is not None:
        from iapo_gym.experiments.report import ReportInputs, write_report

        written["report"] = write_report(
            ReportInputs(
                results=res,
                agents=agents,
                missing_agents=plan.missing_agents,
                skipped_envs=dict(skipped_envs or {}),
                contexts=contexts,
                figures={k: v for k, v in written.items() if k.endswith("_plot")},
                command=command_line(args),
                reference=plan.reference,
            ),
            plan.report,
        )
    return written


def summary_table(res: Any, agents: Sequence[str], reference: str) -> str:
    """Mean exact test ACR (and regret) per task, agent and budget, with the p-value against the reference."""
    from iapo_gym.experiments import stats

    lines = []
    for env in res.unique("env"):
        m_env = res.mask(env=env)
        budgets = sorted(set(res.budget[m_env].tolist()))
        oracle = res.oracle_acr[m_env].mean()
        lines.append(f"\n{env}  (mean oracle ACR {oracle:.4f}; cells: mean ACR / regret, p vs {reference})")
        lines.append(f"{'agent':<16}" + "".join(f"{'T=' + str(b):>30}" for b in budgets))
        for agent in agents:
            cells = []
            for b in budgets:
                m = m_env & res.mask(agent=agent, budget=b)
                if not m.any():
                    cells.append(f"{'-':>30}")
                    continue
                cell = f"{res.acr[m].mean():.4f} / {res.regret[m].mean():.4f}" + ("" if agent != reference else " " * 10)
                if agent != reference:
                    _, a, r = res.paired("acr", env, b, agent, reference)
                    if a.size:
                        cell += f" p={stats.format_p(stats.paired_wilcoxon(a, r)[1]):<7}"
                cells.append(f"{cell:>30}")
            lines.append(f"{agent:<16}" + "".join(cells))
    return "\n".join(lines)


def command_line(args: Args) -> str:
    """The shortest command that regenerates this experiment."""
    if args.preset:
        return f"python train.py --preset {args.preset}"
    defaults = Args()
    parts = ["python train.py"]
    for k, v in asdict(args).items():
        if v != getattr(defaults, k):
            flag = "--" + k.replace("_", "-")
            parts.append(flag if v is True else f"--no-{flag[2:]}" if v is False else f"{flag} {v}")
    return " ".join(parts)


# --------------------------------------------------------------------------- entry point
def run_experiment(args: Args, log: Callable[[str], None] = print) -> tuple[Runner, dict[str, Path]]:
    """Validate, run (skipping finished runs) and analyse; returns the runner and the paths written."""
    plan = make_plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.missing_agents:
        log(f"note: agents not registered yet, left out: {', '.join(plan.missing_agents)}")
    runner = Runner(args, plan, log)
    if not args.analyse_only:
        runner.run()
    else:
        for env_id in plan.envs:  # record skipped tasks for the report
            runner.check_env(env_id)
    written = analyse(args, plan, runner.skipped_envs, log)
    if args.track and (plan.out / "tb").exists():
        written["tensorboard"] = plan.out / "tb"
    return runner, written


def main(argv: Sequence[str] | None = None) -> int:
    """``iapo-gym train`` / ``python train.py``: parse ``argv``, run the experiment; the exit status."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        _, written = run_experiment(args)
    except ArgumentError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nfinished in {time.perf_counter() - t0:.1f} s; wrote:")
    for name, path in written.items():
        print(f"  {name:<14} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
