"""``iapo-gym serve``: the official openai client against the router's HTTP server (local upstream)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

import iapo_gym
from iapo_gym.agents.base import TablePolicy
from iapo_gym.deploy.router import Router
from iapo_gym.deploy.server import create_app
from iapo_gym.deploy.testing import FakeUpstream, ServerThread
from iapo_gym.live.backends import OpenAIBackend, SamplingConfig
from iapo_gym.live.server import free_port
from iapo_gym.live.specs import load_spec
from iapo_gym.tasks import load_task_table

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

MODEL = "iapo-smolarith"
UPSTREAM_KEY = "sk-upstream-SECRET-7f3a9"
ARMS = {"low": (2, 5), "mid": (1, 3), "high": (0, 1)}
USER = [{"role": "user", "content": "What is 12 + 30?"}]


def sum_responder(messages, n, seed):
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", messages[0]["content"]).groups())
    return [f"The answer is {a + b + (1 if i % 3 == 2 else 0)}." for i in range(n)]


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    table = load_task_table("SmolArith")
    arms = np.array([p * 16 + n - 1 for p, n in (ARMS[c] for c in table.contexts.names)])
    return TablePolicy(table.contexts, arms, 16).save(tmp_path_factory.mktemp("pol") / "p.json", table, agent="hand")


def _router(up, policy_path, **kw):
    spec = load_spec("smolarith")
    backend = OpenAIBackend(up.model, up.base_url, SamplingConfig(**spec.sampling.to_json()), api_key=UPSTREAM_KEY,
                            max_retries=0, **kw)
    return Router(iapo_gym.load_policy(policy_path, spec=spec), spec, backend)


def _client(srv, key="none"):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_openai_client_gets_the_aggregated_answer_usage_and_arm(policy_path):
    with FakeUpstream(sum_responder) as up:
        with ServerThread(create_app(_router(up, policy_path), secrets=[UPSTREAM_KEY])) as srv:
            client = _client(srv)
            assert [m.id for m in client.models.list()] == [MODEL]
            for name, (p, n) in ARMS.items():
                raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER,
                                                                      extra_body={"context": name}, seed=5)
                resp = raw.parse()
                _, body = up.requests[-1]
                texts = sum_responder(body["messages"], n, 0)
                assert body["n"] == n and body["seed"] == 5
                assert resp.choices[0].message.content == texts[0] and resp.choices[0].finish_reason == "stop"
                done = sum(len(t.split()) for t in texts)
                assert resp.usage.completion_tokens == done
                assert resp.usage.prompt_tokens == len(body["messages"][0]["content"].split())
                assert resp.usage.total_tokens == done + resp.usage.prompt_tokens
                iapo = resp.model_extra["iapo"]
                assert (iapo["prompt"], iapo["n"], iapo["context_name"], iapo["answer"]) == (p, n, name, "42")
                assert raw.headers["x-iapo-arm"] == f"prompt={p};n={n}"
                assert resp.model == MODEL and resp.object == "chat.completion"
            # the same context through metadata (string values), a weight vector, and iapo.context
            for kwargs in ({"metadata": {"iapo_context": "mid"}}, {"metadata": {"iapo_context": "[1.0, 0.2]"}},
                           {"extra_body": {"iapo": {"context": [1.0, 0.2]}}}):
                resp = client.chat.completions.create(model=MODEL, messages=USER, **kwargs)
                assert resp.model_extra["iapo"]["n"] == ARMS["mid"][1]
            health = json.loads(urllib.request.urlopen(srv.base_url + "/health", timeout=5).read())
            assert health["status"] == "ok" and health["served"] == 6


def test_clear_4xx_errors(policy_path):
    with FakeUpstream(sum_responder) as up:
        app = create_app(_router(up, policy_path), max_body_bytes=4096)
        with ServerThread(app) as srv:
            client = _client(srv)
            cases = [
                (dict(model="gpt-4o", messages=USER, extra_body={"context": "low"}), openai.NotFoundError, "does not exist"),
                (dict(model=MODEL, messages=USER, extra_body={"context": "urgent"}), openai.BadRequestError,
                 "unknown context 'urgent'"),
                (dict(model=MODEL, messages=USER, extra_body={"context": [1, 2, 3]}), openai.BadRequestError,
                 "must be 2 numbers"),
                (dict(model=MODEL, messages=USER), openai.BadRequestError, "no context"),
                (dict(model=MODEL, messages=USER, metadata={"iapo_context": "[1, "}), openai.BadRequestError,
                 "not a JSON list"),
                (dict(model=MODEL, messages=[{"role": "system", "content": "be nice"}, *USER],
                      extra_body={"context": "low"}), openai.BadRequestError, "exactly one user message"),
                (dict(model=MODEL, messages=USER, temperature=0.2, extra_body={"context": "low"}),
                 openai.BadRequestError, "temperature=0.2 differs"),
                (dict(model=MODEL, messages=USER, n=3, extra_body={"context": "low"}), openai.BadRequestError,
                 "n must be 1"),
                (dict(model=MODEL, messages=USER, stream=True, extra_body={"context": "low"}), openai.BadRequestError,
                 "streaming is not supported"),
                (dict(model=MODEL, messages=[{"role": "user", "content": "x" * 5000}], extra_body={"context": "low"}),
                 openai.APIStatusError, "exceeds the limit of 4096 bytes"),
            ]
            for kwargs, error, message in cases:
                with pytest.raises(error, match=re.escape(message)) as info:
                    client.chat.completions.create(**kwargs)
                assert 400 <= info.value.status_code < 500
            assert up.requests == []  # nothing bad reached the upstream
            # a chunked body with no Content-Length is cut off at the limit too
            chunks = (b'{"model": "iapo-smolarith", "pad": "' + b"x" * 1000 for _ in range(8))
            import httpx

            r = httpx.post(srv.base_url + "/v1/chat/completions", content=chunks, timeout=10)
            assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]["message"]


def test_client_api_key_and_the_upstream_key_never_leaks(policy_path, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeUpstream(sum_responder) as up:
        app = create_app(_router(up, policy_path), api_keys=["client-key-1"], secrets=[UPSTREAM_KEY])
        with ServerThread(app) as srv:
            with pytest.raises(openai.AuthenticationError, match="invalid API key"):
                _client(srv, "wrong").chat.completions.create(model=MODEL, messages=USER, extra_body={"context": "low"})
            with pytest.raises(openai.AuthenticationError):
                _client(srv, "wrong").models.list()
            resp = _client(srv, "client-key-1").chat.completions.create(model=MODEL, messages=USER,
                                                                        extra_body={"context": "low"})
            assert resp.model_extra["iapo"]["answer"] == "42"
            assert up.requests[-1][0]["authorization"] == f"Bearer {UPSTREAM_KEY}"  # forwarded upstream ...
            assert "client-key-1" not in json.dumps(up.requests[-1][0])  # ... the client's key is not
            up.fail_status = 401  # the upstream rejects the key and echoes it in its error
            with pytest.raises(openai.APIStatusError) as info:
                _client(srv, "client-key-1").chat.completions.create(model=MODEL, messages=USER,
                                                                    extra_body={"context": "low"})
            assert info.value.status_code == 502 and "upstream failed" in str(info.value)
            assert UPSTREAM_KEY not in info.value.response.text and "***" in info.value.response.text
    assert "upstream failure" in caplog.text
    assert UPSTREAM_KEY not in caplog.text


def test_upstream_concurrency_is_bounded(policy_path):
    with FakeUpstream(sum_responder, latency=0.3) as up:
        app = create_app(_router(up, policy_path, concurrency=16), max_concurrency=2)
        with ServerThread(app) as srv:
            client = _client(srv)
            results = []

            def ask(i):
                r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"What is {i} + 1?"}],
                                                   extra_body={"context": "high"})
                results.append((i, r.model_extra["iapo"]["answer"]))

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
    assert sorted(results) == [(i, str(i + 1)) for i in range(8)]
    assert up.max_in_flight == 2


def test_serve_command_end_to_end(policy_path, tmp_path):
    with FakeUpstream(sum_responder) as up:
        port = free_port()
        env = {**os.environ, "IAPO_TEST_UPSTREAM_KEY": UPSTREAM_KEY, "IAPO_GYM_API_KEY": "k1"}
        log = open(tmp_path / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "iapo_gym.cli", "serve", str(policy_path), "--upstream", up.base_url,
                                 "--port", str(port), "--upstream-api-key-env", "IAPO_TEST_UPSTREAM_KEY"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                    time.sleep(0.2)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0, timeout=30)
            resp = client.chat.completions.create(model=MODEL, messages=USER, extra_body={"context": "low"})
            assert resp.model_extra["iapo"]["n"] == 5 and resp.model_extra["iapo"]["answer"] == "42"
            assert up.requests[-1][1]["model"] == "fake-model"  # the upstream's only model, found by --upstream
            # An idle connection outlives uvicorn's default 5 s keep-alive: a client pool that reuses it
            # after a pause (its own expiry is timed from when it read the response) is not cut off.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/health")
            first = conn.getresponse()
            assert first.status == 200 and json.loads(first.read())["status"] == "ok"
            time.sleep(5.5)
            conn.request("GET", "/health")
            again = conn.getresponse()
            assert again.status == 200 and json.loads(again.read())["status"] == "ok"
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "serving iapo-smolarith" in text and "answered context=low arm=(p2, N=5)" in text
    assert UPSTREAM_KEY not in text
    bad = subprocess.run([sys.executable, "-m", "iapo_gym.cli", "serve", str(tmp_path / "missing.json"), "--upstream",
                          "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no policy document" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "iapo_gym.cli", "serve", str(policy_path), "--upstream",
                          "http://127.0.0.1:9", "--timeout-keep-alive", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--timeout-keep-alive must be > 0" in bad.stderr


class OneCallAtATime:
    """Delegates to a real backend and records how it is called (as the in-process engine must be)."""

    def __init__(self, backend):
        self.backend, self.model, self.sampling = backend, backend.model, backend.sampling
        self.active = self.most_active = 0
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def generate(self, requests):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.batches.append(len(requests))
            return self.backend.generate(requests)
        finally:
            with self.lock:
                self.active -= 1

    def stream(self, requests):
        yield from enumerate(self.generate(requests))

    def close(self):
        self.backend.close()


def test_backend_that_is_not_thread_safe_gets_batches_one_at_a_time(policy_path):
    spec = load_spec("smolarith")
    with FakeUpstream(sum_responder, latency=0.3) as up:
        real = OpenAIBackend(up.model, up.base_url, SamplingConfig(**spec.sampling.to_json()), concurrency=16)
        guarded = OneCallAtATime(real)
        router = Router(iapo_gym.load_policy(policy_path, spec=spec), spec, guarded)
        with ServerThread(create_app(router, max_concurrency=16)) as srv:
            client = _client(srv)
            results = []

            def ask(i):
                r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"What is {i} + 5?"}],
                                                   extra_body={"context": "mid"}, seed=i)
                results.append((i, r.model_extra["iapo"]["answer"], r.model_extra["iapo"]["seed"]))

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
    assert sorted(results) == [(i, str(i + 5), i) for i in range(10)]
    assert guarded.most_active == 1 and sum(guarded.batches) == 10 and max(guarded.batches) > 1
