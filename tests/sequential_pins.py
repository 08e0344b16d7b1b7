"""Fingerprints of the sequential, Uniform and TRIPLE agents' policies, pinned to a previous engine.

``tests/test_sequential_pinned.py`` refits every case below and compares each seed's policy
fingerprint with ``tests/data/sequential_pins.json``, which this script wrote from the engine before
the incremental sequential loop and the chunked Uniform / TRIPLE sampling (commit 05a16dd)::

    git worktree add /tmp/pin-engine 05a16dd
    python tests/sequential_pins.py --root /tmp/pin-engine     # rewrites tests/data/sequential_pins.json

A fingerprint hashes everything a run returns: the deployed arms (or arm distribution), the
budget used and the info dict (its floats by ``repr``), so any change of a decision, a tie-break
or a single bit of a deployed mean changes it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PINS = HERE / "data" / "sequential_pins.json"
MATH_PICKLE = HERE.parents[1] / "shared" / "data" / "published" / "MATH_final.pkl"

SEEDS = (0, 1, 2, 3, 4, 5)
#: (task, agent name, agent kwargs, budgets). Budgets cover the feasibility endgame (every run ends
#: with less than N_max left), budgets below one sweep over prompts (Uniform's random top-up) and
#: several TRIPLE rounds.
CASES: list[tuple[str, str, dict[str, Any], tuple[int, ...]]] = [
    (task, agent, kwargs, budgets)
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
]


def case_key(task: str, agent: str, kwargs: dict[str, Any], budget: int) -> str:
    """The JSON key of one case."""
    args = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{task}/{agent}({args})/T={budget}"


def fingerprint(policy: Any) -> str:
    """16 hex digits of sha256 over a policy's arms or distribution, budget and info."""
    h = hashlib.sha256()
    table = getattr(policy, "arms", None)
    table = policy.probs if table is None else table
    h.update(np.ascontiguousarray(table).tobytes())
    h.update(str(int(policy.budget_used)).encode())
    h.update(json.dumps(policy.info, sort_keys=True, default=repr).encode())
    return h.hexdigest()[:16]


def make_envs(task: str, math_table: Any = None) -> Any:
    """``make_env(seed)`` for a task: MATH on one shared table (per-seed split), synthetic worlds per seed."""
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tasks import load_task_table

    if task == "MATH":
        return lambda s: IAPOEnv(math_table, split_seed=s)
    return lambda s: IAPOEnv(load_task_table(task, world_seed=s), world_seed=s)


def load_math() -> Any:
    """The released MATH table (None when the data directory is absent)."""
    if not MATH_PICKLE.exists():
        return None
    from iapo_gym.tables.importer import import_released

    return import_released(MATH_PICKLE)


def compute(
    task: str, agent: str, kwargs: dict[str, Any], budget: int, math_table: Any = None, **fit_kwargs: Any
) -> list[str]:
    """Fingerprints of seeds :data:`SEEDS` fitted as one ``fit_many`` batch."""
    from iapo_gym.agents import make_agent

    policies = make_agent(agent, **kwargs).fit_many(make_envs(task, math_table), budget, list(SEEDS), **fit_kwargs)
    return [fingerprint(p) for p in policies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="checkout of the engine to pin (default: the importable iapo_gym)")
    parser.add_argument("--out", default=str(PINS))
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, str(HERE.parent / "benchmarks"))
        from bench_agents import load_engine

        load_engine(Path(args.root))
    math_table = load_math()
    if math_table is None:
        raise SystemExit(f"the MATH pickle is not at {MATH_PICKLE}; pins need it")
    pins = {}
    for task, agent, kwargs, budgets in CASES:
        for budget in budgets:
            pins[case_key(task, agent, kwargs, budget)] = compute(task, agent, kwargs, budget, math_table)
            print(case_key(task, agent, kwargs, budget), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seeds": list(SEEDS), "pins": pins}, indent=1) + "\n")


if __name__ == "__main__":
    main()
