"""Fingerprints of every batch agent's decisions, to pin them across engine changes.

A fingerprint is the SHA-256 of what a fitted policy decides and reports: its deployed arm (or
arm distribution) per context of the task, its ``budget_used`` and its ``info`` diagnostics
(spend per round, survivors, halvings, ...). The fingerprints in
``tests/data/policy_fingerprints.json`` were written by this script from the engine at commit
05a16dd (before the round loop and the PSST kernel were rewritten); ``tests/test_policy_fingerprints.py``
recomputes them and fails if any decision changed. Regenerate (only when a decision is meant to
change, and say why in the commit)::

    python scripts/policy_fingerprints.py --write tests/data/policy_fingerprints.json

Cases: small tasks of both strategies and of one and many contexts (Synth-Bernoulli, MV;
Synth-Categorical, BoN with 27 contexts; SmolArith, the shipped MV table), two budgets each
(one below PSST's first-round threshold, one above), three seeds fitted as one batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

#: Agents pinned (every batch agent of the zoo; the SB3 agents are per-seed and slow, neural needs torch).
AGENTS = (
    "psst",
    "topk1",
    "topk4",
    "topk8",
    "seqhalving",
    "psst_paired",
    "topk_paired",
    "psst_grid",
    "psst_model",
    "uniform",
    "triple_n1",
    "triple_nrandom",
    "ucb",
    "egreedy",
    "softmax",
    "random",
)
#: (task, budget) cases; three seeds each, fitted as one batch.
CASES = (
    ("SynthBernoulli", 1_500),
    ("SynthBernoulli", 12_000),
    ("SynthCategorical", 1_500),
    ("SynthCategorical", 12_000),
    ("SmolArith", 400),
    ("SmolArith", 3_000),
)
SEEDS = (0, 1, 7)


def _default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return repr(x)


def policy_fingerprint(policy: Any, weights: np.ndarray, n_arms: int) -> str:
    """SHA-256 of a policy's decisions on ``weights``, its ``budget_used`` and its ``info``."""
    h = hashlib.sha256()
    probs = np.ascontiguousarray(policy.arm_probs(weights, n_arms), dtype=np.float64)
    h.update(probs.tobytes())
    h.update(str(int(policy.budget_used)).encode())
    h.update(json.dumps(policy.info, sort_keys=True, default=_default).encode())
    return h.hexdigest()


def fingerprints(agents: tuple[str, ...] = AGENTS) -> dict[str, str]:
    """``{"agent/task/budget/seed": sha256}`` for every pinned case."""
    import iapo_gym  # noqa: F401  (registers the tasks)
    from iapo_gym.agents import make_agent
    from iapo_gym.env import IAPOEnv
    from iapo_gym.tasks import TASKS, load_task_table

    out: dict[str, str] = {}
    for task, budget in CASES:
        synthetic = TASKS[task].kind == "synthetic"
        tables = {s: load_task_table(task, world_seed=s if synthetic else None) for s in SEEDS}

        def make_env(seed: int, tables: dict = tables, synthetic: bool = synthetic) -> Any:
            return IAPOEnv(tables[seed], split_seed=seed, world_seed=seed if synthetic else None)

        env0 = make_env(SEEDS[0])
        weights = env0.contexts.weights
        n_arms = env0.n_prompts * env0.n_max
        for name in agents:
            policies = make_agent(name).fit_many(make_env, budget, list(SEEDS))
            for seed, policy in zip(SEEDS, policies, strict=True):
                out[f"{name}/{task}/{budget}/{seed}"] = policy_fingerprint(policy, weights, n_arms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the fingerprints (JSON) here; default: print them")
    args = parser.parse_args()
    fp = fingerprints()
    text = json.dumps(fp, indent=1, sort_keys=True) + "\n"
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        print(f"wrote {len(fp)} fingerprints to {args.write}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
