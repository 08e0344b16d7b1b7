"""Throughput of the agent zoo, this engine against a previous one, interleaved in one run.

Run::

    git worktree add /tmp/old-engine <previous commit>
    python benchmarks/bench_agents.py --old /tmp/old-engine [--seeds 200] [--agents psst,topk4,...]
    git clone https://github.com/IAPO-AAAI25/IAPO-PSST /tmp/IAPO-PSST  # the authors' code, to time it too
    python benchmarks/bench_agents.py --old /tmp/old-engine --authors-repo /tmp/IAPO-PSST --tasks MATH

For every task (MATH -- the paper's released table from the data directory, skipped when absent:
``iapo-gym data import MATH_final.pkl`` -- and Synth-Categorical), agent and budget it fits
``--seeds`` runs as vectorised batches (``Agent.fit_many``; MATH: one shared table with per-seed
80/20 splits; synthetic tasks: one world per seed, built before timing) in two worker processes,
one per engine (``--old`` checkout and this one), **alternating** old and new for each repeat so
that both see the same machine load. Each agent is timed in new worker processes (as pyperf
runs each benchmark in new processes), so its reading does not depend on the agents listed before
it: in one long-lived process psst_model at T = 5,000 read 2,600-2,800 runs/s when timed first and
2,200-2,300 after Top-K-Paired. ``--shared-workers`` keeps one process per engine. A process's first
full batch is slower than the next ones (psst_model: 0.50-0.54 ms per run, then 0.34-0.37, even after
a full-budget warm-up on two seeds: the allocator's state, not compilation), which the best of
``--repeats`` (3 or more) leaves out; and two processes of the same code differ by up to 15 % on a
cell, so a ``new/old`` below 0.95 is rerun before it is believed. A timing lasts at least
``--min-time`` (0.2 s): a batch faster than that (the no-op agents' batches take tens of
microseconds) is repeated back to back, each time on new envs, up to ``--max-batches`` times
(:func:`batches_for`). It prints runs per second (best of ``--repeats``: the least disturbed by
other load), the new/old ratio and, for MATH, the speed-up over the paper authors' per-run time
(``x authors``) with the reference it used (``ref``):

* ``measured``: the authors' own code for the same agent, timed in this run on this machine,
  interleaved with ours (``--authors-repo``, below). The fairest reference: the same machine and
  load for both sides, which fixed numbers from another machine are not.
* ``fixed``: the authors' own time for the same agent, a fixed number measured outside this
  benchmark on another machine. Built in: their PSST on MATH, 0.45 s per run at T = 5,000 and
  3.8 s at T = 50,000 (timed on their released code). Our side of every ratio is always measured
  in this run.
* ``file``: a time of the authors' for this agent given with ``--authors-times FILE`` (JSON
  ``{"ucb": {"5000": 2.0, "50000": 21.9}, ...}``), measured elsewhere by whoever wrote the file.
* ``PSST-ref``: no code of the authors' for this agent (Sequential Halving, the paired and model
  agents), so their PSST time is applied to it (measured in this run when ``--authors-repo`` is
  given and ``psst`` comes first in ``--agents``, else the fixed number): printed only to compare
  agents with one yardstick.
* ``Random``: the row ``python_floor`` is not an agent but the least work any ``fit_many`` can do
  through its API in this harness (``make_env`` once per seed, one new object per run, appended
  to a list), timed like an agent and compared with the authors' Random (``measured`` when
  ``random`` comes before it in ``--agents``). It bounds what a no-op agent's speed-up over their
  no-op agent can be: Random's ``x authors`` cannot exceed this row's.

``--authors-repo PATH`` takes a checkout of the authors' code (``git clone
https://github.com/IAPO-AAAI25/IAPO-PSST``; it is never part of this package) and times their
agents in a third worker process, on their own environment class and their released MATH table
(``PATH/data/MATH_final.pkl``, or ``--authors-pkl``), exactly as their ``example_runner.py`` drives
them: a fresh copy of the environment per run, ``combine_and_resplit(0.8, seed)``, their global
``random`` / ``np.random`` seeded with the run's seed, then ``agent.train(env, budget)``, whose CPU
(or wall) time per run is the reference (their ``print`` silenced). Their agents are built with
the paper's hyper-parameters, which ours use (UCB ``c = 0.1``, epsilon-greedy ``0.15``, Softmax
``tau = 0.05``, Top-K ``burn = 0.2``), so both sides take about the same number of steps. A timing
of theirs is at least ``--authors-runs`` (default 2) runs, and more (up to ``--authors-max-runs``)
until it lasts ``--min-time``, as ours: their agents take seconds per run, but their Random takes
0.4-0.7 ms, and the best of a few two-run timings of it was the luckiest millisecond. The best of
``--repeats`` timings is kept, as for ours; their worker is renewed with ours for every agent
(unless ``--shared-workers``).

``--processes K`` measures every agent in K rounds of new worker processes (ours and theirs) and
keeps the best reading over all rounds. On this machine the same code in two processes can differ
by 1.8x on the no-op rows (Random's 200 runs: 0.29 and 0.54 us per run, stable within each
process; the memory it lands in, not the code), which the best of repeats in one process cannot
see: use 3 or more rounds for Random and python_floor.

A ``new/old`` ratio below 0.95 is flagged with ``!``.

Env construction is not timed. Without ``--old`` only this engine is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The authors' per-run times on MATH (seconds) for (agent, budget): their PSST, measured on their
#: released code outside this benchmark (fixed numbers).
AUTHORS_S: dict[tuple[str, int], float] = {("psst", 5_000): 0.45, ("psst", 50_000): 3.8}


#: Our agent name -> (the authors' module, class, keyword arguments): their code for the same agent,
#: with the paper's hyper-parameters (which ours use). Agents absent here have no code of theirs.
AUTHORS_AGENTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "psst": ("Agents.PSST", "PSSTAgent", {}),
    "topk1": ("Agents.PSST_HB", "PSSTHAgent", {"burn": 0.2, "K": 1}),
    "topk4": ("Agents.PSST_HB", "PSSTHAgent", {"burn": 0.2, "K": 4}),
    "topk8": ("Agents.PSST_HB", "PSSTHAgent", {"burn": 0.2, "K": 8}),
    "uniform": ("Agents.Uniform", "UniformAgent", {}),
    "triple_n1": ("Agents.TRIPLE", "TRAgent", {"h": "one"}),
    "triple_nrandom": ("Agents.TRIPLE", "TRAgent", {"h": "random"}),
    "ucb": ("Agents.UCB", "UCBAgent", {"ucb_c": 0.1}),
    "egreedy": ("Agents.adaptiv_sampling", "AdaptiveAgent", {"action_mode": "epsilon", "epsilon": 0.15}),
    "softmax": ("Agents.adaptiv_sampling", "AdaptiveAgent", {"action_mode": "softmax", "tau": 0.05}),
    "random": ("Agents.random_agent", "RandomAgent", {}),
}


def reference(
    agent: str,
    budget: int,
    files: dict[tuple[str, int], float],
    timed: dict[tuple[str, int], float] | None = None,
) -> tuple[float | None, str]:
    """The authors' per-run seconds to compare ``agent`` at ``budget`` with, and its label.

    ``timed``: their times measured in this run (``--authors-repo``); ``files``: ``--authors-times``.
    """
    timed = timed or {}
    if agent == "python_floor":  # the bound on a no-op agent: compared with the authors' no-op agent
        if ("random", budget) in timed:
            return timed[("random", budget)], "Random"
        return None, "-"
    if (agent, budget) in timed:
        return timed[(agent, budget)], "measured"
    if (agent, budget) in files:
        return files[(agent, budget)], "file"
    if (agent, budget) in AUTHORS_S:
        return AUTHORS_S[(agent, budget)], "fixed"
    if ("psst", budget) in timed:
        return timed[("psst", budget)], "PSST-ref"
    if ("psst", budget) in AUTHORS_S:
        return AUTHORS_S[("psst", budget)], "PSST-ref"
    return None, "-"


def load_authors_times(path: str | None) -> dict[tuple[str, int], float]:
    """``--authors-times``: ``{agent: {budget: seconds per run}}`` -> ``{(agent, budget): seconds}``."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    return {(str(a), int(b)): float(t) for a, times in data.items() for b, t in times.items()}


def load_engine(root: Path) -> None:
    """Import ``iapo_gym`` (with its ``agents`` / ``envs_data`` folders) from the checkout ``root``."""
    import importlib.abc
    import importlib.util

    root = root.resolve()

    class Folders(importlib.abc.MetaPathFinder):
        """Map ``iapo_gym.agents`` / ``iapo_gym.envs_data`` to the checkout's top-level folders."""

        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            for sub in ("agents", "envs_data"):
                if name == f"iapo_gym.{sub}" and (root / sub / "__init__.py").exists():
                    return importlib.util.spec_from_file_location(
                        name, root / sub / "__init__.py", submodule_search_locations=[str(root / sub)]
                    )
            return None

    sys.meta_path[:] = [Folders()] + [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, str(root))
    import iapo_gym

    if not Path(iapo_gym.__file__).resolve().is_relative_to(root):
        raise SystemExit(f"could not import iapo_gym from {root} (got {iapo_gym.__file__})")


class _Seeded:
    """The least a policy can be: one object per run holding its seed (``python_floor`` below)."""

    __slots__ = ("seed",)


def python_floor(make_env: Any, seeds: Sequence[int]) -> list[_Seeded]:
    """The least work any ``fit_many`` does in Python: ``make_env`` once per seed, one new object per run.

    No agent can return its runs' policies faster through the ``fit_many(make_env, budget, seeds)``
    API, so this row bounds a no-op agent's speed-up (Random's) over the authors' in this harness.
    """
    out = []
    append, new = out.append, object.__new__
    for seed in seeds:
        make_env(seed)
        policy = new(_Seeded)
        policy.seed = seed
        append(policy)
    return out


def worker(root: str) -> None:
    """Serve timing requests (one JSON line each) on stdin; answer one JSON line each on stdout."""
    load_engine(Path(root))
    import numpy as np

    from iapo_gym.agents import make_agent
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tasks import load_task_table

    tables: dict[tuple[str, int], Any] = {}

    def new_env(task: str, seed: int) -> Any:
        """A new env for run ``seed``: every timed run starts on an env no earlier run touched, as one batch does."""
        if task == "MATH":  # one shared table, a split per seed
            if (task, 0) not in tables:
                tables[(task, 0)] = load_task_table("MATH")
            return IAPOEnv(tables[(task, 0)], split_seed=seed)
        if (task, seed) not in tables:  # a world per seed
            tables[(task, seed)] = load_task_table(task, world_seed=seed)
        return IAPOEnv(tables[(task, seed)], world_seed=seed)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        task, seeds, batches = req["task"], list(range(int(req["seeds"]))), max(1, int(req.get("batches", 1)))

        try:  # built before timing: env construction is not timed
            runs = [[new_env(task, s) for s in seeds] for _ in range(batches)]
        except Exception as exc:  # the task's data is absent here
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        if req["agent"] == "python_floor":
            python_floor(lambda s, envs=runs[0]: envs[s], seeds[:1])  # the same warm-up as an agent's
            t0, c0 = time.perf_counter(), time.process_time()
            for envs in runs:
                floor = python_floor(lambda s, envs=envs: envs[s], seeds)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert [p.seed for p in floor] == seeds
            n = batches * len(seeds)
            print(json.dumps({"wall": wall / n, "cpu": cpu / n, "used": 0.0, "batch_cpu": cpu / batches}), flush=True)
            continue
        agent = make_agent(req["agent"])
        if req.get("warmup"):
            agent.fit_many([new_env(task, 0)].__getitem__, 500, [0])
        t0, c0 = time.perf_counter(), time.process_time()
        for envs in runs:
            policies = agent.fit_many(lambda s, envs=envs: envs[s], int(req["budget"]), seeds)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        used = float(np.mean([p.budget_used for p in policies]))
        n = batches * len(seeds)
        envs_used = len({id(env) for envs in runs for env in envs})  # one new env per run of every batch
        answer = {"wall": wall / n, "cpu": cpu / n, "used": used, "batch_cpu": cpu / batches, "envs": envs_used}
        print(json.dumps(answer), flush=True)


def authors_worker(repo: str, pkl: str | None) -> None:
    """Serve timing requests for the authors' code in the checkout ``repo`` (one JSON line in, one out).

    A request ``{agent, budget, runs[, min_time, max_runs, clock]}`` times at least ``runs`` runs
    (seeds ``0, 1, ...``) of their agent on MATH as their ``example_runner.py`` drives it, and more
    (up to ``max_runs``) until the timed ``clock`` seconds reach ``min_time``, as ours are timed
    (:func:`batches_for`): their Random takes well under a millisecond, and the best of a few
    two-run timings is a lottery won by the luckiest millisecond. The answer is the mean wall and
    CPU seconds of ``agent.train`` per run and ``runs``, the runs timed, or ``{"error": ...}`` for an
    agent they do not have.
    """
    import contextlib
    import copy
    import importlib
    import io
    import pickle
    import random

    import numpy as np

    root = Path(repo).resolve()
    sys.path.insert(0, str(root))
    with open(pkl or root / "data" / "MATH_final.pkl", "rb") as fh:
        loaded = pickle.load(fh)  # noqa: S301 (the authors' released table, opened on purpose)
    base = loaded[0] if isinstance(loaded, list) else loaded
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["agent"] not in AUTHORS_AGENTS:
            print(json.dumps({"error": f"no code of the authors' for {req['agent']}"}), flush=True)
            continue
        module, cls, kwargs = AUTHORS_AGENTS[req["agent"]]
        make = getattr(importlib.import_module(module), cls)
        wall = cpu = 0.0
        least, most = max(1, int(req["runs"])), max(1, int(req.get("max_runs", req["runs"])))
        min_time, clock = float(req.get("min_time", 0.0)), str(req.get("clock", "cpu"))
        seed = 0
        while seed < least or (seed < most and (cpu if clock == "cpu" else wall) < min_time):
            env = copy.deepcopy(base)
            env.combine_and_resplit(train_frac=0.8, seed=seed)
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002 (their agents draw from the global generators)
            agent = make(strategy="mv", **kwargs)
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):  # they print their spend
                agent.train(env, int(req["budget"]))
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            seed += 1
        print(json.dumps({"wall": wall / seed, "cpu": cpu / seed, "runs": seed}), flush=True)


class Worker:
    """A worker process for one engine checkout (``mode="--worker"``) or the authors' code (``"--authors-worker"``)."""

    def __init__(self, root: Path, mode: str = "--worker", extra: Sequence[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, mode, str(root), *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert json.loads(self.ask_line())["ready"]

    def ask_line(self) -> str:
        """The worker's next answer line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("a benchmark worker died (see its error above)")
        return line

    def ask(self, **req: Any) -> dict[str, Any]:
        """Send one request, return its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.ask_line()))

    def close(self) -> None:
        """End the worker (it exits when its stdin closes)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def batches_for(batch_s: float, min_time: float, max_batches: int) -> int:
    """Batches per timing so that a timing lasts ``min_time`` seconds at ``batch_s`` per batch (1 to ``max_batches``).

    A batch of a no-op agent takes tens of microseconds: timed alone, right after its worker has
    waited for the other engine, it is dominated by cold caches (Random's 200 runs took 2.5 times
    their back-to-back time). Like ``timeit``'s autorange (whose target, 0.2 s, is ``--min-time``'s
    default), the batch is repeated back to back (each on its own envs) until the timing is long
    enough; a batch of seconds is timed once.
    """
    if batch_s <= 0.0:
        return max_batches
    return max(1, min(max_batches, math.ceil(min_time / batch_s)))


def measure(
    engines: dict[str, Worker], authors: Worker | None, task: str, name: str, budget: int, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """One cell: the best timing of each engine and (with ``authors``) the authors' best per-run time, interleaved."""
    best: dict[str, dict[str, Any]] = {}
    batches = dict.fromkeys(engines, 1)
    theirs: float | None = None
    for rep in range(max(1, args.repeats)):
        for key, w in engines.items():
            r = w.ask(task=task, agent=name, budget=budget, seeds=args.seeds, warmup=rep == 0, batches=batches[key])
            if "error" in r:
                best[key] = r
                continue
            if key not in best or r[args.clock] < best[key][args.clock]:
                best[key] = r
            batches[key] = batches_for(float(r["batch_cpu"]), args.min_time, args.max_batches)
        if authors is not None and name in AUTHORS_AGENTS:
            answer = authors.ask(
                agent=name,
                budget=budget,
                runs=args.authors_runs,
                min_time=args.min_time,
                max_runs=args.authors_max_runs,
                clock=args.clock,
            )
            t = float(answer[args.clock])
            theirs = t if theirs is None else min(theirs, t)
    return best, theirs


def start_engines(args: argparse.Namespace) -> dict[str, Worker]:
    """New worker processes: this engine (``new``) and, with ``--old``, the previous one (``old``) first."""
    engines = {"new": Worker(REPO)}
    if args.old:
        engines = {"old": Worker(Path(args.old)), **engines}
    return engines


def start_authors(args: argparse.Namespace) -> Worker | None:
    """A new worker process for the authors' code (``--authors-repo``), or None."""
    if not args.authors_repo:
        return None
    return Worker(Path(args.authors_repo), "--authors-worker", [args.authors_pkl] if args.authors_pkl else [])


def merge_best(
    best: dict[str, dict[str, Any]], theirs: float | None, new: tuple[dict[str, dict[str, Any]], float | None], clock: str
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """The best readings of two rounds of processes (``measure``'s answers): per engine, and the authors' least time."""
    out = dict(best)
    for key, r in new[0].items():
        if key not in out or "error" in r or ("error" not in out[key] and r[clock] < out[key][clock]):
            out[key] = r
    times = [t for t in (theirs, new[1]) if t is not None]
    return out, (min(times) if times else None)


def format_row(
    name: str, budget: int, best: dict[str, dict[str, Any]], ref: tuple[float | None, str], clock: str, ref_column: bool
) -> str:
    """One printed cell: each engine's runs/s, new/old (``!`` below 0.95), the spend, ``x authors`` and its reference."""
    if any("error" in r for r in best.values()):
        return f"{name:>15} {budget:>7} skipped: {next(r['error'] for r in best.values() if 'error' in r)}"
    rates = {k: 1.0 / r[clock] for k, r in best.items()}
    ratio = "       -"
    if "old" in rates:
        flag = "!" if rates["new"] / rates["old"] < 0.95 else " "
        ratio = f"{rates['new'] / rates['old']:7.2f}{flag}"
    seconds, label = ref
    xref = f"{seconds * rates['new']:10.0f}" if seconds else "         -"
    row = f"{name:>15} {budget:>7}" + "".join(f" {rates[k]:10.1f}" for k in best)
    sref = f" {seconds:9.4g}" if ref_column and seconds else ""
    return f"{row} {ratio} {best['new']['used']:7.0f} {xref} {label:>8}{sref}"


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One line naming the argument and the fix for a value the benchmark cannot use."""
    if args.authors_repo and not (Path(args.authors_repo) / "Agents" / "PSST.py").exists():
        parser.error(f"--authors-repo {args.authors_repo}: no Agents/PSST.py there; give a checkout of IAPO-AAAI25/IAPO-PSST")
    if not args.min_time > 0:
        parser.error(f"--min-time must be positive seconds; got {args.min_time}")
    if args.max_batches < 1:
        parser.error(f"--max-batches must be at least 1; got {args.max_batches}")
    if args.authors_runs < 1:
        parser.error(f"--authors-runs must be at least 1; got {args.authors_runs}")
    if args.authors_max_runs < args.authors_runs:
        parser.error(f"--authors-max-runs must be at least --authors-runs ({args.authors_runs}); got {args.authors_max_runs}")
    if args.processes < 1:
        parser.error(f"--processes must be at least 1; got {args.processes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--old", help="a checkout of the previous engine (git worktree add /tmp/old-engine <commit>)")
    parser.add_argument("--seeds", type=int, default=200, help="runs per batch")
    parser.add_argument(
        "--agents",
        default="psst,topk1,topk4,topk8,uniform,triple_n1,triple_nrandom,seqhalving,psst_paired,topk_paired,psst_model,"
        "ucb,egreedy,softmax,random,python_floor",
        help="comma-separated agent names (SB3 agents are per-seed and slow; add them explicitly); python_floor: "
        "not an agent, the least any fit_many can do (make_env per seed, one object per run), compared with "
        "the authors' Random",
    )
    parser.add_argument("--budgets", default="5000,50000", help="comma-separated budgets in completions")
    parser.add_argument("--tasks", default="MATH,SynthCategorical", help="comma-separated tasks")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per configuration and engine (best is reported)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.2,
        help="seconds a timing should last (timeit's autorange target): a faster batch is repeated back to "
        "back, each on its own envs, up to --max-batches times (default 0.2)",
    )
    parser.add_argument("--max-batches", type=int, default=100, help="most batches in one timing (default 100)")
    parser.add_argument(
        "--shared-workers",
        action="store_true",
        help="time every agent in the same engine processes (faster to run; an agent's reading then depends on "
        "the agents timed before it in that process, by up to 25 %%); default: new processes for each agent",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time per run: process CPU time (default; every agent is single-threaded, and CPU time is far "
        "less disturbed by other load on a shared machine) or wall time",
    )
    parser.add_argument("--authors-times", help="JSON {agent: {budget: s per run}} of the authors' code, timed elsewhere")
    parser.add_argument(
        "--authors-repo",
        help="a checkout of the authors' code (git clone https://github.com/IAPO-AAAI25/IAPO-PSST): time their "
        "agents on MATH in this run, interleaved with ours",
    )
    parser.add_argument("--authors-pkl", help="their MATH table (default: AUTHORS_REPO/data/MATH_final.pkl)")
    parser.add_argument(
        "--authors-runs", type=int, default=2, help="least runs of the authors' code per timing (seconds each)"
    )
    parser.add_argument(
        "--authors-max-runs",
        type=int,
        default=1000,
        help="most runs of the authors' code per timing: faster runs are added until the timing lasts --min-time",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="rounds of new worker processes per agent (the authors' too), each timing --repeats times; the best "
        "reading over all is kept. Processes of the same code differ by up to 1.8x on a no-op agent here "
        "(memory placement): use 3 or more for Random and python_floor",
    )
    parser.add_argument("--authors-worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(args.worker)
        return
    if args.authors_worker:
        authors_worker(args.authors_worker, rest[0] if rest else None)
        return
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    check_args(parser, args)
    engines = start_engines(args)
    authors = start_authors(args)
    budgets = [int(b) for b in args.budgets.split(",")]
    measured = load_authors_times(args.authors_times)
    timed: dict[tuple[str, int], float] = {}
    used = False  # whether the engine processes have timed an agent yet
    try:
        for task in args.tasks.split(","):
            rounds = f" in each of {args.processes} rounds of new processes" if args.processes > 1 else ""
            print(
                f"\n{task}: {args.seeds} seeds per batch, best of {args.repeats}{rounds}, engines interleaved, "
                f"{args.clock} time"
            )
            head = f"{'agent':>15} {'T':>7}" + "".join(f" {k + ' r/s':>10}" for k in engines)
            head += f" {'new/old':>8} {'used':>7} {'x authors':>10} {'ref':>8}"
            head += f" {'ref s/run':>9}" if authors is not None else ""
            print(head)
            for name in args.agents.split(","):
                cells: dict[int, tuple[dict[str, dict[str, Any]], float | None]] = {b: ({}, None) for b in budgets}
                for _ in range(args.processes):
                    if used and not args.shared_workers:  # every agent in new processes (pyperf's practice)
                        for w in engines.values():
                            w.close()
                        engines = start_engines(args)
                        if authors is not None and task == "MATH":  # theirs too, where they are timed
                            authors.close()
                            authors = start_authors(args)
                    used = True
                    for budget in budgets:
                        taken = measure(engines, authors if task == "MATH" else None, task, name, budget, args)
                        cells[budget] = merge_best(*cells[budget], taken, args.clock)
                for budget in budgets:
                    best, theirs = cells[budget]
                    if theirs is not None:
                        timed[(name, budget)] = theirs
                    ref, label = reference(name, budget, measured, timed) if task == "MATH" else (None, "-")
                    print(format_row(name, budget, best, (ref, label), args.clock, authors is not None), flush=True)
        print(
            "\nref (ours is always measured in this run): measured = the authors' code for this agent, timed in this "
            "run (--authors-repo); fixed = the authors' own per-run time for this agent, a fixed number measured "
            "outside this benchmark on another machine (PSST on MATH: 0.45 s at T=5,000, 3.8 s at T=50,000); "
            "file = --authors-times; PSST-ref = the authors' PSST time (measured in this run if it was) applied to "
            "another agent (no code of theirs for it); Random = the authors' Random time, for python_floor (not an "
            "agent: make_env per seed and one new object per run, the least any fit_many does); ! = new/old below 0.95"
        )
    finally:
        for w in [*engines.values(), *([authors] if authors is not None else [])]:
            w.close()


if __name__ == "__main__":
    main()
