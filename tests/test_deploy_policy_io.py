"""Saved policies: every policy kind of the zoo round-trips, and bad documents or specs are refused."""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np
import pytest

import iapo_gym
from iapo_gym.agents import make_agent
from iapo_gym.agents.base import StochasticPolicy, TablePolicy
from iapo_gym.deploy.policy_io import (
    FORMAT_VERSION,
    PolicyFormatError,
    PolicyMismatchError,
    TaskIdentity,
    table_checksum,
    text_fingerprint,
)
from iapo_gym.live.backends import SamplingConfig
from iapo_gym.live.specs import load_spec
from iapo_gym.oracle import acr as exact_acr
from iapo_gym.oracle import q_values
from iapo_gym.tasks import load_task_table


@pytest.fixture(scope="module")
def smolarith():
    return load_task_table("SmolArith")


@pytest.fixture(scope="module")
def psst_policy(smolarith):
    env = gym.make("IAPO-SmolArith-v0", budget=3000, split_seed=0).unwrapped
    return make_agent("psst").fit(env, 3000, 0)


def _rewrite(path, mutate):
    """Apply ``mutate`` to the document and store it with a valid checksum (a well-formed edit)."""
    doc = json.loads(path.read_text())
    doc.pop("checksum")
    mutate(doc)
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    doc["checksum"] = hashlib.sha256(canon).hexdigest()
    path.write_text(json.dumps(doc))


def test_table_policy_round_trip_with_provenance(psst_policy, smolarith, tmp_path):
    path = psst_policy.save(tmp_path / "psst.json", smolarith, agent=make_agent("psst"), budget=3000, seed=0)
    doc = json.loads(path.read_text())
    assert doc["format_version"] == FORMAT_VERSION and doc["kind"] == "table"
    assert doc["provenance"]["agent"] == "psst" and doc["provenance"]["budget"] == 3000
    assert doc["provenance"]["seed"] == 0
    assert doc["provenance"]["table_checksum"] == table_checksum(smolarith)
    rows = doc["policy"]["arms"]
    assert [r["context"] for r in rows] == ["low", "mid", "high"]
    for r, arm in zip(rows, psst_policy.arms, strict=True):
        assert r["arm"] == arm and (r["prompt"], r["n"]) == (arm // 16, arm % 16 + 1)
        assert r["prompt_sha256"] == text_fingerprint(smolarith.prompts[r["prompt"]])
    assert doc["task"]["cost_scale_per_token"] == smolarith.provenance["cost_scale_per_token"]

    loaded = iapo_gym.load_policy(path, spec="smolarith")
    assert isinstance(loaded, TablePolicy)
    np.testing.assert_array_equal(loaded.arms, psst_policy.arms)
    assert loaded.budget_used == psst_policy.budget_used and loaded.info == json.loads(json.dumps(psst_policy.info))
    q = q_values(smolarith)
    ctx = smolarith.contexts
    assert exact_acr(q, loaded, ctx.probs, ctx.weights) == exact_acr(q, psst_policy, ctx.probs, ctx.weights)
    assert loaded.deployment.task.fingerprint == TaskIdentity.from_table(smolarith).fingerprint
    w = np.array([[1.0, 0.05], [1.0, 0.7]])  # off-grid weights: nearest context, as before saving
    np.testing.assert_array_equal(loaded.act(w), psst_policy.act(w))


def test_stochastic_policy_round_trip_draws_the_same_arms(smolarith, tmp_path):
    env = gym.make("IAPO-SmolArith-v0", budget=600, split_seed=1).unwrapped
    policy = make_agent("triple_nrandom").fit(env, 600, 1)
    assert isinstance(policy, StochasticPolicy)
    path = policy.save(tmp_path / "triple.json", env, agent="triple_nrandom", budget=600, seed=1)
    loaded = iapo_gym.load_policy(path)
    assert isinstance(loaded, StochasticPolicy) and loaded.seed == policy.seed
    np.testing.assert_array_equal(loaded.arm_probs(smolarith.contexts.weights, smolarith.n_arms),
                                  policy.arm_probs(smolarith.contexts.weights, smolarith.n_arms))
    fresh = StochasticPolicy(policy.contexts, policy.probs, policy.n_max, seed=policy.seed)
    w = np.repeat(smolarith.contexts.weights, 20, axis=0)
    np.testing.assert_array_equal(loaded.act(w), fresh.act(w))


def test_neural_policy_round_trip_with_weights_file(tmp_path):
    env = gym.make("IAPO-SynthCategorical-v0", budget=1500, contexts="continuous").unwrapped
    policy = make_agent("neural", n_directions=8, first_steps=30, round_steps=5, final_steps=10).fit(env, 1500, 0)
    path = policy.save(tmp_path / "neural.json", env, seed=0)
    assert (tmp_path / "neural.weights.npz").is_file()
    loaded = iapo_gym.load_policy(path)
    w = np.random.default_rng(0).dirichlet(np.ones(env.n_objectives + 1), size=64)
    np.testing.assert_array_equal(loaded.values(w), policy.values(w))
    np.testing.assert_array_equal(loaded.act(w), policy.act(w))
    np.testing.assert_array_equal(loaded.candidates, policy.candidates)

    raw = bytearray((tmp_path / "neural.weights.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "neural.weights.npz").write_bytes(bytes(raw))
    with pytest.raises(PolicyFormatError, match="does not match the sha256"):
        iapo_gym.load_policy(path)
    (tmp_path / "neural.weights.npz").unlink()
    with pytest.raises(PolicyFormatError, match="needs neural.weights.npz beside it"):
        iapo_gym.load_policy(path)


def test_sb3_model_policy_round_trip_with_model_zip(tmp_path):
    pytest.importorskip("stable_baselines3")
    env = gym.make("IAPO-SynthCategorical-v0", budget=300, contexts="continuous").unwrapped
    policy = make_agent("ppo").fit(env, 300, 0)
    assert type(policy).__name__ == "ModelPolicy"
    path = policy.save(tmp_path / "ppo.json", env, agent="ppo", budget=300, seed=0)
    assert (tmp_path / "ppo.sb3.zip").is_file()
    loaded = iapo_gym.load_policy(path)
    w = np.random.default_rng(1).dirichlet(np.ones(env.n_objectives + 1), size=64)
    np.testing.assert_array_equal(loaded.act(w), policy.act(w))


def test_refuses_newer_version_damage_and_wrong_task(psst_policy, smolarith, tmp_path):
    path = psst_policy.save(tmp_path / "p.json", smolarith)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        psst_policy.save(path, smolarith)

    newer = tmp_path / "newer.json"
    newer.write_bytes(path.read_bytes())
    _rewrite(newer, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(PolicyFormatError, match="upgrade iapo-gym"):
        iapo_gym.load_policy(newer)

    damaged = tmp_path / "damaged.json"
    text = path.read_text().replace('"budget_used": ', '"budget_used": 1', 1)
    damaged.write_text(text)
    with pytest.raises(PolicyFormatError, match="checksum mismatch"):
        iapo_gym.load_policy(damaged)
    assert damaged.read_text() == text  # kept as it is

    edited = tmp_path / "edited.json"
    edited.write_bytes(path.read_bytes())
    _rewrite(edited, lambda d: d["policy"]["arms"][0].update(n=d["policy"]["arms"][0]["n"] % 16 + 1))
    with pytest.raises(PolicyFormatError, match="disagrees with its prompt, N"):
        iapo_gym.load_policy(edited)

    spec = load_spec("smolarith")
    reworded = spec.with_overrides(prompts=(*spec.prompts[:3], spec.prompts[3] + " Be brief.", *spec.prompts[4:]))
    with pytest.raises(PolicyMismatchError, match=r"prompt text differs at index \[3\]"):
        iapo_gym.load_policy(path, spec=reworded)
    with pytest.raises(PolicyMismatchError, match="5 prompts != 6"):
        iapo_gym.load_policy(path, spec=spec.with_overrides(prompts=spec.prompts[:5]))
    hotter = spec.with_overrides(sampling=SamplingConfig(1.0, 0.95, 40))
    with pytest.raises(PolicyMismatchError, match=r"temperature=1.0 \(policy: 0.8\)"):
        iapo_gym.load_policy(path, spec=hotter)
    with pytest.raises(PolicyMismatchError, match="task 'MATH'"):
        iapo_gym.load_policy(path, spec="math")
    assert iapo_gym.load_policy(path, spec=spec).deployment.path == path


def test_save_refuses_a_policy_that_does_not_fit_the_task(psst_policy, smolarith, tmp_path):
    with pytest.raises(ValueError, match=r"arms must lie in 0..95"):
        TablePolicy(smolarith.contexts, np.array([96, 0, 0]), 16).save(tmp_path / "x.json", smolarith)
    with pytest.raises(ValueError, match="n_max=8"):
        TablePolicy(smolarith.contexts, np.array([0, 0, 0]), 8).save(tmp_path / "x.json", smolarith)
    with pytest.raises(ValueError, match="must end in .json"):
        psst_policy.save(tmp_path / "x.policy", "SmolArith")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("mode", ["best", "all"])
def test_train_saves_policies_that_reload_with_the_reported_acr(mode, tmp_path):
    import csv

    from iapo_gym.experiments import train

    args = train.Args(env="IAPO-SmolArith-v0", agents="psst,random", budgets="400", runs=3, out=str(tmp_path),
                      track=False, plots=False, progress=False, save_policies=mode)
    train.run_experiment(args, log=lambda s: None)
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = load_task_table("SmolArith")
    for agent in ("psst", "random"):
        runs = {int(r["seed"]): float(r["acr"]) for r in rows if r["agent"] == agent}
        files = sorted((tmp_path / "policies" / "IAPO-SmolArith-v0" / agent / "T400").glob("seed*.json"))
        seeds = [int(f.stem.removeprefix("seed")) for f in files]
        assert seeds == ([max(runs, key=runs.get)] if mode == "best" else [0, 1, 2])
        for f, seed in zip(files, seeds, strict=True):
            policy = iapo_gym.load_policy(f, spec="smolarith")
            assert policy.deployment.provenance["agent"] == agent and policy.deployment.provenance["seed"] == seed
            env = gym.make("IAPO-SmolArith-v0", budget=400, split_seed=seed).unwrapped
            test = np.zeros(table.n_queries, bool)
            test[env.test_queries] = True
            acr = exact_acr(q_values(table, test), policy, table.contexts.probs, table.contexts.weights)
            assert acr == pytest.approx(runs[seed], abs=1e-12)
    with pytest.raises(train.ArgumentError, match="--save-policies must be 'all' or 'best'"):
        train.make_plan(train.Args(save_policies="some"))
