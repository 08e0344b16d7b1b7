r"""Benchmark IAPO agents on IAPO tasks: exact test-split metrics per run, TensorBoard, plots, Wilcoxon.

Single-file experiment runner in the CleanRL style: the ``Args`` dataclass below is the command
line (each field's docstring is its ``--help``), then the plan (tasks x agents x budgets x seeds),
the run loop, and the analysis. Heavy lifting lives in small modules of :mod:`iapo_gym.experiments`.

    python train.py                                  # demo: Synth-Bernoulli, 6 agents, ~10 s
    python train.py --env IAPO-MATH-v0 --agents psst,topk4,uniform --budgets 1k,5k,20k --runs 50
    python train.py --agents psst,my_agent:BestOfFirstPull          # your agent, from my_agent.py
    python train.py --agents topk4,k2=topk4 --agent-args "k2:k=2,rho=0.1"   # a variant, named k2
    python train.py --config experiment.toml         # options and agents from a TOML file
    python train.py --preset reproduction            # the paper's protocol, into runs/reproduction
    python train.py --env IAPO-SynthCategorical-v0 --contexts continuous --agents neural,psst_grid,ppo \
                    --budgets 5k,20k --runs 20
    tensorboard --logdir runs/demo/tb

Protocol (the paper's, evaluated exactly): run ``seed`` of a configuration (task, agent, budget)
builds its env with ``gym.make(env, budget=budget, split_seed=seed, world_seed=seed)`` (real tasks
re-split their queries 80/20 from the seed; synthetic tasks draw a fresh world from it), fits the
agent with at most ``budget`` completions on the train split, and scores the learnt policy on the
test split with the exact oracle (no Monte-Carlo noise). Every agent sees the same seeds, so runs
are paired for the Wilcoxon signed-rank tests. All seeds of a configuration are fitted as one
vectorised batch (``Agent.fit_many``), in chunks of ``--chunk`` seeds so that progress and
``results.csv`` advance while a slow configuration runs.

Outputs under ``--out``: ``results.csv`` (one row per run, see
:mod:`iapo_gym.experiments.results`; re-running skips finished runs), ``contexts.json``
(``contexts.continuous.json`` with ``--contexts continuous``), ``tb/`` (TensorBoard, one stable run
per configuration), ``wilcoxon.csv`` / ``wilcoxon.md`` (every agent against ``--reference``),
``acr_vs_budget.png``, ``regret_diff.png`` and ``n_vs_cost.png`` (or under ``--figures``), and
``--report`` if set. Tables, figures and the summary cover *every* run recorded in ``results.csv``
for the context mode (so invocations with other agents or budgets accumulate), or only this
invocation's plan with ``--only-plan``. Ctrl-C keeps every finished chunk; the same command resumes.

Agents (:mod:`iapo_gym.experiments.agentspec`): zoo names, entry points of the
``iapo_gym.agents`` group, or import paths ``module:Class``, each ``[label=]target``; hyper-parameters
with ``--agent-args label:key=value,...`` or an ``[agents.<label>]`` table of ``--config``. An
experiment file (TOML) holds any option as a top-level key::

    env = "IAPO-MATH-v0"
    budgets = "1k,5k,20k"          # or a list: [1000, 5000, 20000]
    runs = 50
    [agents.psst]
    [agents.topk_k2]
    agent = "topk4"                # zoo name, entry point or module:Class (default: the label)
    k = 2
    [agents.mine]
    agent = "my_agent:BestOfFirstPull"
    n = 8

Options on the command line override the file, which overrides ``--preset``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.experiments.agentspec import AgentSpec, AgentSpecError, resolve_agents
from iapo_gym.experiments.cliargs import build_parser, explicit_fields
from iapo_gym.experiments.results import ResultsError


@dataclass
class Args:
    """The command line of train.py (each field's docstring is its --help)."""

    env: str = "IAPO-SynthBernoulli-v0"
    """task ids, comma-separated (any registered IAPO-* id, e.g. IAPO-MATH-v0); 'all' = every registered
    IAPO task"""
    agents: str = "psst,topk4,uniform,ucb,triple_n1,random"
    """agents, comma-separated, each [label=]target: a zoo name (iapo_gym.agents.AGENTS), an entry point of
    the 'iapo_gym.agents' group, or an import path module:Class (file.py:Class); 'all' = every zoo and
    entry-point agent"""
    agent_args: str = ""
    """per-agent hyper-parameters, 'label:key=value,key=value;label2:...' (Python literals, e.g.
    topk4:k=2,rho=0.1); recorded in results.csv and TensorBoard"""
    config: str = ""
    """TOML experiment file: any option as a top-level key, agents as [agents.<label>] tables (agent =
    target, then hyper-parameters); the command line overrides it"""
    budgets: str = "1k,5k,20k"
    """training budgets in completions, comma-separated; a 'k' suffix multiplies by 1000 (5k = 5000)"""
    runs: int = 50
    """independent runs (seeds) per configuration; the seeds are seed .. seed+runs-1 for every agent"""
    seed: int = 0
    """first seed"""
    out: str = "runs/demo"
    """output directory (results.csv, tb/, wilcoxon tables, figures); re-running resumes from results.csv"""
    reference: str = ""
    """reference agent (label) of the paired Wilcoxon tables and the regret-difference figure; empty = psst
    if it is in the results, else the first agent"""
    contexts: str = "finite"
    """context mode: 'finite' (the task's context set, the paper's protocol) or 'continuous' (envs draw
    contexts from a continuous distribution; every run is scored exactly on its 2,000-context held-out
    evaluation sample, see docs/CONTINUOUS.md)"""
    track: bool = True
    """write TensorBoard event files under OUT/tb"""
    tracker: str = ""
    """also send the TensorBoard scalars to experiment trackers, comma-separated: 'wandb' (pip install
    'iapo-gym[wandb]'), 'mlflow' (pip install 'iapo-gym[mlflow]'); one run per task x agent, configured by
    their own environment variables (WANDB_PROJECT, WANDB_MODE, MLFLOW_TRACKING_URI, ...); empty = none"""
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
    only_plan: bool = False
    """analyse only this invocation's tasks x agents x budgets x seeds (default: every run of the context
    mode in results.csv)"""
    progress: bool = True
    """show the progress line (runs done/total, ETA over the whole experiment)"""
    threads: int = 1
    """CPU threads for torch and BLAS (1 suits a shared machine; 0 = the libraries' defaults, one per core)"""
    chunk: int = 0
    """seeds fitted per batch (results.csv and the progress line advance per chunk); 0 = 1 for agents that
    fit one seed at a time, 25 for batched agents"""
    preset: str = ""
    """named settings that fill every option not given explicitly: 'reproduction' (the paper's protocol;
    writes under --out unless --write-docs)"""
    save_policies: str = ""
    """save fitted policies as documents under OUT/policies/ENV/AGENT/T<budget>/seed<k>.json (iapo-gym
    serve reads them): 'all' runs, or the 'best' run (highest test ACR) per task x agent x budget; empty = none"""
    executor: str = "local"
    """where the cells (chunks of seeds of one task x agent x budget) run: 'local' (this process), 'process'
    (worker processes of this machine, see --workers) or 'ray' (Ray tasks; pip install 'iapo-gym[ray]'); rows
    are identical either way"""
    workers: int = 0
    """with --executor process: worker processes (0 = one per CPU)"""
    ray_address: str = ""
    """with --executor ray: the cluster to join ('auto' or host:port from 'ray start --head');
    empty starts a private local Ray instance"""
    write_docs: bool = False
    """with --preset reproduction: write the report and figures into the checkout's docs/
    (docs/REPRODUCTION.md, docs/figures/)"""




#: Every agent the paper's two experiments compare (Fig. 4 and Fig. 5), plus naive Sequential
#: Halving, Random and the model-based ``psst_model`` (docs/BEYOND.md; it uses query-controlled
#: pulls). The Stable-Baselines3 agents (ppo, a2c, dqn) are not part of it: they learn a
#: single-step RL policy from step() rewards, are ~100x slower and are not in the paper.
REPRODUCTION_AGENTS = (
    "psst,topk1,topk4,topk8,uniform,ucb,egreedy,softmax,triple_n1,triple_nrandom,seqhalving,random,psst_model"
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
        report=str(Path("runs") / "reproduction" / "REPRODUCTION.md"),
        figures=str(Path("runs") / "reproduction" / "figures"),
        skip_missing=True,
        executor="process",  # one worker per CPU (benchmarks/bench_sweep.py: the sweep's time)
    ),
}
#: Where a preset writes with ``--write-docs`` (the checkout's committed report and figures).
PRESET_DOCS: dict[str, dict[str, str]] = {
    "reproduction": dict(report=str(Path("docs") / "REPRODUCTION.md"), figures=str(Path("docs") / "figures")),
}
#: Seeds per chunk for agents that fit many seeds as one vectorised batch (``--chunk 0``).
BATCH_CHUNK = 25


# --------------------------------------------------------------------------- argument handling
class ArgumentError(ValueError):
    """An invalid command line (the message names the fix)."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the runs; everything finished is in ``results.csv``."""

    def __init__(self, out: Path, saved: int) -> None:
        super().__init__(f"interrupted: {saved} run(s) finished in this invocation are saved in {out / 'results.csv'}")
        self.out, self.saved = out, saved


def option_value(name: str, value: Any, where: str = "", exclude: Sequence[str] = ()) -> Any:
    """``value`` of the ``Args`` field ``name`` checked and normalised (a list becomes comma-separated text).

    Raises :class:`ArgumentError` naming the option (``where`` prefixes the message) for an unknown
    name or a value of the wrong type.
    """
    options = [f for f in Args.__dataclass_fields__ if f not in exclude]
    if name not in options:
        raise ArgumentError(f"{where}unknown option {name!r}; options: {', '.join(sorted(options))}")
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    want = type(getattr(Args, name))
    bad_int = want is int and (not isinstance(value, int) or isinstance(value, bool))
    if bad_int or want is bool and not isinstance(value, bool):
        raise ArgumentError(f"{where}{name} = {value!r} must be a {want.__name__}")
    return value if want is not str else str(value)


def load_config(path: str | Path) -> dict[str, Any]:
    """Options of a TOML experiment file, as ``Args`` fields (``[agents.*]`` become agents / agent_args)."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArgumentError(f"--config: no file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"--config {path}: not valid TOML ({exc})") from None
    out: dict[str, Any] = {}
    agents = data.pop("agents", None)
    for key, value in data.items():
        name = key.replace("-", "_")
        out[name] = option_value(name, value, f"--config {path}: ", exclude=("config",))
    if agents is not None:
        if not isinstance(agents, dict) or not all(isinstance(v, dict) for v in agents.values()):
            raise ArgumentError(
                f"--config {path}: write agents as [agents.<label>] tables (agent = target, then hyper-parameters)"
            )
        items, params = [], []
        for label, table in agents.items():
            table = dict(table)
            target = str(table.pop("agent", label))
            items.append(label if target == label else f"{label}={target}")
            if table:
                params.append(f"{label}:" + ",".join(f"{k}={v!r}" for k, v in table.items()))
        if "agents" in out:
            raise ArgumentError(f"--config {path}: give the agents either as 'agents = ...' or as [agents.*] tables, not both")
        out["agents"] = ",".join(items)
        if params:
            out["agent_args"] = ";".join(params + ([out["agent_args"]] if out.get("agent_args") else []))
    return out


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse ``argv``: explicit options override ``--config``, which overrides the preset, then the defaults."""
    paragraphs = __doc__.split("\n\n")
    head, examples = paragraphs[0], paragraphs[2]
    parser = build_parser(Args, prog="train.py", description=head, epilog="examples:\n" + examples)
    given = explicit_fields(parser, argv)
    try:
        return make_args(**given)
    except ArgumentError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def make_args(**options: Any) -> Args:
    """``Args`` from keyword options, as the command line builds them.

    Options (any ``Args`` field; lists such as ``budgets=[1000, 5000]`` are joined with commas)
    override ``config`` (a TOML file), which overrides ``preset``, then the defaults. Raises
    :class:`ArgumentError` naming the option for an unknown option, a wrong type, a bad config file
    or an unknown preset.
    """
    given = {k: option_value(k, v) for k, v in options.items()}
    from_file = load_config(given["config"]) if given.get("config") else {}
    merged = {**from_file, **given}
    preset = merged.get("preset", "")
    if preset:
        if preset not in PRESETS:
            raise ArgumentError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
        if merged.get("write_docs"):
            base.update(PRESET_DOCS.get(preset, {}))
        elif "out" in merged and preset in PRESET_DOCS:  # a preset's report and figures follow --out
            base.update(report=str(Path(merged["out"]) / "REPRODUCTION.md"), figures=str(Path(merged["out"]) / "figures"))
        merged = {**base, **merged}
    return Args(**merged)


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


def parse_agents(text: str, *, lenient: bool = False, agent_args: str = "") -> tuple[list[str], list[str]]:
    """Agents -> ``(labels, missing)``; unknown names raise (listing the valid ones) unless ``lenient``."""
    specs, missing = parse_agent_specs(text, lenient=lenient, agent_args=agent_args)
    return [s.label for s in specs], missing


def parse_agent_specs(text: str, *, lenient: bool = False, agent_args: str = "") -> tuple[list[AgentSpec], list[str]]:
    """``--agents`` / ``--agent-args`` -> ``(specs, missing)`` (see :mod:`iapo_gym.experiments.agentspec`)."""
    try:
        return resolve_agents(text, agent_args, lenient=lenient)
    except AgentSpecError as exc:
        raise ArgumentError(str(exc)) from None


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
    specs: list[AgentSpec]


def make_plan(args: Args) -> Plan:
    """Validate ``args`` into a :class:`Plan` (raises :class:`ArgumentError` naming the fix)."""
    if args.runs < 1:
        raise ArgumentError(f"--runs must be >= 1; got {args.runs}")
    if args.threads < 0:
        raise ArgumentError(f"--threads must be >= 0 (0 = the libraries' defaults); got {args.threads}")
    if args.chunk < 0:
        raise ArgumentError(f"--chunk must be >= 0 (0 = automatic); got {args.chunk}")
    if args.write_docs and args.preset not in PRESET_DOCS:
        raise ArgumentError(f"--write-docs only applies to a preset that writes docs (--preset {', '.join(PRESET_DOCS)})")
    if args.figures and not args.plots:
        raise ArgumentError("--figures has no effect with --no-plots; drop one of them")
    from iapo_gym.experiments.evaluate import MODES

    if args.contexts not in MODES:
        raise ArgumentError(f"--contexts must be one of {', '.join(MODES)}; got {args.contexts!r}")
    if args.save_policies not in ("", "all", "best"):
        raise ArgumentError(f"--save-policies must be 'all' or 'best' (or empty for none); got {args.save_policies!r}")
    from iapo_gym.experiments.executors import EXECUTORS

    if args.executor not in EXECUTORS:
        raise ArgumentError(f"--executor must be one of {', '.join(EXECUTORS)}; got {args.executor!r}")
    if args.workers < 0:
        raise ArgumentError(f"--workers must be >= 0 (0 = one per CPU); got {args.workers}")
    if args.workers and args.executor != "process":
        raise ArgumentError("--workers only applies with --executor process; add --executor process or drop it")
    if args.ray_address and args.executor != "ray":
        raise ArgumentError("--ray-address only applies with --executor ray; add --executor ray or drop it")
    if args.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ArgumentError("--executor ray needs Ray: pip install 'iapo-gym[ray]'")
    specs, missing = parse_agent_specs(args.agents, lenient=bool(args.preset), agent_args=args.agent_args)
    agents = [s.label for s in specs]
    budgets = parse_budgets(args.budgets)
    envs = parse_envs(args.env)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} is a file; pass a directory")
    return Plan(
        envs=envs,
        agents=agents,
        budgets=budgets,
        seeds=list(range(args.seed, args.seed + args.runs)),
        out=out,
        figures=Path(args.figures) if args.figures else out,
        report=Path(args.report) if args.report else None,
        missing_agents=missing,
        reference=args.reference or ("psst" if "psst" in agents else agents[0]),
        specs=specs,
    )


# --------------------------------------------------------------------------- environments
#: Synthetic worlds kept per process, least recently used first out, within WORLD_CACHE_BYTES: every
#: cell of a task (each agent and budget) fits the same world for a seed, so it is drawn once per
#: (task, world seed) instead of once per cell (a quarter of a synthetic task's sweep time), and
#: the worlds keep their oracle caches and their stack (:mod:`iapo_gym.runs`) between cells.
_WORLDS: OrderedDict[tuple[str, int], Any] = OrderedDict()
WORLD_CACHE_BYTES = 2 << 30


def _table_nbytes(table: Any) -> int:
    names = ("cost", "answer_probs", "gold", "outcome_values", "outcome_probs")
    return sum(int(getattr(getattr(table, k, None), "nbytes", 0)) for k in names)


def world(task: str, seed: int) -> Any:
    """The synthetic world of ``task`` drawn from ``seed`` (``load_task_table``), cached per process."""
    from iapo_gym.tasks import load_task_table

    key = (str(task), int(seed))
    if key in _WORLDS:
        _WORLDS.move_to_end(key)
        return _WORLDS[key]
    table = load_task_table(task, world_seed=int(seed))
    _WORLDS[key] = table
    used = sum(_table_nbytes(t) for t in _WORLDS.values())
    while len(_WORLDS) > 1 and used > WORLD_CACHE_BYTES:
        _, old = _WORLDS.popitem(last=False)
        used -= _table_nbytes(old)
    return table


def release_world(env_id: str, seed: int) -> None:
    """Forget the cached world of run ``seed`` of ``env_id`` (a synthetic task's; no cell will need it again)."""
    import gymnasium as gym

    task = str((gym.spec(env_id).kwargs or {}).get("task", ""))
    _WORLDS.pop((task, int(seed)), None)


def env_factory(env_id: str, budget: int, contexts: str = "finite") -> Callable[[int], Any]:
    """``make_env(seed)``: the unwrapped env of run ``seed`` (its split, its world, its ledger).

    A synthetic task's world comes from the per-process cache (:func:`world`): the same table
    object for every cell of that seed, bit-identical to drawing it afresh.
    """
    import gymnasium as gym

    from iapo_gym.tasks import TASKS

    extra: dict[str, Any] = {} if contexts == "finite" else {"contexts": contexts}
    task = str((gym.spec(env_id).kwargs or {}).get("task", ""))
    info = TASKS.get(task)
    synthetic = info is not None and info.kind == "synthetic"

    def make_env(seed: int) -> Any:
        table = {"task": world(task, seed)} if synthetic else {}
        return gym.make(env_id, budget=int(budget), split_seed=int(seed), world_seed=int(seed), **extra, **table).unwrapped

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
    """``OUT/contexts.json`` (finite mode) or ``OUT/contexts.continuous.json`` (continuous mode).

    Continuous mode records the cost-weight bins of the evaluation sample; both modes can share one
    output directory.
    """
    return out / ("contexts.json" if mode == "finite" else f"contexts.{mode}.json")


# --------------------------------------------------------------------------- the run loop
class Runner:
    """Runs every (task, agent, budget) configuration of a plan in chunks of seeds, skipping finished runs."""

    def __init__(self, args: Args, plan: Plan, log: Callable[[str], None] = print) -> None:
        from iapo_gym.experiments.results import ResultsFile

        self.args, self.plan, self.log = args, plan, log
        self.results = ResultsFile(plan.out / "results.csv", repair=not args.analyse_only)
        if self.results.repaired:
            log(f"note: {self.results.path}: {self.results.repaired}")
        if self.results.duplicates:
            log(f"note: {self.results.path} holds {self.results.duplicates} duplicate run(s) (the same env, contexts, "
                "agent, budget and seed twice, e.g. from two processes before the output lock); each is counted once")
        self.specs = {s.label: s for s in plan.specs}
        self.records = {s.label: s.record() for s in plan.specs}  # the agent_config column
        from iapo_gym.experiments.executors import EvaluatorCache

        self.evaluators = EvaluatorCache()  # (env, seed) -> ExactEvaluator, bounded in bytes
        self.fits = 0  # fit_many calls made by this runner (a resumed, finished plan makes none)
        self.new_runs = 0  # runs recorded by this runner
        self.trackers: tuple[str, ...] = ()  # --tracker names (check_trackers), mirrored by the TensorBoard loggers
        self._best: dict[tuple[str, str, int], float] = {}  # --save-policies best: ACR of the kept policy
        self.skipped_envs: dict[str, str] = {}
        self.contexts: dict[str, dict[str, Any]] = {}

    def key(self, env: str, agent: str, budget: int, seed: int) -> tuple:
        """The results key (:data:`~iapo_gym.experiments.results.KEY` order) of one run."""
        return (env, self.args.contexts, agent, int(budget), int(seed))

    def todo(self, env: str, agent: str, budget: int) -> list[int]:
        """The plan's seeds of one configuration not recorded yet."""
        return [s for s in self.plan.seeds if not self.results.done(self.key(env, agent, budget, s))]

    def chunk_size(self, label: str) -> int:
        """Seeds per ``fit_many`` call: ``--chunk``, else 1 for agents fitting one seed at a time, else :data:`BATCH_CHUNK`."""
        if self.args.chunk > 0:
            return int(self.args.chunk)
        from iapo_gym.agents.base import Agent

        agent = self.specs[label].build()
        return 1 if type(agent).fit_many is Agent.fit_many else BATCH_CHUNK

    def chunks(self, env: str, label: str, budget: int) -> list[list[int]]:
        """The pending seeds of one configuration, in chunks aligned to the plan's seeds.

        A resumed experiment fits exactly the chunks an uninterrupted one would.
        """
        size, seeds = self.chunk_size(label), self.plan.seeds
        out = []
        for i in range(0, len(seeds), size):
            todo = [s for s in seeds[i:i + size] if not self.results.done(self.key(env, label, budget, s))]
            if todo:
                out.append(todo)
        return out

    def ordered(self, work: list[tuple[str, str, int, list[int]]]) -> list[tuple[str, str, int, list[int]]]:
        """The order the cells run in (rows are the same in any order).

        Finite contexts: configuration by configuration (the runs' evaluators are small and all kept).
        Continuous contexts: task by task, then block of seeds by block of seeds (a block is the
        largest chunk), every agent and budget of a block before the next, so each run's evaluator
        (16 MB on a best-of-N task) is used by all its cells while it is kept and the bounded cache
        (:class:`~iapo_gym.experiments.executors.EvaluatorCache`) never rebuilds one.
        """
        if self.args.contexts == "finite" or not work:
            return work
        block = max(self.chunk_size(label) for label in self.plan.agents)
        position = {s: i for i, s in enumerate(self.plan.seeds)}
        task = {e: i for i, e in enumerate(dict.fromkeys(e for e, *_ in work))}
        return sorted(work, key=lambda w: (task[w[0]], position[w[3][0]] // block))

    def check_recorded_configs(self) -> None:
        """Refuse to add runs under a label whose recorded runs used other hyper-parameters."""
        recorded: dict[str, str] = {}
        for r in self.results.rows:
            if r["agent"] in self.records and r.get("agent_config"):
                recorded.setdefault(r["agent"], r["agent_config"])
        for label, text in recorded.items():
            try:
                old = json.loads(text).get("config")
            except (ValueError, AttributeError):
                continue
            new = self.records[label]["config"]
            if old != new:
                keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
                raise ArgumentError(
                    f"{self.results.path} holds runs of agent {label!r} with other hyper-parameters ({diff}); "
                    f"name this variant (e.g. --agents {label}_v2={self.specs[label].target}) or use another --out"
                )

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
        """The exact evaluator of run ``seed`` (test split / world of that seed), cached (bounded in bytes)."""
        from iapo_gym.experiments.evaluate import ExactEvaluator
        from iapo_gym.experiments.executors import shares_table

        def build() -> Any:
            run_env = env if env is not None else env_factory(env_id, 0, self.args.contexts)(seed)
            return ExactEvaluator(run_env, self.args.contexts, shared_table=shares_table(env_id))

        return self.evaluators.get((env_id, int(seed)), build)

    def cell(self, env_id: str, agent_name: str, budget: int, seeds: Sequence[int]) -> Any:
        """The :class:`~iapo_gym.experiments.executors.Cell` of one chunk of seeds (runnable anywhere)."""
        from iapo_gym.experiments.executors import Cell, record_text

        agent = self.with_training_log(self.specs[agent_name].build(), env_id, agent_name, budget)
        return Cell(env_id, agent_name, agent, record_text(self.records[agent_name]), int(budget),
                    tuple(int(s) for s in seeds), self.args.contexts, self.args.threads, bool(self.args.save_policies))

    def run_config(self, env_id: str, agent_name: str, budget: int, seeds: list[int]) -> list[dict[str, Any]]:
        """Fit ``seeds`` as one batch here, evaluate exactly, append to results.csv; returns the new rows."""
        from iapo_gym.experiments.executors import LocalExecutor

        (result,) = LocalExecutor(self.evaluator).run([self.cell(env_id, agent_name, budget, seeds)])
        return self.consume(result)

    def consume(self, result: Any) -> list[dict[str, Any]]:
        """Record one finished cell: save its policies (``--save-policies``) and append its rows."""
        cell, rows = result.cell, result.rows
        env_id, agent_name, budget = cell.env_id, cell.label, cell.budget
        self.fits += 1
        keep = self.args.save_policies
        if keep == "all":
            for seed, policy in result.policies.items():
                self.save_policy(env_id, agent_name, cell.agent, budget, seed, policy, None)
        elif keep == "best" and result.policies:
            acr, seed = max((r["acr"], r["seed"]) for r in rows)
            if acr > self.best_saved(env_id, agent_name, budget):
                # the configuration's best so far (over every chunk and earlier invocations) replaces the old one
                folder = self.plan.out / "policies" / env_id / agent_name / f"T{int(budget)}"
                for old in folder.glob("seed*.json") if folder.exists() else []:
                    old.unlink()
                self.save_policy(env_id, agent_name, cell.agent, budget, seed, result.policies[seed], None)
                self._best[(env_id, agent_name, int(budget))] = acr
        self.results.append(rows)
        self.new_runs += len(rows)
        return rows

    def best_saved(self, env_id: str, agent_name: str, budget: int) -> float:
        """Test ACR of the policy ``--save-policies best`` keeps for one configuration (-inf if none)."""
        key = (env_id, agent_name, int(budget))
        if key not in self._best:
            folder = self.plan.out / "policies" / env_id / agent_name / f"T{int(budget)}"
            saved = {int(f.stem.removeprefix("seed")) for f in folder.glob("seed*.json")} if folder.exists() else set()
            acrs = [r["acr"] for r in self.rows_of(env_id, agent_name, budget) if r["seed"] in saved]
            self._best[key] = max(acrs, default=float("-inf"))
        return self._best[key]

    def save_policy(self, env_id: str, agent_name: str, agent: Any, budget: int, seed: int, policy: Any, env: Any) -> None:
        """Write one run's policy document (``--save-policies``) under ``OUT/policies``."""
        env = env if env is not None else env_factory(env_id, budget, self.args.contexts)(seed)
        path = self.plan.out / "policies" / env_id / agent_name / f"T{int(budget)}" / f"seed{int(seed)}.json"
        policy.save(path, env, agent=agent, agent_name=agent_name, budget=budget, seed=seed, overwrite=True)

    def with_training_log(self, agent: Any, env_id: str, agent_name: str, budget: int) -> Any:
        """``agent`` logging its own training under ``OUT/tb`` when tracking.

        Applies to agents with a ``log_dir`` field (e.g. the neural agent's loss and exploration
        statistics); other agents are returned unchanged.
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

    def complete(self, env: str, agent: str) -> dict[int, list[dict[str, Any]]]:
        """Budgets of the plan whose every seed is recorded -> their rows."""
        out = {}
        for b in self.plan.budgets:
            rows = self.rows_of(env, agent, b)
            if len(rows) == len(self.plan.seeds):
                out[b] = rows
        return out

    def release_evaluators(self, cell: Any, uses: Counter) -> None:
        """Count a finished cell against its runs; a run's evaluator and world are dropped after its last cell."""
        for seed in cell.seeds:
            uses[(cell.env_id, seed)] -= 1
            if uses[(cell.env_id, seed)] <= 0:
                self.evaluators.discard((cell.env_id, int(seed)))
                release_world(cell.env_id, int(seed))

    def run(self) -> None:
        """Every configuration of the plan (finished runs skipped), with the progress line and TensorBoard."""
        from iapo_gym.experiments.progress import Progress
        from iapo_gym.experiments.results import atomic_write_text

        plan = self.plan
        self.check_recorded_configs()
        envs = [e for e in plan.envs if self.check_env(e)]
        known = self.contexts_file()
        known.update(self.contexts)
        atomic_write_text(contexts_path(plan.out, self.args.contexts), json.dumps(known, indent=1))
        work = self.ordered([(e, a, b, c) for e in envs for a in plan.agents for b in plan.budgets
                             for c in self.chunks(e, a, b)])
        total = sum(len(c) for *_, c in work)
        self.log(
            f"{len(envs)} task(s) x {len(plan.agents)} agent(s) x {len(plan.budgets)} budget(s) x {len(plan.seeds)} runs: "
            f"{total} to run, {len(envs) * len(plan.agents) * len(plan.budgets) * len(plan.seeds) - total} already in "
            f"{plan.out / 'results.csv'}"
        )
        from iapo_gym.experiments.executors import make_executor

        n_chunks: dict[tuple, int] = {}
        for e, a, b, _ in work:
            n_chunks[(e, a, b)] = n_chunks.get((e, a, b), 0) + 1
        executor = make_executor(self.args.executor, self.args.ray_address, evaluator=self.evaluator,
                                 workers=self.args.workers)

        cells = [self.cell(e, a, b, c) for e, a, b, c in work]
        left = dict(n_chunks)  # chunks still to finish per (task, agent, budget)
        uses = Counter((e, s) for e, _, _, c in work for s in c)  # cells still to score each run
        configs = {(e, a) for e, a, _, _ in work}
        loggers: dict[tuple[str, str], Any] = {}
        if self.args.track:  # configurations with nothing to run still get their TensorBoard run (catch-up)
            for env_id in envs:
                for label in plan.agents:
                    if (env_id, label) not in configs:
                        logger = self.tb_logger(env_id, label)
                        logger.log_budgets(self.complete(env_id, label))
                        logger.close()
        try:
            with Progress(((a, b, len(c)) for _, a, b, c in work), enabled=self.args.progress) as bar:
                local = executor.name == "local"
                if cells:
                    bar.describe(self._describe(cells[0]) if local else f"{len(cells)} cells on {executor.name}")
                for done, result in enumerate(executor.run(cells), 1):
                    cell = result.cell
                    self.consume(result)
                    self.release_evaluators(cell, uses)
                    bar.advance(cell.label, cell.budget, len(cell.seeds), result.seconds)
                    left[(cell.env_id, cell.label, cell.budget)] -= 1
                    if self.args.track and left[(cell.env_id, cell.label, cell.budget)] == 0:
                        key = (cell.env_id, cell.label)
                        if key not in loggers:
                            loggers[key] = self.tb_logger(*key)
                        loggers[key].log_budgets(self.complete(*key))
                    if local and done < len(cells):
                        bar.describe(self._describe(cells[done]))
        finally:
            for logger in loggers.values():
                logger.close()
            executor.close()

    @staticmethod
    def _describe(cell: Any) -> str:
        task = cell.env_id.removeprefix("IAPO-").removesuffix("-v0")
        return f"{task} {cell.label} T={cell.budget} seeds {cell.seeds[0]}..{cell.seeds[-1]}"

    def tb_logger(self, env_id: str, label: str) -> Any:
        """The TensorBoard logger of one (task, agent) configuration (its stable run directory)."""
        from iapo_gym.experiments.tblog import ConfigLogger

        spec, record = self.specs[label], self.records[label]
        hparams = {"env": env_id, "agent": label, "agent.target": spec.target, "agent.source": spec.source,
                   "contexts": self.args.contexts, "runs": len(self.plan.seeds), "first_seed": self.plan.seeds[0]}
        hparams.update({f"agent.{k}": v for k, v in record["config"].items()})
        ctx = self.contexts[env_id]
        return ConfigLogger(self.plan.out / "tb", env_id, label, self.plan.seeds, ctx["names"], hparams,
                            contexts=self.args.contexts, n_prompts=ctx.get("n_prompts"), trackers=self.trackers)

    def contexts_file(self) -> dict[str, Any]:
        """The recorded contexts of every task of this output directory and mode."""
        path = contexts_path(self.plan.out, self.args.contexts)
        return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------- analysis
def selected_results(plan: Plan, args: Args) -> Any:
    """The recorded rows to analyse.

    Every run of the context mode in ``results.csv`` (so separate invocations accumulate), or only
    this plan's runs with ``--only-plan``.
    """
    from iapo_gym.experiments.results import Results, ResultsFile

    rows = [r for r in ResultsFile(plan.out / "results.csv", repair=False).rows if r["contexts"] == args.contexts]
    if args.only_plan:
        envs, agents, budgets, seeds = set(plan.envs), set(plan.agents), set(plan.budgets), set(plan.seeds)
        rows = [r for r in rows if r["env"] in envs and r["agent"] in agents and r["budget"] in budgets and r["seed"] in seeds]
    return Results.from_rows(rows)


def resolve_reference(args: Args, plan: Plan, recorded: Sequence[str]) -> str:
    """``--reference`` checked against this plan's agents and the recorded ones.

    The default is psst when it is run or recorded, else the plan's first agent.
    """
    if args.reference:
        if args.reference not in plan.agents and args.reference not in recorded:
            known = list(dict.fromkeys([*plan.agents, *recorded]))
            raise ArgumentError(
                f"--reference {args.reference!r} is not an agent of this experiment; pick one of {', '.join(known)}"
            )
        return args.reference
    return "psst" if "psst" in plan.agents or "psst" in recorded else plan.agents[0]


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
    recorded = res.unique("agent")
    reference = resolve_reference(args, plan, recorded)
    agents = [a for a in plan.agents if a in set(recorded)] + [a for a in recorded if a not in plan.agents]
    rows = stats.wilcoxon_table(res, reference=reference)
    written["wilcoxon_csv"] = atomic_write_text(plan.out / "wilcoxon.csv", stats.wilcoxon_csv(rows))
    written["wilcoxon_md"] = atomic_write_text(plan.out / "wilcoxon.md", stats.wilcoxon_markdown(rows))
    ctx_path = contexts_path(plan.out, args.contexts)
    contexts = json.loads(ctx_path.read_text()) if ctx_path.exists() else {}
    if args.plots:
        from iapo_gym.experiments.plots import plot_acr_vs_budget, plot_n_vs_cost, plot_regret_difference

        written["acr_plot"] = plot_acr_vs_budget(res, plan.figures / "acr_vs_budget.png", agents)
        if any(a != reference for a in agents) and reference in recorded:
            written["diff_plot"] = plot_regret_difference(res, plan.figures / "regret_diff.png", reference, agents)
        cost_w = {e: [w[-1] for w in c["weights"]] for e, c in contexts.items()}
        if any(e in cost_w for e in res.unique("env")):
            written["n_plot"] = plot_n_vs_cost(res, plan.figures / "n_vs_cost.png", cost_w, agents=agents,
                                               binned=args.contexts != "finite")
        if plan.report is not None:
            written.update(report_figures(res, plan, agents, reference, args.contexts))
    log(summary_table(res, agents, reference))
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
                reference=reference,
            ),
            plan.report,
        )
    return written


def report_figures(res: Any, plan: Plan, agents: Sequence[str], reference: str, contexts: str) -> dict[str, Path]:
    """The report's performance profiles and (finite contexts) Pareto view of every task's arms."""
    from iapo_gym.experiments.plots import plot_pareto, plot_performance_profiles
    from iapo_gym.tasks import TASKS, load_task_table, task_name

    written = {"profile_plot": plot_performance_profiles(res, plan.figures / "profiles.png", agents=agents)}
    if contexts != "finite":
        return written
    tables: dict[str, tuple[Any, list[int] | None]] = {}
    for env in res.unique("env"):
        first = int(res.seed[res.mask(env=env)].min())
        try:
            info = TASKS[task_name(env)]
        except KeyError:  # an env registered with gym directly: its first run's table, only that run marked
            tables[env] = (env_factory(env, int(res.budget.max()))(first).table, [first])
            continue
        if info.kind == "synthetic":  # a world per seed: draw the first run's and mark only its deployments
            tables[env] = (load_task_table(info.name, world_seed=first), [first])
        else:
            tables[env] = (load_task_table(info.name), None)
    shown = [a for a in dict.fromkeys([reference, "topk4", "psst_model"]) if a in agents] or list(agents[:3])
    budget = int(res.budget.max())
    written["pareto_plot"] = plot_pareto(res, tables, plan.figures / "pareto.png", budget, shown)
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
        return f"python train.py --preset {args.preset}" + (" --write-docs" if args.write_docs else "")
    defaults = Args()
    parts = ["python train.py"]
    for k, v in asdict(args).items():
        if v != getattr(defaults, k) and k not in ("progress", "threads", "chunk"):
            flag = "--" + k.replace("_", "-")
            text = str(v)
            if any(c in text for c in " ;'\"[]"):
                text = "'" + text.replace("'", "'\\''") + "'"
            parts.append(flag if v is True else f"--no-{flag[2:]}" if v is False else f"{flag} {text}")
    return " ".join(parts)


# --------------------------------------------------------------------------- entry point
def check_trackers(args: Args) -> tuple[str, ...]:
    """The ``--tracker`` names, each library imported now (a missing one stops before anything runs)."""
    from iapo_gym.experiments.tracking import TrackerError, parse_trackers, require

    try:
        names = parse_trackers(args.tracker)
        if names and not args.track:
            raise TrackerError("--tracker mirrors the TensorBoard scalars; drop --no-track to use it")
        for name in names:
            require(name)
    except TrackerError as exc:
        raise ArgumentError(str(exc)) from None
    return names


def run_experiment(
    args: Args | None = None, /, *, log: Callable[[str], None] = print, **options: Any
) -> tuple[Runner, dict[str, Path]]:
    """The experiment harness: validate, run (skipping finished runs) and analyse.

    ``train.py``'s command line and every report script (``scripts/*_report.py``) run experiments
    through this one function: the plan (tasks x agents x budgets x seeds), the cells of seeds fitted
    with ``Agent.fit_many``, the exact evaluation (:class:`~iapo_gym.experiments.evaluate.ExactEvaluator`,
    i.e. :func:`iapo_gym.oracle.acr`), ``results.csv`` (resumable), TensorBoard, the Wilcoxon
    tables, figures and report.

    Args:
        args: a full :class:`Args` (e.g. from :func:`parse_args`); None = the defaults.
        log: where progress notes and the summary table go.
        **options: ``Args`` fields overriding ``args`` (same names as the command line's options,
            e.g. ``env="IAPO-MATH-v0", agents="psst,topk4", budgets=[1000, 5000], runs=50,
            out="runs/x", contexts="continuous", track=False``; see :func:`make_args`).

    Returns:
        ``(runner, written)``: the :class:`Runner` (``runner.skipped_envs``, ``runner.new_runs``, ...)
        and the paths written (``results``, ``wilcoxon_csv``, figures, ``report``, ``tensorboard``).

    Raises :class:`ArgumentError` / :class:`ResultsError` (one line naming the fix) and
    :class:`Interrupted` when Ctrl-C stops the runs (everything finished is saved).
    """
    if options:
        base = {} if args is None else {k: v for k, v in asdict(args).items() if v != getattr(Args, k)}
        args = make_args(**{**base, **options})
    elif args is None:
        args = Args()
    from iapo_gym.experiments.results import OutputLock
    from iapo_gym.experiments.threads import limit_threads

    plan = make_plan(args)
    trackers = check_trackers(args)
    if args.write_docs and not Path("docs").is_dir():
        raise ArgumentError(
            "--write-docs writes the checkout's docs/ (REPRODUCTION.md, figures/); run it from the repository root"
        )
    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.missing_agents:
        log(f"note: agents not registered yet, left out: {', '.join(plan.missing_agents)}")
    with limit_threads(args.threads), OutputLock(plan.out):
        runner = Runner(args, plan, log)
        runner.trackers = trackers
        if args.reference:  # an unknown reference is an error before anything runs
            resolve_reference(args, plan, sorted({r["agent"] for r in runner.results.rows}))
        if not args.analyse_only:
            try:
                runner.run()
            except KeyboardInterrupt:
                raise Interrupted(plan.out, runner.new_runs) from None
        else:
            for env_id in plan.envs:  # record skipped tasks for the report
                runner.check_env(env_id)
        written = analyse(args, plan, runner.skipped_envs, log)
    if args.track and (plan.out / "tb").exists():
        written["tensorboard"] = plan.out / "tb"
    return runner, written


def _missing_table_message(exc: BaseException) -> str:
    from iapo_gym.tables.store import TableNotFoundError

    cur: BaseException | None = exc
    while cur is not None and not isinstance(cur, TableNotFoundError):
        cur = cur.__cause__ or cur.__context__
    return str(cur).splitlines()[0] + "; or pass --skip-missing to run the other tasks"


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a polite kill stops like Ctrl-C: finished chunks are kept


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one line on stderr for every expected failure, exit 2 (130 when interrupted)."""
    from iapo_gym.experiments.tracking import TrackerError

    args = parse_args(argv)
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        _, written = run_experiment(args)
    except (ArgumentError, ResultsError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"train.py: {exc}; run the same command again to resume (finished runs are skipped)", file=sys.stderr)
        return 130
    except TrackerError as exc:  # a tracker failed mid-run: finished runs are saved in results.csv
        print(f"train.py: error: {exc}; finished runs are saved, run again to resume", file=sys.stderr)
        return 2
    except Exception as exc:
        if is_missing_table(exc):
            print(f"train.py: error: {_missing_table_message(exc)}", file=sys.stderr)
            return 2
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    print(f"\nfinished in {time.perf_counter() - t0:.1f} s; wrote:")
    for name, path in written.items():
        print(f"  {name:<14} {path}")
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
