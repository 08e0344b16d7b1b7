"""``train.py --executor process``: real worker processes give the local executor's rows, bit for bit.

The reproduction preset runs its cells this way (one worker per CPU); the driver stays the only
writer of results.csv.
"""

from __future__ import annotations

import csv
import os
import textwrap
from pathlib import Path

import pytest

from iapo_gym.experiments import train

ENV = "IAPO-SynthBernoulli-v0"
COMMON = ["--env", ENV, "--budgets", "500,2k", "--chunk", "2", "--no-plots", "--no-progress"]

BOOM = textwrap.dedent(
    '''
    from iapo_gym.agents.psst import PSST

    class Boom(PSST):
        """PSST that fails on the chunk holding seed 3."""

        def fit_many(self, make_env, budget, seeds):
            if 3 in list(seeds):
                raise RuntimeError("boom on seed 3")
            return super().fit_many(make_env, budget, seeds)
    '''
)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        got = [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]
    return sorted(got, key=lambda r: (r["env"], r["agent"], int(r["budget"]), int(r["seed"])))


def test_process_rows_equal_local_rows_and_resume(tmp_path: Path) -> None:
    agents = ["--agents", "psst,uniform,ucb"]
    assert train.main([*COMMON, "--runs", "6", *agents, "--out", str(tmp_path / "local")]) == 0
    # part of the sweep on two worker processes, then the rest (resume): every run once, same values
    proc = ["--executor", "process", "--workers", "2"]
    assert train.main([*COMMON, "--runs", "4", *agents, *proc, "--out", str(tmp_path / "proc")]) == 0
    assert len(rows(tmp_path / "proc")) == 3 * 2 * 4
    assert train.main([*COMMON, "--runs", "6", *agents, *proc, "--out", str(tmp_path / "proc")]) == 0
    local, remote = rows(tmp_path / "local"), rows(tmp_path / "proc")
    assert len(local) == 3 * 2 * 6
    assert remote == local  # bit-identical values (the CSV text), wall-clock aside
    assert len({r["acr"] for r in remote}) > 1  # the runs really differ


def test_a_failing_cell_stops_the_sweep_and_keeps_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usermod").mkdir()
    (tmp_path / "usermod" / "boom_agent.py").write_text(BOOM)
    monkeypatch.syspath_prepend(str(tmp_path / "usermod"))  # spawned workers get the driver's sys.path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "usermod"), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(RuntimeError, match="boom on seed 3"):
        train.run_experiment(env=ENV, agents="boom=boom_agent:Boom", budgets=[500], runs=6, chunk=2,
                             executor="process", workers=2, out=str(tmp_path / "out"), track=False, plots=False,
                             progress=False, log=lambda _: None)
    path = tmp_path / "out" / "results.csv"
    seeds = {int(r["seed"]) for r in rows(tmp_path / "out")} if path.exists() else set()
    assert seeds <= {0, 1, 4, 5}  # whatever finished is recorded; the failed chunk is not


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "2"], "--workers only applies with --executor process"),
        (["--executor", "process", "--workers", "-1"], "--workers must be >= 0"),
        (["--executor", "threads"], "--executor must be one of local, process, ray"),
    ],
)
def test_bad_process_options_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main([*COMMON, *argv, "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_reproduction_preset_runs_on_worker_processes() -> None:
    args = train.parse_args(["--preset", "reproduction"])
    assert args.executor == "process" and args.workers == 0
    assert train.parse_args(["--preset", "reproduction", "--executor", "local"]).executor == "local"
