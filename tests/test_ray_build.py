"""``iapo-gym build --executor ray``: units spread over Ray workers, one checkpoint on the driver.

A real Ray instance on 127.0.0.1 (two CPUs) and two local OpenAI-compatible test servers on two
ports (:class:`~iapo_gym.live.testserver.FakeChatServer`: each completion is a hash of the
messages, the request seed and the choice index, so any server answers a request the same way;
the tests check that the texts really vary). What is shown:

* a worker process SIGKILLed mid-build is restarted by Ray and its in-flight requests are sent
  again; a worker removed for good has its requests re-dispatched to the other one: either way
  the table is bit-identical to a single-process build with the same seed and the checkpoint holds
  every unit exactly once;
* a driver SIGKILLed mid-build leaves a checkpoint that the same command resumes, with the local
  executor too, generating only the missing units.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from iapo_gym.cli import main  # noqa: E402
from iapo_gym.live.checkpoint import read_units, scan  # noqa: E402
from iapo_gym.live.ray_build import ACTOR_PREFIX  # noqa: E402
from iapo_gym.live.testserver import FakeChatServer  # noqa: E402
from iapo_gym.tables.io import load_table  # noqa: E402

UNITS = 6 * 3  # --queries 6 x --prompts 3
ARGS = ["build", "smolarith", "--backend", "openai", "--served-model-name", "m", "--queries", "6", "--prompts", "3",
        "--pool", "3", "--seed", "11", "--no-progress", "--retries", "0"]


@pytest.fixture(scope="module")
def ray_instance():
    """A private two-CPU Ray instance on 127.0.0.1 for this module's tests; the builds join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _quiet_count(requests: list, quiet: float = 1.0, limit: float = 20.0) -> int:
    """The number of ``requests`` once none has arrived for ``quiet`` seconds (bounded by ``limit``)."""
    deadline = time.monotonic() + limit
    count, since = len(requests), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if len(requests) != count:
            count, since = len(requests), time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return count


def _units_in(ckpt: Path) -> int:
    return ckpt.read_bytes().count(b'"kind":"unit"') if ckpt.exists() else 0


def _same_table(out: Path, ref: Path) -> None:
    got, want = load_table(out), load_table(ref)
    for name in ("answer_probs", "gold", "cost", "split"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert got.provenance["answer_labels"] == want.provenance["answer_labels"]
    texts = {u["key"]: u["texts"] for u in read_units(Path(f"{out}.checkpoint.jsonl"))}
    ref_texts = {u["key"]: u["texts"] for u in read_units(Path(f"{ref}.checkpoint.jsonl"))}
    assert texts == ref_texts  # the same completions under the same content keys, unit by unit
    assert len({t for ts in texts.values() for t in ts}) > 3  # the completions really differ


def _once_each(ckpt: Path) -> list[dict]:
    s = scan(ckpt)
    assert not s.damaged
    units = [r for r in s.records if r["kind"] == "unit"]
    assert len(units) == UNITS and len({(u["key"], u["start"]) for u in units}) == UNITS  # nothing lost or duplicated
    return units


def _build_with_killer(tmp_path: Path, urls: str, kill, ready=lambda: True) -> tuple[int, list[int], list[float]]:
    """Run the Ray build in this thread; ``kill(actor)`` one worker once 4 units are checkpointed and ``ready()``."""
    ckpt = tmp_path / "ray.checkpoint.jsonl"
    killed: list[int] = []
    killed_at: list[float] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _units_in(ckpt) < 4:
            time.sleep(0.02)
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith(ACTOR_PREFIX))
        actor = ray.get_actor(names[0])
        pid = int(ray.get(actor.info.remote(), timeout=30)["pid"])
        while time.monotonic() < deadline and not ready():
            time.sleep(0.005)
        killed.append(pid)
        killed_at.append(time.monotonic())
        kill(actor, pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    rc = main([*ARGS, "--executor", "ray", "--endpoints", urls, "--concurrency", "2", "--out", str(tmp_path / "ray")])
    t.join(timeout=30)
    return rc, killed, killed_at


def test_killed_worker_process_is_restarted_and_the_table_is_bit_identical(tmp_path, ray_instance, capsys):
    with FakeChatServer(latency=0.3) as a, FakeChatServer(latency=0.3) as b:
        assert main([*ARGS, "--base-url", a.base_url, "--out", str(tmp_path / "ref")]) == 0
        assert len(a.requests) == UNITS
        a.requests.clear()
        # kill while every endpoint holds a request that arrived under 0.1 s ago (its answer is 0.3 s
        # away), so the killed worker has one in flight however loaded the machine is
        def fresh(server: FakeChatServer) -> bool:
            now = time.monotonic()
            return any(r["status"] is None and now - r["t"] < 0.1 for r in list(server.requests))

        rc, killed, _ = _build_with_killer(tmp_path, f"{a.base_url},{b.base_url}",
                                           lambda actor, pid: os.kill(pid, signal.SIGKILL),
                                           ready=lambda: fresh(a) and fresh(b))
        sent = len(a.requests) + len(b.requests)
    out = capsys.readouterr().out
    assert rc == 0 and killed and killed[0] != os.getpid()
    assert _units_in(tmp_path / "ray.checkpoint.jsonl") < UNITS + 1
    # Ray restarted the killed worker (a result came back from a new process) ...
    assert "1 restart(s)" in out, out
    # ... and sent again what it had in flight: more requests than units, every unit stored once
    assert sent > UNITS
    _once_each(tmp_path / "ray.checkpoint.jsonl")
    assert "0 resumed" in out and f"{UNITS} units generated now" in out
    _same_table(tmp_path / "ray", tmp_path / "ref")


def test_worker_lost_for_good_has_its_units_redispatched(tmp_path, ray_instance, capsys):
    with FakeChatServer(latency=0.3) as a, FakeChatServer(latency=0.3) as b:
        assert main([*ARGS, "--base-url", a.base_url, "--out", str(tmp_path / "ref")]) == 0
        a.requests.clear()
        rc, killed, killed_at = _build_with_killer(tmp_path, f"{a.base_url},{b.base_url}",
                                                   lambda actor, pid: ray.kill(actor, no_restart=True))
        # the lost worker drove the first endpoint: nothing reached it after the loss
        late = [r for r in a.requests if r["t"] > killed_at[0] + 0.05]
    out = capsys.readouterr().out
    assert rc == 0 and killed
    assert "lost (the actor died" in out, out
    redispatched = int(out.split(" request(s) re-dispatched")[0].rsplit(" ", 1)[-1])
    assert redispatched >= 1  # its in-flight requests went to the other worker
    assert not late and len(a.requests) < UNITS
    _once_each(tmp_path / "ray.checkpoint.jsonl")
    _same_table(tmp_path / "ray", tmp_path / "ref")


def test_killed_driver_resumes_from_the_checkpoint_anywhere(tmp_path, capsys):
    """SIGKILL the whole driver (its private Ray instance included); resume locally."""
    with FakeChatServer(latency=0.3) as a, FakeChatServer(latency=0.3) as b:
        assert main([*ARGS, "--base-url", a.base_url, "--out", str(tmp_path / "ref")]) == 0
        ckpt = tmp_path / "ray.checkpoint.jsonl"
        cmd = [sys.executable, "-m", "iapo_gym.cli", *ARGS, "--executor", "ray", "--endpoints",
               f"{a.base_url},{b.base_url}", "--concurrency", "2", "--out", str(tmp_path / "ray")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _units_in(ckpt) < 4 and proc.poll() is None:
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        before = read_units(ckpt, on_damage="skip")
        assert 4 <= len(before) < UNITS, "the kill must land mid-build"
        assert not (tmp_path / "ray").exists()
        # the same checkpoint, resumed by the local executor against one endpoint; a request the
        # killed build had already sent may still arrive (Ray's worker processes outlive the
        # driver's process group briefly): count from when the endpoint has gone quiet
        served = _quiet_count(b.requests)
        assert main([*ARGS, "--base-url", b.base_url, "--out", str(tmp_path / "ray")]) == 0
        generated_now = len(b.requests) - served
    out = capsys.readouterr().out
    assert f"{UNITS - len(before)} units generated now ({len(before)} resumed)" in out
    assert generated_now == UNITS - len(before)  # only the missing units were requested
    units = _once_each(ckpt)
    assert [json.dumps(u, sort_keys=True) for u in units[: len(before)]] == [json.dumps(u, sort_keys=True) for u in before]
    _same_table(tmp_path / "ray", tmp_path / "ref")


def test_ray_options_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    cases = [
        (["--base-url", "http://127.0.0.1:9", "--ray-address", "auto"], "--ray-address only applies with --executor ray"),
        (["--endpoints", "http://127.0.0.1:9,http://127.0.0.1:10"], "several --endpoints need --executor ray"),
        (["--executor", "ray", "--endpoints", "127.0.0.1:9"], "--endpoints '127.0.0.1:9' is not an http(s) URL"),
        (["--executor", "ray", "--endpoints", "http://h:1,http://h:1"], "--endpoints names an endpoint twice"),
        (["--executor", "ray", "--ray-workers", "2"], "--ray-workers is for --backend vllm"),
    ]
    was = ray.is_initialized()
    for extra, message in cases:
        assert main([*ARGS, *extra, "--out", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert ray.is_initialized() == was  # refused before any Ray instance is started
