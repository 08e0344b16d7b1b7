"""``iapo-gym build --executor ray`` over two REAL vLLM OpenAI-compatible servers (CPU build,
SmolLM2) on two ports, one Ray worker SIGKILLed mid-build: the same table as a single-process
build with the same seed, every unit in the checkpoint exactly once.

The single-process reference and the Ray workers keep one request in flight per server (vLLM
then runs the same batch, one request's ``n`` sequences, whichever server answers), and every
request carries its own sampling seed, which vLLM honours per request. A second test runs the
in-process engine inside a Ray actor (on CPU) and compares it with a local in-process build.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from live_support import SERVER_ARGS, require_live_stack

ray = pytest.importorskip("ray")

from iapo_gym.cli import main  # noqa: E402
from iapo_gym.live.checkpoint import read_units, scan  # noqa: E402
from iapo_gym.live.ray_build import ACTOR_PREFIX  # noqa: E402
from iapo_gym.tables.io import load_table  # noqa: E402

pytestmark = pytest.mark.live
UNITS = 4 * 3  # --queries 4 x --prompts 3


def test_ray_build_over_two_real_vllm_servers_survives_a_killed_worker(tmp_path: Path, capsys) -> None:
    require_live_stack()
    from iapo_gym.live.server import VLLMServer

    t0 = time.monotonic()
    servers = [VLLMServer("smollm2", args=SERVER_ARGS, log=tmp_path / f"server{i}.log") for i in range(2)]
    errors: list[BaseException] = []

    def start(srv: VLLMServer) -> None:
        try:
            srv.start(timeout=600)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert not errors, errors
        t_servers = time.monotonic() - t0
        a, b = servers
        args = ["build", "smolarith", "--backend", "openai", "--served-model-name", a.model, "--queries", "4",
                "--prompts", "3", "--pool", "4", "--max-tokens", "24", "--seed", "5", "--concurrency", "1",
                "--timeout", "300", "--retries", "2", "--no-progress"]
        t1 = time.monotonic()
        assert main([*args, "--base-url", a.base_url, "--out", str(tmp_path / "ref")]) == 0
        t_ref = time.monotonic() - t1

        ckpt = tmp_path / "ray.checkpoint.jsonl"
        killed: list[int] = []

        def killer() -> None:
            deadline = time.monotonic() + 300
            # kill at the first checkpointed unit: the earliest point that proves work before the
            # kill is kept, and the most margin before a fast machine finishes the build unkilled
            while time.monotonic() < deadline and (not ckpt.exists() or b'"kind":"unit"' not in ckpt.read_bytes()):
                time.sleep(0.05)
            names = sorted(x["name"] for x in ray.util.list_named_actors(all_namespaces=True)
                           if x["name"].startswith(ACTOR_PREFIX))
            pid = int(ray.get(ray.get_actor(names[0]).info.remote(), timeout=60)["pid"])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        t2 = time.monotonic()
        rc = main([*args, "--executor", "ray", "--endpoints", f"{a.base_url},{b.base_url}", "--out", str(tmp_path / "ray")])
        t_ray = time.monotonic() - t2
        th.join(timeout=60)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for srv in servers:
            srv.stop()
    out = capsys.readouterr().out
    print(f"servers ready {t_servers:.1f} s, single-process build {t_ref:.1f} s, Ray build {t_ray:.1f} s; {out}")
    assert rc == 0 and killed
    assert "1 restart(s)" in out, out  # Ray restarted the killed worker and re-ran its request

    s = scan(ckpt)
    assert not s.damaged
    units = [r for r in s.records if r["kind"] == "unit"]
    assert len(units) == UNITS and len({(u["key"], u["start"]) for u in units}) == UNITS
    got, want = load_table(tmp_path / "ray"), load_table(tmp_path / "ref")
    for name in ("answer_probs", "gold", "cost", "split"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert got.provenance["answer_labels"] == want.provenance["answer_labels"]
    ref_units = {u["key"]: (u["texts"], u["completion_tokens"]) for u in read_units(tmp_path / "ref.checkpoint.jsonl")}
    assert {u["key"]: (u["texts"], u["completion_tokens"]) for u in units} == ref_units
    assert len({t for u in units for t in u["texts"]}) > UNITS  # real, varied completions


def test_ray_build_with_an_in_process_engine_worker_equals_a_local_build(tmp_path: Path, capsys) -> None:
    """``--backend vllm --executor ray``: the engine runs inside a Ray actor (on CPU here:
    ``--gpus-per-worker 0``; one GPU per actor on a GPU cluster) and gives the local build's table."""
    require_live_stack()
    args = ["build", "smolarith", "--backend", "vllm", "--model", "smollm2", "--dtype", "float32", "--enforce-eager",
            "--max-model-len", "1024", "--queries", "2", "--prompts", "2", "--pool", "4", "--max-tokens", "16",
            "--seed", "5", "--batch-size", "1", "--no-progress"]
    t0 = time.monotonic()
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    t_ref = time.monotonic() - t0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t1 = time.monotonic()
        rc = main([*args, "--executor", "ray", "--ray-workers", "1", "--gpus-per-worker", "0", "--out", str(tmp_path / "ray")])
        t_ray = time.monotonic() - t1
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    print(f"local engine build {t_ref:.1f} s, Ray engine-worker build {t_ray:.1f} s (engine start included); {out}")
    assert rc == 0 and "engine 0: 4 done" in out, out
    got, want = load_table(tmp_path / "ray"), load_table(tmp_path / "ref")
    for name in ("answer_probs", "gold", "cost", "split"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    ref_units = {u["key"]: (u["texts"], u["completion_tokens"]) for u in read_units(tmp_path / "ref.checkpoint.jsonl")}
    got_units = {u["key"]: (u["texts"], u["completion_tokens"]) for u in read_units(tmp_path / "ray.checkpoint.jsonl")}
    assert got_units == ref_units and len(got_units) == 4
