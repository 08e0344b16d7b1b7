"""Pinned policy fingerprints: every batch agent decides as the engine of commit 05a16dd did.

One module, one format for all pins. ``tests/test_policy_pins.py`` refits every case below and
compares each seed's fingerprint with ``tests/data/policy_pins.json``; a failure names the case.

Two sets of cases share the format:

* ``ZOO_CASES``: every batch agent of the zoo (the SB3 agents are per-seed and slow, neural needs
  torch) on small tasks of both strategies and of one and many contexts (Synth-Bernoulli, MV;
  Synth-Categorical, BoN with 27 contexts; SmolArith, the shipped MV table), two budgets each (one
  below PSST's first-round threshold, one above), seeds 0, 1, 7 fitted as one batch;
* ``SEQUENTIAL_CASES``: UCB, epsilon-greedy, Softmax (also with non-default hyper-parameters),
  Uniform and TRIPLE on MATH (the released table; skipped when the data is absent) and the
  synthetic tasks, seeds 0-5, at budgets that cover the feasibility endgame (every run ends with
  less than N_max left), budgets below one sweep over prompts (Uniform's random top-up) and several
  TRIPLE rounds.

A fingerprint is 16 hex digits of the SHA-256 of what a fitted policy decides and reports: its arm
distribution per context of its env (``arm_probs``), its ``budget_used`` and its ``info`` (spend
per round, survivors, deployed means, ...; floats exactly), so any change of a decision, a
tie-break or a single bit of a deployed mean changes it.

The pins equal the policies of the engine of commit 05a16dd (before the round loop, the PSST
kernel and the sequential agents were rewritten) for every agent but ``psst_model``, whose
decisions changed on purpose at commit 34f8969 (its rounds deepen only while they keep
``min_queries`` common queries), again with its confident drop and shrinkage across prompts
(``drop_z``, ``shrink``), on Best-of-N tables with its empirical-Bayes estimates (``bon_eb``) and on
binary answers with its deeper rounds (``eb_m``), on Best-of-N tables with its near-tie drop
before the last round (``final_drop_z``), on binary-answer and Best-of-N tables with its
deployment of the best estimate plus one standard error (``deploy_z``), and on majority-voting
tables without the confident drop (``drop_z`` resolves to 0 there; only Synth-Bernoulli's cases
changed), and on binary-answer tables with the penalty of the train split's sampling error at
deployment (``query_z``; only Synth-Bernoulli's cases changed). Check another engine against them,
or rewrite them (only when a decision is meant to change, and say why in the commit)::

    git archive 05a16dd | tar -x -C /tmp/pin-engine
    python tests/policy_pins.py --root /tmp/pin-engine --check   # lists the cases that differ
    python tests/policy_pins.py --write                          # rewrites tests/data/policy_pins.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
PINS = HERE / "data" / "policy_pins.json"
MATH_PICKLE = HERE.parents[1] / "shared" / "data" / "published" / "MATH_final.pkl"


class Case(NamedTuple):
    """One pinned configuration: its seeds are fitted as one ``fit_many`` batch."""

    task: str
    agent: str
    kwargs: dict[str, Any]
    budget: int
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        """The JSON key (and test id) of the case."""
        args = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.task}/{self.agent}({args})/T={self.budget}"


#: Every batch agent of the zoo (``iapo_gym.agents.AGENTS`` less these).
UNPINNED = frozenset({"neural", "ppo", "a2c", "dqn", "maskable_ppo"})
ZOO_AGENTS = (
    "psst", "topk1", "topk4", "topk8", "seqhalving", "psst_paired", "topk_paired", "psst_grid", "psst_model",
    "uniform", "triple_n1", "triple_nrandom", "ucb", "egreedy", "softmax", "random",
)  # fmt: skip
ZOO_CASES = [
    Case(task, agent, {}, budget, (0, 1, 7))
    for task, budget in (
        ("SynthBernoulli", 1_500),
        ("SynthBernoulli", 12_000),
        ("SynthCategorical", 1_500),
        ("SynthCategorical", 12_000),
        ("SmolArith", 400),
        ("SmolArith", 3_000),
    )
    for agent in ZOO_AGENTS
]
SEQUENTIAL_CASES = [
    Case(task, agent, kwargs, budget, (0, 1, 2, 3, 4, 5))
    for task in ("MATH", "SynthBernoulli", "SynthCategorical")
    for agent, kwargs, budgets in (
        ("ucb", {}, (300, 2500)),
        ("ucb", {"c": 2.0, "lcb": 0.5}, (1200,)),
        ("egreedy", {}, (300, 2500)),
        ("softmax", {}, (300, 2500)),
        ("softmax", {"tau": 0.5, "lcb": 1.0}, (1200,)),
        ("uniform", {}, (500, 3000)),
        ("triple_n1", {}, (700, 3000)),
        ("triple_nrandom", {}, (3000,)),
    )
    for budget in budgets
]
CASES = ZOO_CASES + SEQUENTIAL_CASES


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return repr(x)


def fingerprint(policy: Any, weights: np.ndarray, n_arms: int) -> str:
    """16 hex digits of SHA-256 over a policy's arm distribution on ``weights``, ``budget_used`` and ``info``."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(policy.arm_probs(weights, n_arms), dtype=np.float64).tobytes())
    h.update(str(int(policy.budget_used)).encode())
    h.update(json.dumps(policy.info, sort_keys=True, default=_json_default).encode())
    return h.hexdigest()[:16]


@cache
def load_math() -> Any:
    """The released MATH table (None when the data directory is absent)."""
    if not MATH_PICKLE.exists():
        return None
    from iapo_gym.tables.importer import import_released

    return import_released(MATH_PICKLE)


@cache
def _table(task: str, seed: int | None) -> Any:
    from iapo_gym.tasks import load_task_table

    return load_task_table(task, world_seed=seed)


def make_envs(task: str) -> Callable[[int], Any]:
    """``make_env(seed)`` of a task: split ``seed``; synthetic tasks also draw world ``seed``; MATH is the released table."""
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tasks import TASKS

    if task == "MATH":
        table = load_math()
        if table is None:
            raise FileNotFoundError(f"the released MATH table is absent ({MATH_PICKLE})")
        return lambda s: IAPOEnv(table, split_seed=s)
    if TASKS[task].kind == "synthetic":
        return lambda s: IAPOEnv(_table(task, s), split_seed=s, world_seed=s)
    return lambda s: IAPOEnv(_table(task, None), split_seed=s)


def compute(case: Case, **fit_kwargs: Any) -> dict[str, str]:
    """``{str(seed): fingerprint}`` of the case's seeds, fitted as one batch (``fit_kwargs`` go to ``fit_many``)."""
    from iapo_gym.agents import make_agent

    make_env = make_envs(case.task)
    policies = make_agent(case.agent, **case.kwargs).fit_many(make_env, case.budget, list(case.seeds), **fit_kwargs)
    out = {}
    for seed, policy in zip(case.seeds, policies, strict=True):
        env = make_env(seed)
        out[str(seed)] = fingerprint(policy, env.contexts.weights, env.n_prompts * env.n_max)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="checkout of the engine to fingerprint (default: the importable iapo_gym)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--check", action="store_true", help="compare with the pins; list the cases that differ")
    what.add_argument("--write", action="store_true", help="rewrite the pins")
    parser.add_argument("--pins", type=Path, default=PINS, help="the pins file (JSON)")
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, str(HERE.parent / "benchmarks"))
        from bench_agents import load_engine

        load_engine(args.root)
    if load_math() is None:
        raise SystemExit(f"the MATH table is not at {MATH_PICKLE}; the pins need it")
    assert len({c.key for c in CASES}) == len(CASES), "two cases share a key"
    pins = {case.key: compute(case) for case in CASES}
    if args.write:
        args.pins.parent.mkdir(parents=True, exist_ok=True)
        args.pins.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(pins)} cases to {args.pins}")
        return 0
    pinned = json.loads(args.pins.read_text())
    differ = sorted(k for k in pins.keys() | pinned.keys() if pins.get(k) != pinned.get(k))
    print("\n".join(differ) or "every case as pinned")
    print(f"{len(differ)} of {len(pins)} cases differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
