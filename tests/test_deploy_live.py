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
                results = list(pool.map(ask, jobs))
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
