"""train.py with ``--contexts continuous`` on Synth-Categorical: exact evaluation on the held-out
sample, cost-bin policy summaries, TensorBoard (including the neural agent's training), plots."""

from __future__ import annotations

import csv
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from iapo_gym import oracle
from iapo_gym.continuous import ContinuousContexts, exact_q_values
from iapo_gym.env import IAPOEnv
from iapo_gym.experiments import train
from iapo_gym.experiments.evaluate import COST_BINS, ExactEvaluator

ENV = "IAPO-SynthCategorical-v0"
AGENTS = ("neural", "psst_grid", "ppo", "random")
BUDGETS = (150, 600)
RUNS = 2


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("cont")
    rc = train.main([
        "--env", ENV, "--contexts", "continuous", "--agents", ",".join(AGENTS),
        "--budgets", ",".join(map(str, BUDGETS)), "--runs", str(RUNS), "--out", str(out),
        "--reference", "psst_grid", "--no-progress",
    ])
    return out, rc


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_results_are_exact_on_the_held_out_sample(experiment) -> None:
    out, rc = experiment
    assert rc == 0
    rows = _rows(out / "results.csv")
    keys = {(r["agent"], int(r["budget"]), int(r["seed"])) for r in rows}
    assert keys == {(a, b, s) for a in AGENTS for b in BUDGETS for s in range(RUNS)} and len(rows) == len(keys)
    for r in rows:
        assert r["contexts"] == "continuous" and r["env"] == ENV
        acr, best, regret = float(r["acr"]), float(r["oracle_acr"]), float(r["regret"])
        assert np.isfinite(acr) and acr <= best + 1e-12
        assert regret >= 0 and regret == pytest.approx(best - acr, abs=1e-9)
        assert 0 <= int(r["budget_used"]) <= int(r["budget"])
        assert 0 <= float(r["optimal_frac"]) <= 1
        policy = json.loads(r["policy"])
        assert all(len(policy[k]) == COST_BINS for k in ("prompt", "n", "n_mean", "optimal", "best_prompt", "best_n"))
    # the oracle ACR is the exact mean over the 2,000 held-out contexts of that run's world and test split
    for seed in range(RUNS):
        env = IAPOEnv("SynthCategorical", split_seed=seed, world_seed=seed, contexts="continuous")
        sample = ContinuousContexts.for_table(env.table).evaluation_sample()
        q = exact_q_values(env.table, sample, env.test_queries).reshape(len(sample), -1)  # the reference
        probs = np.full(len(sample), 1.0 / len(sample))
        finite = ExactEvaluator(env, "finite")
        oracle_acrs = {float(r["oracle_acr"]) for r in rows if int(r["seed"]) == seed}
        assert len(oracle_acrs) == 1
        value = oracle_acrs.pop()
        assert value == pytest.approx(q.max(axis=1).mean(), rel=0, abs=1e-9)
        assert abs(value - finite.oracle_acr) > 1e-6  # not the finite protocol's number
        # a deterministic policy's acr is reproduced by the reference evaluator
        ev = ExactEvaluator(env, "continuous", shared_table=False)

        class Fixed:
            def act(self, weights: np.ndarray) -> np.ndarray:
                return np.full(np.shape(weights)[0], 5, dtype=np.int64)

        assert ev.evaluate(Fixed()).acr == pytest.approx(oracle.acr(q, Fixed(), probs, sample), abs=1e-9)
    # with a real budget, the learners beat the uniformly random policy
    acr = {a: np.mean([float(r["acr"]) for r in rows if r["agent"] == a and int(r["budget"]) == BUDGETS[-1]]) for a in AGENTS}
    assert acr["psst_grid"] > acr["random"] and acr["neural"] > acr["random"]


def test_contexts_file_records_cost_bins(experiment) -> None:
    out, _ = experiment
    ctx = json.loads((out / "contexts.continuous.json").read_text())[ENV]
    w = np.asarray(ctx["weights"])
    assert w.shape == (COST_BINS, 3) and len(ctx["names"]) == COST_BINS
    assert np.all(np.diff(w[:, -1]) > 0)  # bins ordered by cost weight
    np.testing.assert_allclose(w[:, :2].sum(axis=1), 1.0)
    assert sum(ctx["probs"]) == pytest.approx(1.0)
    assert ctx["distribution"]["kind"] == "continuous" and ctx["evaluation_contexts"] == 2000
    assert not (out / "contexts.json").exists()


def test_plots_wilcoxon_and_tensorboard(experiment) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = experiment
    for name in ("acr_vs_budget.png", "n_vs_cost.png", "wilcoxon.csv", "wilcoxon.md"):
        assert (out / name).stat().st_size > 0
    tb = out / "tb"
    # per-configuration charts (one step per budget)
    config_dirs = [d for d in tb.iterdir() if "__neural__" in d.name and "training" not in d.name]
    assert len(config_dirs) == 1
    ea = EventAccumulator(str(config_dirs[0]))
    ea.Reload()
    assert [e.step for e in ea.Scalars("charts/acr")] == list(BUDGETS)
    assert any(t.startswith("policy/n/c0_cost") for t in ea.Tags()["scalars"])
    # the neural agent's own training logs, one directory per budget
    for budget in BUDGETS:
        runs = list((tb / f"{ENV}__neural__training__T{budget}").iterdir())
        assert len(runs) == 1
        ea = EventAccumulator(str(runs[0]))
        ea.Reload()
        tags = ea.Tags()["scalars"]
        assert {"neural/loss", "explore/active_per_context", "explore/candidates", "explore/spent"} <= set(tags)
        loss = np.array([e.value for e in ea.Scalars("neural/loss")])
        assert loss.size > 50 and np.all(np.isfinite(loss)) and loss[-10:].mean() < loss[:10].mean()
        active = [e.value for e in ea.Scalars("explore/active_per_context")]
        assert all(b <= a for a, b in pairwise(active))  # halving only removes arms
        spent = [e.value for e in ea.Scalars("explore/spent")]
        assert spent[-1] <= budget


def test_unknown_context_mode_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = train.main(["--env", ENV, "--contexts", "gaussian", "--agents", "random", "--runs", "1", "--out", str(tmp_path)])
    assert rc == 2
    assert "--contexts must be one of finite, continuous" in capsys.readouterr().err
