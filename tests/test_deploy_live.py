"""Closed loop on the real model: a PSST policy fitted on IAPO-SmolArith-v0, saved, served by
``iapo-gym serve`` in front of the real vLLM OpenAI-compatible server (CPU build, SmolLM2), and
queried through the official ``openai`` client.

The table was built from the same model, prompts and sampling, so for each context the served
accuracy must agree with the exact MV accuracy of the deployed arm and the served mean cost with
its exact expected cost. Served answers are fresh samples (seeds other than the table's), so
they agree within sampling error: the test checks a 99 % Wilson interval of the served accuracy
(``24 * R`` answers per context) and a 99 % normal interval of the mean cost, and prints both numbers.
``IAPO_LIVE_REPEATS`` (default 3) sets R.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import numpy as np
import pytest
from live_support import SERVER_ARGS, require_live_stack

from iapo_gym.agents import make_agent
from iapo_gym.live.scorers import make_scorer
from iapo_gym.live.server import free_port
from iapo_gym.live.specs import load_queries, load_spec
from iapo_gym.oracle import _table_mv_credit
from iapo_gym.tasks import load_task_table

pytestmark = pytest.mark.live
BUDGET, SEED = 5000, 0
Z99 = 2.5758


def wilson(k: int, n: int, z: float = Z99) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_served_accuracy_and_cost_match_the_exact_q_of_the_deployed_arm(tmp_path):
    require_live_stack()
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    import openai

    from iapo_gym.live.server import VLLMServer

    repeats = int(os.environ.get("IAPO_LIVE_REPEATS", "3"))
    table = load_task_table("SmolArith")
    spec = load_spec("smolarith")
    env = gym.make("IAPO-SmolArith-v0", budget=BUDGET, split_seed=SEED).unwrapped
    policy = make_agent("psst").fit(env, BUDGET, SEED)
    path = policy.save(tmp_path / "psst.json", env, agent=make_agent("psst"), budget=BUDGET, seed=SEED)

    queries = load_queries(spec)
    assert [q.id for q in queries] == list(table.query_ids)
    scorer = make_scorer(spec.scorer)
    credit = _table_mv_credit(table)  # (P, Q, n_max) exact expected MV credit per query
    port = free_port()
    with VLLMServer("smollm2", args=SERVER_ARGS, log=tmp_path / "vllm.log") as vllm:
        log = open(tmp_path / "serve.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "iapo_gym.cli", "serve", str(path), "--upstream", vllm.base_url, "--port", str(port),
             "--max-concurrency", "8", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                    time.sleep(0.5)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900)

            def ask(job):
                ctx, qi, r = job
                seed = 1_000_003 * (r + 1) + 7919 * qi + 31 * ctx  # never a table build seed's pattern
                resp = client.chat.completions.create(
                    model="iapo-smolarith", messages=[{"role": "user", "content": queries[qi].text}],
                    extra_body={"context": table.contexts.names[ctx]}, seed=seed)
                return ctx, qi, resp

            jobs = [(c, q, r) for r in range(repeats) for c in range(len(table.contexts)) for q in range(len(queries))]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                try:
                    results = list(pool.map(ask, jobs))
                except openai.APIError as exc:  # say what the router logged, not only what the client saw
                    log.flush()
                    tail = (tmp_path / "serve.log").read_text()[-4000:]
                    raise AssertionError(f"{exc!r}; router alive: {proc.poll() is None}; serve.log ends:\n{tail}") from exc
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()

    report = {"budget": BUDGET, "seed": SEED, "repeats": repeats, "wall_s": round(wall, 1), "contexts": {}}
    for c, name in enumerate(table.contexts.names):
        arm = int(policy.arms[c])
        p, n = divmod(arm, table.n_max)
        n += 1
        mine = [(qi, resp) for ctx, qi, resp in results if ctx == c]
        correct = np.array([resp.model_extra["iapo"]["answer"] is not None
                            and scorer.same(resp.model_extra["iapo"]["answer"], scorer.gold_key(queries[qi].gold))
                            for qi, resp in mine])
        cost = np.array([resp.model_extra["iapo"]["cost"] for _, resp in mine])
        for _, resp in mine:  # every answer used the deployed arm, and usage sums its N completions
            iapo = resp.model_extra["iapo"]
            assert (iapo["prompt"], iapo["n"]) == (p, n) and resp.usage.completion_tokens == iapo["completion_tokens"]
        exact_acc = float(credit[p, :, n - 1].mean())
        exact_cost = float(n * table.cost[p].mean())
        w_cost = float(table.contexts.weights[c, -1])
        lo, hi = wilson(int(correct.sum()), correct.size)
        half = Z99 * cost.std(ddof=1) / np.sqrt(cost.size)
        report["contexts"][name] = {
            "arm": {"prompt": p, "n": n}, "answers": int(correct.size),
            "served_accuracy": round(float(correct.mean()), 4), "accuracy_ci99": [round(lo, 4), round(hi, 4)],
            "exact_accuracy": round(exact_acc, 4),
            "served_cost": float(cost.mean()), "cost_ci99_half": float(half), "exact_cost": exact_cost,
            "served_q": float(correct.mean() - w_cost * cost.mean()), "exact_q": exact_acc - w_cost * exact_cost,
        }
        assert lo <= exact_acc <= hi, report["contexts"][name]
        assert abs(cost.mean() - exact_cost) <= half, report["contexts"][name]
    print("CLOSED LOOP", json.dumps(report, indent=1))
    out = os.environ.get("IAPO_LIVE_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=1)


def _marked_processes(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``IAPO_TEST_MARK=marker``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"IAPO_TEST_MARK={marker}".encode() in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as st:
                        if st.read().split(")")[-1].split()[0] != "Z":
                            out.append(int(entry))
        except OSError:
            continue
    return out


def test_serve_with_the_in_process_engine_batches_concurrent_requests(tmp_path):
    """``iapo-gym serve --engine vllm``: the engine in the server process, concurrent requests in one running batch."""
    require_live_stack()
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    import openai

    import iapo_gym.agents.base as base

    table = load_task_table("SmolArith")
    arms = np.array([2 * 16 + 3, 1 * 16 + 1, 5 * 16 + 0])  # low (2, 4), mid (1, 2), high (5, 1)
    path = base.TablePolicy(table.contexts, arms, 16).save(tmp_path / "hand.json", table, agent="hand")
    port = free_port()
    marker = f"deploy-live-{os.getpid()}-{time.time_ns()}"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "iapo_gym.cli", "serve", str(path), "--engine", "vllm", "--model", "smollm2",
         "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--port", str(port), "--log-level", "debug"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "IAPO_TEST_MARK": marker})
    try:
        deadline = time.monotonic() + 400
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        queries = load_queries(load_spec("smolarith"))[:6]

        def ask(i):
            name = table.contexts.names[i % 3]
            return name, client.chat.completions.create(
                model="iapo-smolarith", messages=[{"role": "user", "content": queries[i].text}],
                extra_body={"context": name}, seed=100 + i)

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, range(6)))
        again = ask(0)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        time.sleep(2)
        left = _marked_processes(marker)  # the engine's worker process must go with the server
        for pid in left:
            os.kill(pid, 9)
    assert left == [], "the in-process engine outlived iapo-gym serve"
    adds = [(int(a), int(r)) for a, r in re.findall(r"vLLM engine: (\d+) request\(s\) added, (\d+) running",
                                                    (tmp_path / "serve.log").read_text())]
    assert sum(a for a, _ in adds) == 7  # one engine request per answer, all through the one engine thread
    assert max(r for _, r in adds) > 1  # the 6 concurrent requests shared the running batch
    want = {"low": (2, 4), "mid": (1, 2), "high": (5, 1)}
    for name, resp in results:
        iapo = resp.model_extra["iapo"]
        assert (iapo["prompt"], iapo["n"]) == want[name]
        assert resp.usage.completion_tokens == iapo["completion_tokens"] > 0 and resp.choices[0].message.content
    # the engine is deterministic per request seed: the same request gives the same answer and votes
    first = results[0][1].model_extra["iapo"]
    assert (again.model_extra["iapo"]["votes"], again.choices[0].message.content) == (
        first["votes"], results[0][1].choices[0].message.content)
