"""The OpenAI-compatible backend against a local test server that misbehaves on demand:
validation of what it receives, whole-request timeouts, Retry-After, the n > 1 fallback, and the
provider options (API-key variable, headers, extra_body, max_completion_tokens).
"""

from __future__ import annotations

import time

import pytest

from iapo_gym.live.backends import BackendError, GenerationRequest, OpenAIBackend, RequestRejected, SamplingConfig, derive_seed
from iapo_gym.live.testserver import FakeChatServer, Fault

S = SamplingConfig(0.7, 0.9, 16)
MSGS = ({"role": "user", "content": "What is 2 + 2?"},)


def _backend(srv, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 2)
    return OpenAIBackend("m", srv.base_url, S, **kw)


def _expected(seed, n):
    return tuple(FakeChatServer.completion(list(MSGS), seed, i)[0] for i in range(n))


@pytest.mark.parametrize(
    "fault",
    [
        Fault("body", body="<html><body>502 Bad Gateway</body></html>"),  # HTML with status 200
        Fault("body", body='{"choices": "abc", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'),
        Fault("body", body='{"choices": [], "usage": {}}'),
        Fault("null_content"),
        Fault("no_usage"),
        Fault("body", body='{"choices": [{"index": 0, "message": {"content": "x"}}], '
                           '"usage": {"prompt_tokens": 3, "completion_tokens": -5}}'),
        Fault("status", status=502, body="bad gateway"),
        Fault("status", status=429, body="slow down", retry_after="0"),
    ],
)
def test_transient_and_malformed_responses_are_retried(fault):
    with FakeChatServer(faults=[fault]) as srv:
        be = _backend(srv)
        g = be.generate([GenerationRequest(MSGS, 2, 11)])[0]
        be.close()
    assert g.texts == _expected(11, 2)  # the retry's answer, not an empty or zero-cost one
    assert len(srv.requests) == 2 and be.retries == 1
    assert g.total_completion_tokens == sum(FakeChatServer.completion(list(MSGS), 11, i)[1] for i in range(2))


@pytest.mark.parametrize(
    ("fault", "quote"),
    [
        (Fault("null_content", times=None), "content is null"),
        (Fault("no_usage", times=None), "no 'usage'"),
        (Fault("body", body="<html>oops</html>", times=None), "<html>oops</html>"),
    ],
)
def test_persistently_malformed_responses_fail_quoting_the_server(fault, quote):
    with FakeChatServer(faults=[fault]) as srv:
        be = _backend(srv, max_retries=1)
        with pytest.raises(RequestRejected, match=quote) as info:
            be.generate([GenerationRequest(MSGS, 1, 1)])
        be.close()
    assert "after 2 attempts" in str(info.value) and len(srv.requests) == 2


def test_gzip_bodies_are_decoded():
    with FakeChatServer(faults=[Fault("gzip")]) as srv:
        be = _backend(srv)
        assert be.generate([GenerationRequest(MSGS, 3, 4)])[0].texts == _expected(4, 3)
        be.close()
    assert len(srv.requests) == 1


def test_timeout_bounds_the_whole_request_against_a_slow_drip():
    with FakeChatServer(faults=[Fault("drip", delay=0.05, times=None)]) as srv:
        be = _backend(srv, timeout=1.0, max_retries=0)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="timeout"):
            be.generate([GenerationRequest(MSGS, 1, 1)])
        elapsed = time.monotonic() - t0
        be.close()
    assert elapsed < 2.5  # the drip would take over 10 s; per-read timeouts never fire


def test_retry_after_is_honoured():
    with FakeChatServer(faults=[Fault("status", status=429, body="rate limited", retry_after="1")]) as srv:
        be = _backend(srv, backoff=0.01)
        be.generate([GenerationRequest(MSGS, 1, 1)])
        be.close()
    gap = srv.requests[1]["t"] - srv.requests[0]["t"]
    assert 0.95 <= gap < 3.0  # the server's 1 s, not the 0.01 s backoff


def test_backoff_has_jitter_and_honours_retry_after(monkeypatch):
    import iapo_gym.live.backends as backends

    waits: list[float] = []
    monkeypatch.setattr(backends.time, "sleep", waits.append)
    be = OpenAIBackend("m", "http://127.0.0.1:9", S, backoff=1.0, max_backoff=60)
    for _ in range(50):
        be._sleep(3, None)  # third attempt: uniform in [0, 4]
    be._sleep(1, 7.0)
    be.close()
    assert len(set(waits[:50])) == 50 and max(waits[:50]) <= 4.0 and min(waits[:50]) < 1.0 < 3.0 < max(waits[:50])
    assert waits[50] == 7.0


def test_refusals_are_not_retried_and_quote_the_server():
    refuse = Fault("status", status=400, body='{"error": "flagged by content filter"}', times=None)
    with FakeChatServer(faults=[refuse]) as srv:
        be = _backend(srv)
        with pytest.raises(RequestRejected, match="HTTP 400.*flagged by content filter") as info:
            be.generate([GenerationRequest(MSGS, 1, 1)])
        be.close()
    assert info.value.status == 400 and len(srv.requests) == 1


def test_falls_back_to_n_requests_of_n1_with_derived_seeds():
    with FakeChatServer(reject_n_gt_1=True) as srv:
        be = _backend(srv)
        g = be.generate([GenerationRequest(MSGS, 3, 21)])[0]
        g2 = be.generate([GenerationRequest(MSGS, 2, 22)])[0]  # sticky: no second rejected n > 1 request
        be.close()
    assert g.texts == tuple(FakeChatServer.completion(list(MSGS), derive_seed(21, i), 0)[0] for i in range(3))
    assert g2.texts == tuple(FakeChatServer.completion(list(MSGS), derive_seed(22, i), 0)[0] for i in range(2))
    assert [r["body"]["n"] for r in srv.requests] == [3, 1, 1, 1, 1, 1]
    assert [r["body"]["seed"] for r in srv.requests[1:4]] == [21, derive_seed(21, 1), derive_seed(21, 2)]
    assert len({derive_seed(21, i) for i in range(100)}) == 100


def test_provider_options_reach_the_server(monkeypatch):
    monkeypatch.setenv("MY_PROVIDER_KEY", "sk-test-123")
    with FakeChatServer() as srv:
        be = _backend(srv, api_key_env="MY_PROVIDER_KEY", headers={"X-Route": "eu"}, extra_body={"top_k": 20},
                      max_tokens_field="max_completion_tokens")
        be.generate([GenerationRequest(MSGS, 1, 1)])
        be.close()
    r = srv.requests[0]
    assert r["headers"]["Authorization"] == "Bearer sk-test-123" and r["headers"]["X-Route"] == "eu"
    assert r["body"]["top_k"] == 20 and r["body"]["max_completion_tokens"] == 16 and "max_tokens" not in r["body"]
    assert be.outcome_params()["extra_body"] == {"top_k": 20}


def test_the_official_openai_client_accepts_the_test_server():
    openai = pytest.importorskip("openai")
    with FakeChatServer() as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0, timeout=10)
        r = client.chat.completions.create(model="m", messages=list(MSGS), n=2, seed=5, max_tokens=16)
        client.close()
    assert tuple(c.message.content for c in r.choices) == _expected(5, 2) and r.usage.completion_tokens > 0


def test_stream_delivers_finished_requests_when_another_fails():
    faults = [Fault("status", match="FAIL", status=503, body="down", times=None)]
    with FakeChatServer(faults=faults, latency=0.2) as srv:
        be = _backend(srv, max_retries=0, concurrency=4)
        reqs = [GenerationRequest(({"role": "user", "content": "FAIL" if i == 0 else f"q{i}"},), 1, i) for i in range(4)]
        got = []
        with pytest.raises(BackendError, match="503"):
            for i, _ in be.stream(reqs):
                got.append(i)
        be.close()
    assert sorted(got) == [1, 2, 3]  # the three in flight finished and were delivered
