"""``train.py --executor ray``: the same rows as the local executor, and a killed worker loses nothing.

A real Ray instance (``ray.init`` on 127.0.0.1 with two CPUs) runs the cells; the driver is the
only writer of results.csv.
"""

from __future__ import annotations

import csv
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from iapo_gym.experiments import train  # noqa: E402

ENV = "IAPO-SynthBernoulli-v0"
COMMON = ["--env", ENV, "--budgets", "500,2k", "--runs", "6", "--chunk", "2", "--no-plots", "--no-progress"]

# An agent that, the first time any process runs it, records its PID and waits to be killed.
KILL_ONCE = textwrap.dedent(
    '''
    import os, time
    from pathlib import Path
    from iapo_gym.agents.psst import PSST

    class KillOnce(PSST):
        """PSST whose first fit_many call (in any process) waits for the test to SIGKILL it."""

        def fit_many(self, make_env, budget, seeds):
            marker = Path(os.environ["IAPO_TEST_KILL_MARKER"])
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(60)  # bounded: the test kills this process long before
            return super().fit_many(make_env, budget, seeds)
    '''
)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        got = [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]
    return sorted(got, key=lambda r: (r["env"], r["agent"], int(r["budget"]), int(r["seed"])))


@pytest.fixture()
def ray_cluster():
    """A private two-CPU Ray instance for one test (started by the executor, shut down here)."""
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_rows_equal_local_rows_and_resume(tmp_path: Path, ray_cluster: None) -> None:
    agents = ["--agents", "psst,uniform,ucb"]
    assert train.main([*COMMON, *agents, "--out", str(tmp_path / "local")]) == 0
    # part of the sweep on Ray, then the rest (resume): every cell exactly once, same values
    part = [a if a != "6" else "4" for a in COMMON]
    assert train.main([*part, *agents, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert len(rows(tmp_path / "ray")) == 3 * 2 * 4
    assert train.main([*COMMON, *agents, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    local, remote = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert len(local) == 3 * 2 * 6
    assert remote == local  # bit-identical values (the CSV text), wall-clock aside
    assert len({(r["agent"], r["budget"], r["seed"]) for r in remote}) == len(remote)
    assert len({r["acr"] for r in remote}) > 1  # the runs really differ


def test_killed_worker_is_retried_and_nothing_is_lost(tmp_path: Path, ray_cluster: None, monkeypatch) -> None:
    (tmp_path / "usermod").mkdir()
    (tmp_path / "usermod" / "kill_once_agent.py").write_text(KILL_ONCE)
    marker = tmp_path / "killed.pid"
    # the Ray workers inherit the driver's environment: they import the user's module from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "usermod"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("IAPO_TEST_KILL_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "usermod"))
    agents = ["--agents", "killme=kill_once_agent:KillOnce"]
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.1)
        time.sleep(0.5)
        if marker.exists():
            pid = int(marker.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    assert train.main([*COMMON, *agents, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    t.join(timeout=5)
    assert killed and killed[0] != os.getpid()  # a Ray worker process died mid-cell
    # the same sweep in this process (the marker exists now, so nothing waits)
    assert train.main([*COMMON, *agents, "--out", str(tmp_path / "local")]) == 0
    remote, local = rows(tmp_path / "ray"), rows(tmp_path / "local")
    assert len(remote) == 2 * 6
    assert remote == local


def test_bad_executor_options_are_one_line_errors(capsys) -> None:
    assert train.main([*COMMON, "--agents", "psst", "--executor", "spark", "--out", "unused"]) == 2
    assert "--executor must be one of local, process, ray" in capsys.readouterr().err
    assert train.main([*COMMON, "--agents", "psst", "--ray-address", "auto", "--out", "unused"]) == 2
    assert "--ray-address only applies with --executor ray" in capsys.readouterr().err
