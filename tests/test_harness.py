"""One experiment harness: ``iapo_gym.experiments.run_experiment`` behind train.py and the report scripts.

``train.py``'s command line and ``run_experiment(**options)`` build the same plan and write the same
rows; the report scripts run their fits through it (no second run loop) and compute their
intervals with the Student-t / robust statistics of ``iapo_gym.experiments``.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from iapo_gym.experiments import ArgumentError, make_args, run_experiment
from iapo_gym.experiments import train as train_module
from iapo_gym.experiments.results import Results
from iapo_gym.experiments.stats import mean_ci

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("continuous_report", "paired_report", "beyond_report", "exact_reference")


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.pop("wall_s")  # timing, not a result
    return sorted(rows, key=lambda r: (r["agent"], int(r["budget"]), int(r["seed"])))


def test_the_public_harness_writes_what_the_command_line_writes(tmp_path: Path) -> None:
    options = ["--env", "IAPO-SynthBernoulli-v0", "--agents", "psst,uniform", "--budgets", "300,1k", "--runs", "3",
               "--seed", "4", "--no-track", "--no-plots", "--no-progress"]
    assert train_module.main([*options, "--out", str(tmp_path / "cli")]) == 0
    runner, written = run_experiment(env="IAPO-SynthBernoulli-v0", agents=["psst", "uniform"], budgets=[1000, 300],
                                     runs=3, seed=4, out=str(tmp_path / "api"), track=False, plots=False,
                                     progress=False, log=lambda _: None)
    assert runner.new_runs == 2 * 2 * 3 and written["results"] == tmp_path / "api" / "results.csv"
    assert _rows(tmp_path / "api" / "results.csv") == _rows(tmp_path / "cli" / "results.csv")
    # options override a given Args; the same call again resumes (nothing left to fit)
    again, _ = run_experiment(make_args(env="IAPO-SynthBernoulli-v0", runs=1), agents="psst,uniform", budgets="300,1k",
                              runs=3, seed=4, out=str(tmp_path / "api"), track=False, plots=False, progress=False,
                              log=lambda _: None)
    assert again.new_runs == 0 and again.fits == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runz": 3}, "unknown option 'runz'"),
        ({"runs": "3"}, "runs = '3' must be a int"),
        ({"track": 1}, "track = 1 must be a bool"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
    ],
)
def test_harness_options_are_checked(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match=re.escape(message)):
        run_experiment(out=str(tmp_path), **options)
    assert not (tmp_path / "results.csv").exists()


def test_scripts_have_no_run_loop_of_their_own_and_no_normal_intervals() -> None:
    for name in SCRIPTS:
        text = (REPO / "scripts" / f"{name}.py").read_text()
        assert "from iapo_gym.experiments import train" not in text and "import train\n" not in text, name
        assert "fit_many(" not in text and ".fit(" not in text, f"{name} fits agents outside the harness"
        assert "1.96" not in text and "norm.ppf" not in text, f"{name} uses a normal-approximation interval"
        assert "ContinuousEvaluator" not in text and "policy_acr" not in text, name


def test_continuous_report_runs_through_the_harness(tmp_path: Path) -> None:
    report = _script("continuous_report")
    out, doc = tmp_path / "out", tmp_path / "CONTINUOUS.md"
    argv = ["--runs", "3", "--ppo-runs", "0", "--budgets", "200,400", "--agents", "psst_grid,grid_oracle",
            "--tasks", "SynthCategorical", "--out", str(out), "--doc", str(doc), "--figures", str(tmp_path / "fig"),
            "--no-progress"]
    assert report.main(argv) == 0
    res = Results.read(out / "results.csv")
    assert set(res.contexts.tolist()) == {"continuous"} and len(res) == 2 * 2 * 3
    # the same rows as train.py --contexts continuous with the same agents
    assert train_module.main(["--env", "IAPO-SynthCategorical-v0", "--contexts", "continuous", "--agents",
                              "psst_grid,grid_oracle=iapo_gym.experiments.references:GridOracle", "--budgets", "200,400",
                              "--runs", "3", "--out", str(tmp_path / "cli"), "--no-track", "--no-plots",
                              "--no-progress"]) == 0
    assert _rows(out / "results.csv") == _rows(tmp_path / "cli" / "results.csv")
    oracle_rows = res.mask(agent="grid_oracle")
    assert np.all(res.budget_used[oracle_rows] == 0)
    assert np.all(res.acr[oracle_rows] <= res.oracle_acr[oracle_rows] + 1e-12)
    text = doc.read_text()
    for b in (200, 400):  # the page's cells are Student-t intervals and paired Wilcoxon p of those rows
        x = res.acr[res.mask(agent="psst_grid", budget=b)]
        mean, half = mean_ci(x)
        assert f"| {b:,} | {mean:.4f} +- {half:.4f} (n=3)" in text
        y = res.regret[res.mask(agent="grid_oracle", budget=b)]
        assert f"| {b:,} | {x.size and res.regret[res.mask(agent='psst_grid', budget=b)].mean():.4f} +- " in text
        assert f" | {y.mean():.4f} +- {mean_ci(y)[1]:.4f} |" in text
    assert (tmp_path / "fig" / "continuous_SynthCategorical.png").stat().st_size > 0
    # --analyse-only fits nothing and writes the same page
    before = doc.read_text()
    assert report.main([*argv, "--analyse-only"]) == 0
    assert doc.read_text() == before


def test_paired_report_runs_through_the_harness(tmp_path: Path) -> None:
    report = _script("paired_report")
    out, doc = tmp_path / "out", tmp_path / "PAIRED.md"
    argv = ["--tasks", "IAPO-SynthBernoulli-v0", "--runs", "3", "--budgets", "300", "--out", str(out), "--doc",
            str(doc), "--figure", str(tmp_path / "figures" / "paired.png"), "--no-progress"]
    assert report.main(argv) == 0
    res = Results.read(out / "SynthBernoulli" / "results.csv")
    assert len(res) == len(report.AGENTS) * 3
    text = doc.read_text()
    for agent in report.AGENTS:
        mean, half = mean_ci(res.regret[res.mask(agent=agent)])
        assert f"| {agent} | {mean:.4f} +- {half:.4f} |" in text
    from iapo_gym.experiments.evaluate import train_oracle_regrets

    floor = train_oracle_regrets("IAPO-SynthBernoulli-v0", [0, 1, 2])
    assert f"train-oracle floor: {floor.mean():.4f}" in text and np.all(floor >= 0)


def test_beyond_report_draws_its_pareto_views_with_the_package_function(tmp_path: Path) -> None:
    report = _script("beyond_report")
    assert "def plot_pareto(results" not in (REPO / "scripts" / "beyond_report.py").read_text()
    out, doc, figs = tmp_path / "out", tmp_path / "BEYOND.md", tmp_path / "fig"
    argv = ["--tasks", "IAPO-SmolArith-v0", "--runs", "2", "--budgets", "1k,5k,20k", "--out", str(out),
            "--doc", str(doc), "--figures", str(figs), "--no-progress"]
    assert report.main(argv) == 0
    res = Results.read(out / "SmolArith" / "results.csv")
    assert len(res) == len(report.AGENTS) * 3 * 2
    assert (figs / "beyond_pareto_SmolArith.png").stat().st_size > 0
    assert f"![Pareto SmolArith]({figs / 'beyond_pareto_SmolArith.png'})" in doc.read_text()
    # the hand-written section (the same markers as every report page) survives a regeneration
    from iapo_gym.experiments.report import HAND_BEGIN, HAND_END

    text = doc.read_text()
    assert text.endswith(f"{HAND_BEGIN}\n\n{HAND_END}\n")  # an empty section on a new page
    doc.write_text(text.replace(f"{HAND_BEGIN}\n\n{HAND_END}", f"{HAND_BEGIN}\nwritten by hand\n{HAND_END}"))
    by_name = [*argv, "--analyse-only"]
    by_name[1] = "SmolArith"  # a task name reads the same results as its env id
    assert report.main(by_name) == 0
    assert doc.read_text().endswith(f"{HAND_BEGIN}\nwritten by hand\n{HAND_END}\n")
    assert "## IAPO-SmolArith-v0" in doc.read_text()


@pytest.mark.parametrize(
    ("option", "value", "names"),
    [("--tasks", "Smol", ["--tasks", "'Smol'", "SmolArith"]), ("--budgets", "5q", ["--budgets", "'5q'"]),
     ("--agents", "psst,nope", ["--agents", "nope", "psst_model"])],
)
def test_beyond_report_refuses_a_bad_option_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, names: list[str]
) -> None:
    report = _script("beyond_report")
    argv = ["--tasks", "SmolArith", "--runs", "1", "--budgets", "1k", "--out", str(tmp_path / "out"),
            "--doc", str(tmp_path / "B.md"), "--figures", str(tmp_path / "fig"), "--no-progress", option, value]
    with pytest.raises(SystemExit) as exc:
        report.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.split(": error: ")[1].startswith(option)
    assert all(n in last for n in names), last
    assert not (tmp_path / "out" / "SmolArith" / "results.csv").exists()


def test_report_pages_keep_their_hand_written_section(tmp_path: Path) -> None:
    """The paired and continuous pages put back what was written between the markers."""
    from iapo_gym.experiments.report import HAND_BEGIN, HAND_END

    cases = {
        "paired_report": ["--tasks", "IAPO-SynthBernoulli-v0", "--runs", "2", "--budgets", "300",
                          "--figure", str(tmp_path / "paired.png")],
        "continuous_report": ["--runs", "2", "--ppo-runs", "0", "--budgets", "200", "--agents", "psst_grid",
                              "--tasks", "SynthCategorical", "--figures", str(tmp_path / "fig")],
    }
    for name, argv in cases.items():
        report, doc = _script(name), tmp_path / f"{name}.md"
        argv = [*argv, "--out", str(tmp_path / name), "--doc", str(doc), "--no-progress"]
        assert report.main(argv) == 0
        text = doc.read_text()
        assert f"{HAND_BEGIN}\n\n{HAND_END}" in text  # an empty section on a new page
        doc.write_text(text.replace(f"{HAND_BEGIN}\n\n{HAND_END}", f"{HAND_BEGIN}\nwritten by hand\n{HAND_END}"))
        assert report.main([*argv, "--analyse-only"]) == 0
        assert f"{HAND_BEGIN}\nwritten by hand\n{HAND_END}" in doc.read_text(), name


def test_oracle_allocation_bound_takes_a_task_name_or_its_env_id(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bound = _script("oracle_allocation_bound")
    # the genie's candidates: the union over contexts of each context's k best prompts by their best arm
    q = np.array([[[0.1, 0.5], [0.9, 0.2], [0.3, 0.95]], [[0.8, 0.1], [0.2, 0.3], [0.6, 0.0]]])  # (C=2, P=3, N=2)
    assert bound.candidates(q, 1).tolist() == [0, 2] and bound.candidates(q, 2).tolist() == [0, 1, 2]
    assert bound.candidates(q, 0).tolist() == [0, 1, 2]
    options = ["--runs", "2", "--seed", "3", "--budgets", "600", "--k", "1"]
    assert bound.main(["SynthBernoulli", *options]) == 0
    by_name = capsys.readouterr().out
    assert bound.main(["IAPO-SynthBernoulli-v0", *options]) == 0
    assert capsys.readouterr().out == by_name and by_name.startswith("IAPO-SynthBernoulli-v0: 2 runs (seeds 3..4)")
    assert re.search(r"T=600 top-1 per context: best m=\d+ 0\.\d{4}", by_name)
    with pytest.raises(SystemExit, match=r"task 'Bernoulli' is unknown; give a task name \(.*SynthBernoulli"):
        bound.main(["Bernoulli", *options])
    monkeypatch.setenv("IAPO_GYM_DATA", str(tmp_path))  # no table installed: one line naming the command that installs it
    with pytest.raises(SystemExit, match=r"^oracle_allocation_bound\.py: no table named 'MATH' .*iapo-gym data import"):
        bound.main(["MATH", *options])


def test_split_diagnosis_matches_a_hand_computation() -> None:
    """Every column of the split diagnosis, recomputed from the oracle and the fitted policies."""
    from iapo_gym import oracle
    from iapo_gym.agents.psst import PSST
    from iapo_gym.experiments import env_factory
    from iapo_gym.experiments.evaluate import train_oracle_regrets

    diag = _script("split_diagnosis")
    task, seeds = "IAPO-SmolArith-v0", [8, 9, 10, 11]  # seeds 9 and 11: the train-best prompt is not the table's
    train_oracle, cell = diag.diagnose(task, seeds, [("psst", 1000)])
    assert (train_oracle.label, cell.label) == ("train oracle", "psst at 1,000")
    assert train_oracle.mean(train_oracle.regret) == pytest.approx(float(train_oracle_regrets(task, seeds).mean()), abs=1e-12)
    assert train_oracle.agree.all() and not train_oracle.top.all()
    make = env_factory(task, 1000)
    policies = PSST().fit_many(make, 1000, seeds)
    agree, top, excess = [], [], []
    for seed, policy in zip(seeds, policies, strict=True):
        env = make(seed)
        table, train, test = env.table, np.asarray(env.train_queries), np.asarray(env.test_queries)
        q_train, q_test, q_all = oracle.q_values(table, train), oracle.q_values(table, test), oracle.q_values(table)
        arms, n_max = policy.act(env.contexts.weights), table.n_max
        agree.append(arms // n_max == oracle.best_arms(q_train) // n_max)
        top.append(arms // n_max == oracle.best_arms(q_all) // n_max)
        run = cell.regret[len(agree) * 3 - 3 : len(agree) * 3]
        by_hand = float(oracle.regret(q_test, arms, env.contexts.probs))
        assert float(np.dot(env.contexts.probs, run)) == pytest.approx(by_hand, abs=1e-12)
        flat = oracle.best_arms(q_train)
        c = np.arange(flat.size)
        excess.append((q_train.reshape(flat.size, -1)[c, flat] - q_all.reshape(flat.size, -1)[c, flat],
                       q_test.reshape(flat.size, -1)[c, flat] - q_all.reshape(flat.size, -1)[c, flat], train.size / test.size))
    np.testing.assert_array_equal(cell.agree, np.concatenate(agree))
    np.testing.assert_array_equal(cell.top, np.concatenate(top))
    assert train_oracle.train_excess is not None and train_oracle.test_excess is not None
    np.testing.assert_allclose(train_oracle.train_excess, np.concatenate([e[0] for e in excess]), atol=1e-12)
    np.testing.assert_allclose(train_oracle.test_excess, np.concatenate([e[1] for e in excess]), atol=1e-12)
    # the split identity: what the train split over-rates, the test split (its complement) under-rates n_train / n_test times
    ratio = excess[0][2]
    np.testing.assert_allclose(train_oracle.test_excess, -ratio * train_oracle.train_excess, atol=1e-12)


@pytest.mark.parametrize(
    ("argv", "names"),
    [(["Smol"], ["'Smol'", "SmolArith"]), (["SmolArith", "--cells", "psst"], ["--cells", "'psst'", "agent@budget"]),
     (["SmolArith", "--cells", "psst@5q"], ["--cells", "'psst@5q'"]),
     (["SmolArith", "--cells", "nope@1k"], ["--cells", "nope", "psst_model"]), (["SmolArith", "--runs", "0"], ["--runs"])],
)
def test_split_diagnosis_refuses_a_bad_argument_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], names: list[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _script("split_diagnosis").main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "Traceback" not in err and last.startswith("split_diagnosis.py: error: ")
    assert all(n in last for n in names), last


def test_split_diagnosis_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _script("split_diagnosis").main(["SmolArith", "--runs", "2", "--cells", "psst@1k,k2=topk1@1k"]) == 0
    out = capsys.readouterr().out
    assert "| train oracle | 1.000 |" in out and "| psst at 1,000 |" in out and "| k2 at 1,000 |" in out
    assert "seeds 0-1 (2 runs)" in out and "The train-best arm's exact value above its all-query value" in out
