"""train.py end to end on tiny tasks with real agents: CSV, exact metrics, TensorBoard, plots, Wilcoxon, resume."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats as sps

from iapo_gym import oracle
from iapo_gym.experiments import train
from iapo_gym.experiments.results import Results
from iapo_gym.tables.testing import example_table

TINY_MV = "IAPO-TestTinyMV-v0"  # one fixed table, re-split 80/20 per seed (like a real task)
TINY_SYNTH = "IAPO-TestTinySynthBoN-v0"  # a fresh world per seed (like a synthetic task)
AGENTS = ("psst", "uniform", "random")
BUDGETS = (64, 400)
RUNS = 5


@pytest.fixture(scope="module")
def tiny_tasks() -> Iterator[None]:
    """Register the two tiny test tasks for this module only (other modules never see them)."""
    import iapo_gym  # registers the real ids
    from iapo_gym.tasks import TASKS, TaskInfo, register_task

    gym.register(TINY_MV, entry_point="iapo_gym.env:IAPOEnv",
                 kwargs={"task": example_table("mv", seed=7, n_prompts=3, n_queries=30, n_max=6)})
    register_task(TaskInfo("TestTinySynthBoN", "bon", "synthetic", "test world",
                           lambda seed: example_table("bon", seed=seed, n_prompts=3, n_queries=20, n_max=4)))
    iapo_gym.register_envs()
    try:
        yield
    finally:
        TASKS.pop("TestTinySynthBoN", None)
        for env_id in (TINY_MV, TINY_SYNTH):
            gym.registry.pop(env_id, None)


@pytest.fixture(scope="module")
def experiment(tiny_tasks: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[train.Args, train.Runner, dict[str, Path]]:
    out = tmp_path_factory.mktemp("exp")
    args = train.Args(
        env=f"{TINY_MV},{TINY_SYNTH}", agents=",".join(AGENTS), budgets=",".join(map(str, BUDGETS)), runs=RUNS,
        out=str(out), reference="psst", progress=False, report=str(out / "REPORT.md"),
    )
    runner, written = train.run_experiment(args, log=lambda s: None)
    return args, runner, written


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_results_csv_has_every_run_and_sane_exact_metrics(experiment) -> None:
    args, runner, written = experiment
    rows = _rows(written["results"])
    for col in ("env", "agent", "budget", "seed", "acr", "oracle_acr", "regret", "budget_used", "wall_s", "optimal_frac"):
        assert col in rows[0]
    keys = {(r["env"], r["agent"], int(r["budget"]), int(r["seed"])) for r in rows}
    assert keys == {(e, a, b, s) for e in (TINY_MV, TINY_SYNTH) for a in AGENTS for b in BUDGETS for s in range(RUNS)}
    assert len(rows) == len(keys)
    # agents with their own fit_many fit a configuration's seeds as one chunk (Random too: its
    # fit_many shares one distribution per table); one-seed-at-a-time agents (SB3) run per seed
    # (tests/test_train_continuous.py)
    assert [runner.chunk_size(a) for a in AGENTS] == [train.BATCH_CHUNK] * 3
    assert runner.fits == 2 * len(BUDGETS) * 3
    for r in rows:
        acr, best, regret = float(r["acr"]), float(r["oracle_acr"]), float(r["regret"])
        assert acr <= best + 1e-12 and regret >= 0 and regret == pytest.approx(best - acr, abs=1e-12)
        assert 0 <= int(r["budget_used"]) <= int(r["budget"]) and float(r["wall_s"]) >= 0
        assert 0 <= float(r["optimal_frac"]) <= 1
    # psst spends its budget; with a real budget it beats the uniformly random policy on average
    res = Results.read(written["results"])
    assert res.budget_used[res.mask(agent="psst", budget=400)].min() > 300
    for env in (TINY_MV, TINY_SYNTH):
        assert (
            res.acr[res.mask(env=env, agent="psst", budget=400)].mean()
            > res.acr[res.mask(env=env, agent="random", budget=400)].mean()
        )


def test_oracle_columns_match_an_independent_oracle_on_each_seeds_split_and_world(experiment) -> None:
    _, _, written = experiment
    res = Results.read(written["results"])
    for env_id in (TINY_MV, TINY_SYNTH):
        for seed in range(RUNS):
            env = gym.make(env_id, budget=1, split_seed=seed, world_seed=seed).unwrapped
            q = oracle.q_values(env.table, env.test_queries)
            best = oracle.best_arms(q)
            m = res.mask(env=env_id, seed=seed)
            assert np.allclose(res.oracle_acr[m], oracle.acr(q, best, env.contexts.probs), rtol=0, atol=1e-12)
            # the recorded per-context policy reproduces the recorded ACR exactly (deterministic agents)
            for i in np.flatnonzero(m & (res.agent != "random")):
                pol = res.policy[i]
                arms = np.array(pol["prompt"]) * env.n_max + np.array(pol["n"]) - 1
                assert res.acr[i] == pytest.approx(oracle.acr(q, arms, env.contexts.probs), abs=1e-12)
                assert pol["best_n"] == (best % env.n_max + 1).tolist()
    # synthetic worlds differ per seed, the fixed table does not
    assert len(set(np.round(res.oracle_acr[res.mask(env=TINY_SYNTH)], 12))) > 1


def test_tensorboard_event_files_hold_the_csv_means(experiment) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, written = experiment
    res = Results.read(written["results"])
    runs = sorted(p for p in (written["tensorboard"]).iterdir() if p.is_dir())
    assert len(runs) == 2 * len(AGENTS)
    for run in runs:
        env, agent, seeds, mode = run.name.split("__")  # stable: the same directory on every resume
        assert seeds == f"0x{RUNS}" and mode == "finite"
        ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
        ea.Reload()
        tags = ea.Tags()["scalars"]
        assert {"charts/acr", "charts/regret", "charts/oracle_acr", "charts/optimal_frac", "charts/budget_used"} <= set(tags)
        n_contexts = len(gym.make(env, budget=1).unwrapped.contexts)
        for family, kind in (("policy/n/", "scalars"), ("policy/prompt/", "histograms"), ("policy/optimal/", "scalars")):
            assert sorted(t.split("/")[2].split("_")[0] for t in ea.Tags()[kind] if t.startswith(family)) == sorted(
                f"c{i}" for i in range(n_contexts)
            )
        assert not any(t.startswith("policy/prompt/") for t in tags)  # a categorical id is not a line
        # the prompt histogram counts the runs deploying each prompt (context 0, largest budget)
        prompt_tag = next(t for t in ea.Tags()["histograms"] if t.startswith("policy/prompt/c0_"))
        last = ea.Histograms(prompt_tag)[-1]
        idx = np.flatnonzero(res.mask(env=env, agent=agent, budget=BUDGETS[-1]))
        counts = np.bincount([res.policy[i]["prompt"][0] for i in idx], minlength=3)
        assert last.step == BUDGETS[-1] and last.histogram_value.num == RUNS
        got = dict(zip(np.round(np.array(last.histogram_value.bucket_limit), 6), last.histogram_value.bucket, strict=True))
        assert [got.get(round(p + 0.5, 6), 0.0) for p in range(3)] == counts.tolist()
        for tag, col in (("charts/acr", res.acr), ("charts/regret", res.regret)):
            got = {e.step: e.value for e in ea.Scalars(tag)}
            want = {b: col[res.mask(env=env, agent=agent, budget=b)].mean() for b in BUDGETS}
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
        n_tag = next(t for t in tags if t.startswith("policy/n/c0_"))
        got_n = {e.step: e.value for e in ea.Scalars(n_tag)}
        idx = {b: np.flatnonzero(res.mask(env=env, agent=agent, budget=b)) for b in BUDGETS}
        assert got_n == pytest.approx({b: np.mean([res.policy[i]["n_mean"][0] for i in ix]) for b, ix in idx.items()})
        assert ea.PluginTagToContent("hparams")  # hyper-parameters for the HParams dashboard


def test_tensorboard_holds_every_seed(experiment) -> None:
    """Per-seed scalars, the regret histogram and the worst-seeds table, read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from iapo_gym.experiments.tblog import WORST_SEEDS, seed_tag

    _, _, written = experiment
    res = Results.read(written["results"])
    for run in sorted(p for p in (written["tensorboard"]).iterdir() if p.is_dir()):
        env, agent, _, _ = run.name.split("__")
        ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
        ea.Reload()
        tags = set(ea.Tags()["scalars"])
        assert {t for t in tags if t.startswith("seeds/")} == {seed_tag(m, s) for m in ("acr", "regret") for s in range(RUNS)}
        for s in range(RUNS):
            for metric, col in (("acr", res.acr), ("regret", res.regret)):
                got = {e.step: e.value for e in ea.Scalars(seed_tag(metric, s))}
                want = {b: float(col[res.mask(env=env, agent=agent, budget=b) & (res.seed == s)][0]) for b in BUDGETS}
                assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
        # the regret histogram holds every run: its count, sum and extremes are the CSV's
        for b in BUDGETS:
            reg = res.regret[res.mask(env=env, agent=agent, budget=b)]
            h = next(e for e in ea.Histograms("runs/regret") if e.step == b).histogram_value
            assert h.num == RUNS and h.sum == pytest.approx(reg.sum(), rel=1e-5, abs=1e-9)
            assert (h.min, h.max) == pytest.approx((reg.min(), reg.max()), rel=1e-5, abs=1e-9)
        # the worst-seeds table names the seeds with the largest regret, largest first
        from tensorboard.util import tensor_util

        text = tensor_util.make_ndarray(ea.Tensors("seeds/worst/text_summary")[-1].tensor_proto).item().decode()
        mask = res.mask(env=env, agent=agent, budget=BUDGETS[-1])
        order = np.lexsort((res.seed[mask], -res.regret[mask]))[:WORST_SEEDS]
        listed = [int(line.split("|")[1]) for line in text.splitlines()[2:]]
        assert listed == res.seed[mask][order].tolist()


def test_wilcoxon_table_equals_scipy_on_the_csv(experiment) -> None:
    _, _, written = experiment
    res = Results.read(written["results"])
    table = _rows(written["wilcoxon_csv"])
    assert {(r["env"], r["agent"], int(r["budget"])) for r in table} == {
        (e, a, b) for e in (TINY_MV, TINY_SYNTH) for a in ("uniform", "random") for b in BUDGETS
    }
    for r in table:
        agent = res.acr[res.mask(env=r["env"], agent=r["agent"], budget=int(r["budget"]))]
        ref = res.acr[res.mask(env=r["env"], agent="psst", budget=int(r["budget"]))]
        order_a = np.argsort(res.seed[res.mask(env=r["env"], agent=r["agent"], budget=int(r["budget"]))])
        order_r = np.argsort(res.seed[res.mask(env=r["env"], agent="psst", budget=int(r["budget"]))])
        a, b = agent[order_a], ref[order_r]
        if np.all(a == b):
            assert float(r["p_value"]) == 1.0
        else:
            assert float(r["p_value"]) == pytest.approx(sps.wilcoxon(a, b, alternative="two-sided").pvalue)
        assert int(r["n_pairs"]) == RUNS


def test_plots_and_report_are_written(experiment) -> None:
    _, _, written = experiment
    for key in ("acr_plot", "n_plot"):
        data = written[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    text = written["report"].read_text()
    assert "TestTinyMV" in text and "| PSST |" in text and "## The paper's claims, checked" in text
    assert "![ACR against budget](acr_vs_budget.png)" in text


def test_rerun_skips_finished_runs_and_extends_only_new_seeds(experiment) -> None:
    args, _, written = experiment
    before = written["results"].read_text()
    runner, _ = train.run_experiment(args, log=lambda s: None)
    assert runner.fits == 0
    assert written["results"].read_text() == before
    only = train.Args(**{**vars(args), "runs": RUNS + 3, "analyse_only": True})
    runner, again = train.run_experiment(only, log=lambda s: None)
    assert runner.fits == 0 and written["results"].read_text() == before  # analysis never fits
    assert again["report"].read_text().count("| PSST |") == 2  # one results table per task
    more = train.Args(**{**vars(args), "runs": RUNS + 2, "env": TINY_MV, "agents": "psst", "report": ""})
    runner, _ = train.run_experiment(more, log=lambda s: None)
    assert runner.fits == len(BUDGETS)  # one batch per budget, of the two new seeds only
    rows = _rows(written["results"])
    assert len(rows) == 2 * len(AGENTS) * len(BUDGETS) * RUNS + 2 * len(BUDGETS)
    new = [r for r in rows if int(r["seed"]) >= RUNS]
    assert {(r["agent"], int(r["seed"])) for r in new} == {("psst", RUNS), ("psst", RUNS + 1)}


def test_unknown_task_is_a_clear_error(tiny_tasks: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["--env", "IAPO-Nope-v0", "--agents", "psst", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "unknown task id(s) IAPO-Nope-v0" in err and "IAPO-SynthBernoulli-v0" in err


def test_agents_without_their_own_fit_many_run_one_seed_per_chunk(tiny_tasks: None, tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    args = train.Args(env=TINY_MV, agents="ppo,random,psst", budgets="40", runs=3, out=str(tmp_path), progress=False)
    runner = train.Runner(args, train.make_plan(args))
    assert [runner.chunk_size(a) for a in ("ppo", "random", "psst")] == [1, train.BATCH_CHUNK, train.BATCH_CHUNK]
    assert runner.chunks(TINY_MV, "ppo", 40) == [[0], [1], [2]] and runner.chunks(TINY_MV, "random", 40) == [[0, 1, 2]]
