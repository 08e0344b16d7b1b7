"""train.py as users drive it: their own agents (import path, entry point, hyper-parameters, TOML),
threads, one-line errors, Ctrl-C / SIGKILL and resume, a second process on one --out, results that
accumulate, TensorBoard after a kill, file permissions. Real subprocesses, real event files."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from iapo_gym.experiments import train
from iapo_gym.experiments.results import Results, ResultsFile

ENV = "IAPO-SynthBernoulli-v0"
REPO = Path(__file__).resolve().parents[1]

#: The one-file agent of docs/AGENTS.md, plus a slow one (for interrupts) and a thread probe.
USER_MODULE = textwrap.dedent('''
    import json, os, sys, time
    from dataclasses import dataclass
    import numpy as np
    from iapo_gym.agents.base import Agent, TablePolicy

    @dataclass
    class BestOfFirstPull(Agent):
        """Pull every prompt once at N = n, deploy the best prompt per context."""
        n: int = 4
        name = "best_of_first_pull"

        def fit(self, env, budget, seed):
            env = env.unwrapped
            env.reset(seed=seed)
            n = min(self.n, env.n_max)
            prompts = np.arange(min(env.n_prompts, budget // n))
            arms = np.zeros(len(env.contexts), dtype=np.int64)
            if prompts.size:
                u = env.score(env.pull(prompts, np.full(prompts.size, n)))
                arms = prompts[u.argmax(axis=1)] * env.n_max + n - 1
            return TablePolicy(env.contexts, arms, env.n_max, budget_used=int(prompts.size * n))

    @dataclass
    class Slow(BestOfFirstPull):
        """BestOfFirstPull that sleeps before each run (to interrupt it half-way)."""
        sleep: float = 0.3
        name = "slow"

        def fit(self, env, budget, seed):
            time.sleep(self.sleep)
            return super().fit(env, budget, seed)

    @dataclass
    class ThreadProbe(BestOfFirstPull):
        """Records the thread limits it runs under (torch and the BLAS pools) in $PROBE_FILE."""
        name = "probe"

        def fit(self, env, budget, seed):
            import torch
            from threadpoolctl import threadpool_info
            with open(os.environ["PROBE_FILE"], "a") as fh:
                fh.write(json.dumps({"torch": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
                                     "blas": [p["num_threads"] for p in threadpool_info()]}) + "\\n")
            return super().fit(env, budget, seed)
''')


def _write_module(directory: Path, name: str = "my_agent") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(USER_MODULE)
    return path


def _train(args: list[str], cwd: Path, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "iapo_gym.experiments.train", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300, **kw)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)] if tag in ea.Tags()["scalars"] else []


# --------------------------------------------------------------------------- users' agents
def test_user_agent_from_a_module_runs_like_a_zoo_agent(tmp_path: Path) -> None:
    _write_module(tmp_path)
    proc = _train(["--env", ENV, "--agents", "psst,mine=my_agent:BestOfFirstPull,my_agent:BestOfFirstPull",
                   "--agent-args", "mine:n=2", "--budgets", "100,400", "--runs", "4", "--out", "out", "--no-progress"],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    rows = _rows(out / "results.csv")
    by_agent: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_agent.setdefault(r["agent"], []).append(r)
    # the import path without a label is named by the class's own `name`
    assert sorted(by_agent) == ["best_of_first_pull", "mine", "psst"] and all(len(v) == 8 for v in by_agent.values())
    cfg = {a: json.loads(v[0]["agent_config"]) for a, v in by_agent.items()}
    assert cfg["mine"] == {"agent": "my_agent:BestOfFirstPull", "source": "import", "config": {"n": 2}}
    assert cfg["best_of_first_pull"]["config"] == {"n": 4} and cfg["psst"]["source"] == "zoo"
    # n=2 pulls 32 prompts x 2 = 64 completions, n=4 pulls min(32, T/4) prompts x 4
    assert {int(r["budget_used"]) for r in by_agent["mine"]} == {64}
    assert {(int(r["budget"]), int(r["budget_used"])) for r in by_agent["best_of_first_pull"]} == {(100, 100), (400, 128)}
    # TensorBoard: one run per label, the CSV means read back, the hyper-parameters recorded
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = out / "tb" / f"{ENV}__mine__0x4__finite"
    acr = dict(_scalars(run, "charts/acr"))
    res = Results.read(out / "results.csv")
    assert acr == pytest.approx({b: res.acr[res.mask(agent="mine", budget=b)].mean() for b in (100, 400)}, rel=1e-6)
    ea = EventAccumulator(str(run), size_guidance={"tensors": 0})
    ea.Reload()
    table = ea.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|agent.n|2|" in table and "|agent.target|my_agent:BestOfFirstPull|" in table
    # significance tests and figures include it
    pairs = {(r["agent"], int(r["budget"])) for r in _rows(out / "wilcoxon.csv")}
    assert pairs == {(a, b) for a in ("mine", "best_of_first_pull") for b in (100, 400)}
    assert (out / "acr_vs_budget.png").stat().st_size > 5000 and (out / "regret_diff.png").stat().st_size > 5000


def test_agent_registered_by_an_installed_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _write_module(site / "thirdparty_agents", "__init__")
    dist = site / "thirdparty_agents-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-agents\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[iapo_gym.agents]\nfirst_pull = thirdparty_agents:BestOfFirstPull\n")
    (dist / "RECORD").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = _train(["--env", ENV, "--agents", "first_pull,random", "--agent-args", "first_pull:n=3",
                   "--budgets", "200", "--runs", "3", "--out", "out", "--no-progress"], cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in _rows(work / "out" / "results.csv") if r["agent"] == "first_pull"]
    assert len(rows) == 3 and {int(r["budget_used"]) for r in rows} == {96}  # 32 prompts x n=3
    cfg = json.loads(rows[0]["agent_config"])
    assert cfg["source"] == "entry point first_pull = thirdparty_agents:BestOfFirstPull" and cfg["config"] == {"n": 3}
    assert _scalars(work / "out" / "tb" / f"{ENV}__first_pull__0x3__finite", "charts/regret")
    # the entry point is listed among the available agents when a name is wrong
    bad = _train(["--env", ENV, "--agents", "first_pul", "--out", "o2"], cwd=work, env=env)
    assert bad.returncode == 2 and "first_pull" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_toml_experiment_file_sets_options_and_agents(tmp_path: Path) -> None:
    _write_module(tmp_path)
    (tmp_path / "exp.toml").write_text(textwrap.dedent(f'''
        env = "{ENV}"
        budgets = [150, 300]
        runs = 2
        out = "out"
        progress = false
        [agents.random]
        [agents.k2]
        agent = "topk4"
        k = 2
        rho = 0.1
        [agents.mine]
        agent = "my_agent:BestOfFirstPull"
        n = 1
    '''))
    args = train.parse_args(["--config", str(tmp_path / "exp.toml"), "--runs", "3"])  # the command line wins
    assert (args.env, args.budgets, args.runs, args.out) == (ENV, "150,300", 3, "out")
    assert args.agents == "random,k2=topk4,mine=my_agent:BestOfFirstPull"
    proc = _train(["--config", "exp.toml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = {r["agent"]: json.loads(r["agent_config"]) for r in _rows(tmp_path / "out" / "results.csv")}
    assert cfg["k2"]["agent"] == "topk4" and cfg["k2"]["config"]["k"] == 2 and cfg["k2"]["config"]["rho"] == 0.1
    assert cfg["mine"]["config"] == {"n": 1}
    (tmp_path / "bad.toml").write_text("runz = 3\n")
    bad = _train(["--config", "bad.toml"], cwd=tmp_path)
    assert bad.returncode == 2 and "unknown option 'runz'" in bad.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--agent-args", "psst:nope=1"], "unknown hyper-parameter(s) nope; psst takes"),
        (["--agents", "topk4", "--agent-args", "topk4:k=0.5"], "k=0.5 must be int"),
        (["--agents", "triple_n1", "--agent-args", "triple_n1:n='two'"], "n must be 'one' or 'random'; got 'two'"),
        (["--agent-args", "ucbb:c=1"], "ucbb not among --agents"),
        (["--agent-args", "psst"], "must look like label:key=value"),
        (["--agents", "nosuch.module:Agent"], "cannot import 'nosuch.module'"),
        (["--agents", "iapo_gym.env:IAPOEnv"], "not an iapo_gym Agent"),
        (["--agents", "psst,psst=uniform"], "used twice"),
        (["--reference", "ucbx"], "--reference 'ucbx' is not an agent of this experiment"),
        (["--write-docs"], "--write-docs only applies to a preset"),
        (["--no-plots", "--figures", "f"], "--figures has no effect with --no-plots"),
        (["--threads", "-1"], "--threads must be >= 0"),
    ],
)
def test_bad_commands_are_one_line_naming_the_fix(argv, needle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--env", ENV, "--budgets", "100", "--runs", "2", "--no-progress"]
    if "--agents" not in argv:  # an option is given once (a repeat is refused)
        base += ["--agents", "psst,ucb"]
    rc = train.main([*base, "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "results.csv").exists()  # nothing ran


def test_changed_hyper_parameters_under_one_label_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--env", ENV, "--agents", "topk4", "--budgets", "200", "--runs", "2", "--out", str(tmp_path), "--no-progress",
            "--no-plots", "--no-track"]
    assert train.main(base) == 0
    capsys.readouterr()
    assert train.main([*base, "--agent-args", "topk4:k=2"]) == 2
    err = capsys.readouterr().err
    assert "other hyper-parameters (k: 4 -> 2)" in err and "--agents topk4_v2=topk4" in err
    assert train.main([*base[:3], "topk4,topk4_v2=topk4", *base[4:], "--agent-args", "topk4_v2:k=2"]) == 0
    rows = ResultsFile(tmp_path / "results.csv").rows
    recorded = {(r["agent"], json.loads(r["agent_config"])["config"]["k"]) for r in rows}
    assert sorted(recorded) == [("topk4", 4), ("topk4_v2", 2)]


def test_missing_table_and_damaged_results_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("IAPO_GYM_DATA", str(tmp_path / "empty"))
    assert train.main(["--env", "IAPO-MATH-v0", "--agents", "psst", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "iapo-gym data pull MATH" in err and "--skip-missing" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "o2"
    out.mkdir()
    (out / "results.csv").write_text("a,b,c\n1,2,3\n")
    assert train.main(["--env", ENV, "--agents", "psst", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not this runner's" in err and "another --out" in err and len(err.strip().splitlines()) == 1
    assert (out / "results.csv").read_text() == "a,b,c\n1,2,3\n"  # left as it was


# --------------------------------------------------------------------------- threads
def test_threads_limit_torch_and_blas_inside_the_runs(tmp_path: Path) -> None:
    _write_module(tmp_path)
    probe = tmp_path / "probe.jsonl"
    common = ["--env", ENV, "--budgets", "100", "--runs", "1", "--no-progress", "--no-plots", "--no-track"]
    env = {"PROBE_FILE": str(probe), "OMP_NUM_THREADS": "", "OPENBLAS_NUM_THREADS": ""}
    for threads, out in (("1", "o1"), ("2", "o2")):
        proc = _train([*common, "--agents", "my_agent:ThreadProbe", "--threads", threads, "--out", out], cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    assert [s["torch"] for s in seen] == [1, 2] and [s["omp"] for s in seen] == ["1", "2"]
    assert all(set(b) == {int(s["omp"])} for s, b in zip(seen, (s["blas"] for s in seen), strict=True))


# --------------------------------------------------------------------------- interrupts, locks, kill + resume
def _wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n + 1:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the runner exited early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no results in time")


def test_ctrl_c_keeps_finished_runs_prints_one_line_and_resumes_exactly(tmp_path: Path) -> None:
    _write_module(tmp_path)
    # 1 s per slow run: the 12 of them outlast the second process's start-up (seconds on a loaded machine)
    argv = [sys.executable, "-m", "iapo_gym.experiments.train", "--env", ENV, "--agents", "slow=my_agent:Slow,random",
            "--budgets", "100,200", "--runs", "6", "--agent-args", "slow:sleep=1.0", "--out", "out", "--no-progress",
            "--no-plots"]  # fmt: skip
    # A child inherits an *ignored* SIGINT (Python then never raises KeyboardInterrupt in it): whatever
    # earlier code in this process did to the handler, start the runner with the default one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    results = tmp_path / "out" / "results.csv"
    _wait_rows(results, 2, proc)
    # a second process on the same --out is refused while the first one runs
    second = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"another train.py (pid {proc.pid}) is writing to out" in second.stderr
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    saved = len(_rows(results))
    assert 2 <= saved < 24 and f"interrupted: {saved} run(s) finished" in err and "run the same command again" in err
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _rows(results)
    keys = [(r["agent"], r["budget"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 24
    # resumed rows equal an uninterrupted run's
    fresh = tmp_path / "fresh"
    full = subprocess.run([*argv[:-4], "--out", str(fresh), "--no-progress", "--no-plots"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    strip = lambda rs: sorted((r["agent"], r["budget"], r["seed"], r["acr"], r["policy"]) for r in rs)  # noqa: E731
    assert strip(rows) == strip(_rows(fresh / "results.csv"))


def test_tensorboard_holds_every_configuration_after_sigkill_and_resume(tmp_path: Path) -> None:
    _write_module(tmp_path)
    argv = [sys.executable, "-m", "iapo_gym.experiments.train", "--env", ENV, "--agents", "slow=my_agent:Slow,psst",
            "--budgets", "100,200,300", "--runs", "2", "--out", "out", "--no-progress", "--no-plots",
            "--agent-args", "slow:sleep=0.2"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_rows(tmp_path / "out" / "results.csv", 3, proc)
    proc.kill()  # SIGKILL: nothing runs after it
    proc.communicate()
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    res = Results.read(tmp_path / "out" / "results.csv")
    assert len(res) == 12
    runs = sorted(p.name for p in (tmp_path / "out" / "tb").iterdir())
    assert runs == [f"{ENV}__psst__0x2__finite", f"{ENV}__slow__0x2__finite"]
    for agent in ("slow", "psst"):
        points = _scalars(tmp_path / "out" / "tb" / f"{ENV}__{agent}__0x2__finite", "charts/acr")
        assert [s for s, _ in points] == [100, 200, 300]  # every budget, once
        want = [res.acr[res.mask(agent=agent, budget=b)].mean() for b in (100, 200, 300)]
        assert [v for _, v in points] == pytest.approx(want, rel=1e-6)


def test_runs_recorded_without_tensorboard_are_logged_later_in_one_run(tmp_path: Path, capsys) -> None:
    base = ["--env", ENV, "--agents", "psst,uniform", "--runs", "2", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    assert train.main([*base, "--budgets", "200,400", "--no-track"]) == 0  # e.g. a kill between CSV and TensorBoard
    assert not (tmp_path / "tb").exists()
    assert train.main([*base, "--budgets", "400"]) == 0  # nothing to fit; TensorBoard catches up
    assert train.main([*base, "--budgets", "100,200,400"]) == 0  # a smaller budget added later
    res = Results.read(tmp_path / "results.csv")
    for agent in ("psst", "uniform"):
        run = tmp_path / "tb" / f"{ENV}__{agent}__0x2__finite"
        points = _scalars(run, "charts/acr")
        assert [s for s, _ in points] == [100, 200, 400]
        want = [res.acr[res.mask(agent=agent, budget=b)].mean() for b in (100, 200, 400)]
        assert [v for _, v in points] == pytest.approx(want)


# --------------------------------------------------------------------------- accumulation, presets, permissions
def test_analysis_covers_every_recorded_run_unless_only_plan(tmp_path: Path, capsys) -> None:
    base = ["--env", ENV, "--runs", "3", "--out", str(tmp_path), "--no-progress", "--no-track"]
    assert train.main([*base, "--agents", "psst,uniform", "--budgets", "100,300"]) == 0
    assert train.main([*base, "--agents", "random", "--budgets", "300"]) == 0
    table = {(r["agent"], int(r["budget"])) for r in _rows(tmp_path / "wilcoxon.csv")}
    assert table == {("uniform", 100), ("uniform", 300), ("random", 300)}  # everything, against psst
    summary = capsys.readouterr().out
    assert all(a in summary for a in ("psst", "uniform", "random"))
    assert train.main([*base, "--agents", "random,uniform", "--budgets", "300", "--only-plan", "--reference", "uniform"]) == 0
    assert {(r["agent"], int(r["budget"])) for r in _rows(tmp_path / "wilcoxon.csv")} == {("random", 300)}


def test_preset_writes_docs_only_when_asked() -> None:
    args = train.parse_args(["--preset", "reproduction"])
    assert Path(args.report) == Path("runs/reproduction/REPRODUCTION.md")
    assert Path(args.figures) == Path("runs/reproduction/figures")
    args = train.parse_args(["--preset", "reproduction", "--out", "elsewhere"])
    assert Path(args.report) == Path("elsewhere/REPRODUCTION.md")
    args = train.parse_args(["--preset", "reproduction", "--write-docs"])
    assert Path(args.report) == Path("docs/REPRODUCTION.md") and Path(args.figures) == Path("docs/figures")
    assert train.command_line(args) == "python train.py --preset reproduction --write-docs"


def test_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        args = train.Args(env=ENV, agents="psst,random", budgets="100", runs=2, out=str(tmp_path), progress=False)
        train.run_experiment(args, log=lambda s: None)
    finally:
        os.umask(old)
    for name in ("results.csv", "wilcoxon.csv", "wilcoxon.md", "contexts.json", "acr_vs_budget.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_progress_line_counts_runs_and_estimates_by_agent_and_budget() -> None:
    import io

    from iapo_gym.experiments.progress import Progress, format_seconds

    screen = io.StringIO()
    p = Progress([("fast", 1000, 10), ("slow", 1000, 10), ("fast", 5000, 10)], file=screen)
    assert p.total == 30 and np.isnan(p.eta())
    p.advance("fast", 1000, 10, 1.0)  # 1e-4 s per completion for fast
    assert p.eta() == pytest.approx(1e-4 * (10_000 + 50_000))  # slow not measured yet: the overall rate
    p.advance("slow", 1000, 10, 10.0)  # 1e-3 s per completion
    assert p.eta() == pytest.approx(1e-4 * 50_000)
    p.describe("SynthBernoulli fast T=5000 chunk 1/2")
    assert p.done == 20 and format_seconds(75) == "01:15" and format_seconds(3725) == "1:02:05"
    line = screen.getvalue().split("\r")[-1]
    assert line.startswith("SynthBernoulli fast T=5000 chunk 1/2: 20/30 runs |") and " 67% " in line
    assert line.rstrip().endswith("elapsed, ETA 00:05")
