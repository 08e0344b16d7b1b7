"""Bounded memory of exact evaluation: continuous contexts in blocks, evaluator caches bounded in bytes.

The values must not depend on how the work is cut: an evaluator that produces its Q-values block by
block gives the bits of the one-piece computation, a rebuilt (evicted) evaluator the bits of the
kept one, and a sweep whose cache is too small for one run the same ``results.csv`` values.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from iapo_gym import oracle
from iapo_gym.agents import make_agent
from iapo_gym.continuous import exact_q_values
from iapo_gym.experiments import evaluate, executors, train
from iapo_gym.experiments.evaluate import ExactEvaluator


def _env(env_id: str, seed: int, contexts: str = "continuous"):
    return train.env_factory(env_id, 1000, contexts)(seed)


@pytest.mark.parametrize("env_id", ["IAPO-SynthBernoulli-v0", "IAPO-MATH-v0", "IAPO-SynthCategorical-v0"])
def test_blocked_continuous_evaluation_is_bit_identical(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if env_id == "IAPO-MATH-v0":
        try:
            _env(env_id, 0)
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"the MATH table is not imported here ({str(exc).splitlines()[0]})")
    shared = executors.shares_table(env_id)
    agents = {"random": make_agent("random"), "psst_grid": make_agent("psst_grid")}
    policies = {k: a.fit_many(lambda s: _env(env_id, s), 1000, [3])[0] for k, a in agents.items()}
    env = _env(env_id, 3)
    ref_q = exact_q_values(env.table, evaluate.evaluation_contexts(env, "continuous")[0], env.test_queries)
    ref_q = ref_q.reshape(ref_q.shape[0], -1)
    results = {}
    for block in (7, 256, 10**6):  # odd blocks, the default, one piece
        monkeypatch.setattr(evaluate, "CONTEXT_BLOCK", block)
        ev = ExactEvaluator(env, "continuous", shared_table=shared)
        results[block] = {k: ev.evaluate(p).row() for k, p in policies.items()}
        if shared:  # on the whole table the Q-values are exact_q_values' own bits
            np.testing.assert_array_equal(ev.q, ref_q)
        else:  # a per-seed world is evaluated on its test sub-table: the same values to rounding
            np.testing.assert_allclose(ev.q, ref_q, rtol=0, atol=1e-12)
        assert ev.oracle_acr == float(ev.probs @ ev.q.max(axis=1))
        for k, p in policies.items():  # acr is oracle.acr on the run's Q, bit for bit
            assert results[block][k]["acr"] == oracle.acr(ev.q, p, ev.probs, ev.weights)
    assert results[7] == results[256] == results[10**6]
    assert results[256]["random"]["acr"] != results[256]["psst_grid"]["acr"]


def test_a_majority_vote_run_keeps_its_q_values_in_factors() -> None:
    mv = ExactEvaluator(_env("IAPO-SynthBernoulli-v0", 0), "continuous", shared_table=False)
    bon = ExactEvaluator(_env("IAPO-SynthCategorical-v0", 0), "continuous", shared_table=False)
    assert mv.q.shape == bon.q.shape == (2000, 1024)
    assert mv.nbytes < 0.2e6  # the two (P, n_max) factors, not 2,000 x 1,024 floats
    assert bon.nbytes >= bon.q.nbytes  # best-of-N: the full Q-values, the smallest exact form
    assert bon.nbytes < 1.1 * bon.q.nbytes


def test_evaluator_cache_is_bounded_and_rebuilds_the_same_values() -> None:
    def build(seed: int):
        return ExactEvaluator(_env("IAPO-SynthCategorical-v0", seed, "finite"), "finite", shared_table=False)

    one = build(0).nbytes
    cache = executors.EvaluatorCache(max_bytes=int(2.5 * one))
    policy = make_agent("psst").fit_many(lambda s: _env("IAPO-SynthCategorical-v0", s, "finite"), 1000, [0])[0]
    first = cache.get(0, lambda: build(0)).evaluate(policy).row()
    for seed in (1, 2, 3):
        cache.get(seed, lambda s=seed: build(s))
    assert len(cache) == 2 and 0 not in cache and cache.nbytes <= cache.max_bytes
    again = cache.get(0, lambda: build(0)).evaluate(policy).row()  # evicted, rebuilt
    assert again == first and cache.built == 5
    cache.discard(0)
    assert 0 not in cache and cache.nbytes == sum(e.nbytes for e in cache._items.values())
    tiny = executors.EvaluatorCache(max_bytes=1)  # never below one evaluator
    assert tiny.get(9, lambda: build(9)) is tiny.get(9, lambda: build(9))


def _values(out: Path) -> list[tuple]:
    with open(out / "results.csv", newline="") as f:
        rows = [(r["agent"], r["budget"], r["seed"], r["acr"], r["regret"], r["optimal_frac"], r["policy"])
                for r in csv.DictReader(f)]
    return sorted(rows)


def test_continuous_sweep_orders_seed_blocks_and_frees_evaluators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = dict(env="IAPO-SynthCategorical-v0", contexts="continuous", agents="random,psst_grid", budgets=[300, 600],
                  runs=4, chunk=2, track=False, plots=False, progress=False, log=lambda _: None)
    runner, _ = train.run_experiment(out=str(tmp_path / "a"), **common)
    assert runner.evaluators.built == 4 and len(runner.evaluators) == 0  # each run's built once, dropped after
    assert not [k for k in train._WORLDS if k[0] == "SynthCategorical" and k[1] < 4]  # and so are the runs' worlds
    with open(tmp_path / "a" / "results.csv", newline="") as f:
        order = [(r["seed"], r["agent"], r["budget"]) for r in csv.DictReader(f)]
    # seeds 0-1 for every agent and budget, then seeds 2-3
    assert {s for s, *_ in order[:8]} == {"0", "1"} and {s for s, *_ in order[8:]} == {"2", "3"}
    # a cache too small for one run: every cell rebuilds its evaluators, the values do not move
    monkeypatch.setattr(executors, "EVALUATOR_CACHE_BYTES", 1)
    monkeypatch.setattr(train.Runner, "ordered", lambda self, work: work)
    small, _ = train.run_experiment(out=str(tmp_path / "b"), **common)
    assert small.evaluators.built > 4
    assert _values(tmp_path / "a") == _values(tmp_path / "b")
