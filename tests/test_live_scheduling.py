"""The builder's scheduling against a local OpenAI-compatible test server: no batch barrier,
quarantine of refused units, tables that grow (content keys), token caps, and no finished unit
lost when the server fails.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from iapo_gym.live.backends import BackendError, OpenAIBackend, derive_seed
from iapo_gym.live.builder import BuildIncomplete, build_table
from iapo_gym.live.checkpoint import read_units, scan
from iapo_gym.live.specs import arithmetic_queries, load_spec
from iapo_gym.live.testserver import FakeChatServer, Fault
from iapo_gym.tables.io import load_table


def _spec(P=3, pool=4):
    s = load_spec("smolarith")
    return s.with_overrides(prompts=s.prompts[:P], pool=pool)


def _be(srv, spec, **kw):
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 1)
    return OpenAIBackend("fake-model", srv.base_url, spec.sampling, **kw)


def test_no_batch_barrier_a_slow_unit_does_not_hold_back_the_others(tmp_path):
    spec, queries = _spec(3), arithmetic_queries(6)
    slow = queries[0].text  # the first query's three units are slow
    with FakeChatServer(latency=0.02, faults=[Fault("slow", match=slow, delay=1.5, times=None)]) as srv:
        be = _be(srv, spec, concurrency=4)
        _, stats = build_table(spec, be, queries, tmp_path / "t", progress=False)
        be.close()
    units = read_units(tmp_path / "t.checkpoint.jsonl")
    order = [u["q"] for u in units]
    # The 3 slow units were submitted first; the 15 others finished and were checkpointed while
    # they ran (a batch barrier would have held everything behind them).
    assert order[-3:] == [0, 0, 0] and sorted(order[:-3]) == sorted(q for q in range(1, 6) for _ in range(3))
    assert stats.units_generated == 18 and len(srv.requests) == 18


def test_refused_units_are_quarantined_reported_and_retried(tmp_path):
    spec, queries = _spec(3), arithmetic_queries(4)
    bad = queries[2].text
    fault = Fault("status", match=bad, status=400, body='{"error": {"message": "flagged by the content filter"}}', times=None)
    ckpt = tmp_path / "c.jsonl"
    with FakeChatServer(faults=[fault]) as srv:
        be = _be(srv, spec, concurrency=3)
        with pytest.raises(BuildIncomplete, match=r"3 unit\(s\) were refused.*HTTP 400.*content filter.*--exclude-failed"):
            build_table(spec, be, queries, tmp_path / "t", checkpoint=ckpt, progress=False)
        assert len(srv.requests) == 12  # not retried: a refusal is final
        failed = [r for r in scan(ckpt).records if r["kind"] == "failed"]
        assert {(f["p"], f["query_id"], f["status"]) for f in failed} == {(p, queries[2].id, 400) for p in range(3)}
        assert all("flagged by the content filter" in f["message"] for f in failed)
        # A rerun skips them (no new requests) and still refuses to assemble.
        with pytest.raises(BuildIncomplete):
            build_table(spec, be, queries, tmp_path / "t", checkpoint=ckpt, progress=False)
        assert len(srv.requests) == 12
        # Explicit exclusion: the table lacks query 2, and the manifest names it and why.
        table, stats = build_table(spec, be, queries, tmp_path / "t", checkpoint=ckpt, exclude_failed=True, progress=False)
        assert table.query_ids == tuple(q.id for i, q in enumerate(queries) if i != 2)
        prov = load_table(tmp_path / "t").provenance
        assert prov["excluded_queries"][0]["query_id"] == queries[2].id and prov["excluded_by"] == "--exclude-failed"
        assert len(stats.failed) == 3 and len(srv.requests) == 12
        srv.faults.clear()  # the filter is lifted: --retry-failed generates exactly the 3
        table, stats = build_table(spec, be, queries, tmp_path / "t2", checkpoint=ckpt, retry_failed=True, progress=False)
        be.close()
    assert stats.units_generated == 3 and len(srv.requests) == 15 and table.n_queries == 4 and not stats.failed


def test_table_grows_from_2x4_to_3x6_generating_only_new_units(tmp_path):
    s = load_spec("smolarith")
    small = s.with_overrides(prompts=s.prompts[:2], pool=4)
    big = s.with_overrides(prompts=s.prompts[:3], pool=4)
    ckpt = tmp_path / "grow.jsonl"
    with FakeChatServer() as srv:
        be = _be(srv, small, concurrency=4)
        t1, s1 = build_table(small, be, arithmetic_queries(4), tmp_path / "t1", checkpoint=ckpt, progress=False)
        n1 = len(srv.requests)
        t2, s2 = build_table(big, be, arithmetic_queries(6), tmp_path / "t2", checkpoint=ckpt, progress=False)
        n2 = len(srv.requests) - n1
        # a larger pool asks only for the extra completions of each unit
        bigger = big.with_overrides(pool=6)
        t3, s3 = build_table(bigger, be, arithmetic_queries(6), tmp_path / "t3", checkpoint=ckpt, progress=False)
        new3 = srv.requests[n1 + n2:]
        be.close()
    assert (n1, s1.units_generated) == (8, 8)
    assert (n2, s2.units_generated, s2.units_before) == (10, 10, 8)  # 18 - 8: only the new units
    # the gold probability of every old cell is unchanged (category 0 is the gold answer)
    np.testing.assert_array_equal(t2.answer_probs[:2, :4, 0], t1.answer_probs[:, :, 0])
    np.testing.assert_array_equal(t2.cost[:2, :4] / t2.provenance["cost_scale_per_token"],
                                  t1.cost / t1.provenance["cost_scale_per_token"])
    # a larger pool asks only for the 2 extra completions of each unit, continuing its seed stream
    assert len(new3) == 18 and {r["body"]["n"] for r in new3} == {2}
    units = read_units(ckpt)
    first = {u["key"]: u for u in units if u["start"] == 0}
    extra = [u for u in units if u["start"] == 4]
    assert len(first) == 18 and len(extra) == 18 and s3.units_generated == 18
    assert all(u["seed"] == derive_seed(first[u["key"]]["seed"], 4) and u["n"] == 2 for u in extra)
    assert t3.pool_size == 6 and t3.provenance["spec_fingerprint"] == bigger.fingerprint() != big.fingerprint()
    np.testing.assert_allclose(t3.answer_probs.sum(-1), 1.0)


def test_changing_the_model_or_sampling_does_not_reuse_units(tmp_path):
    spec, queries = _spec(2, pool=2), arithmetic_queries(2)
    ckpt = tmp_path / "c.jsonl"
    with FakeChatServer() as srv:
        for kw in ({}, {"extra_body": {"top_k": 5}}, {}):
            be = _be(srv, spec, **kw)
            build_table(spec, be, queries, tmp_path / f"t{len(srv.requests)}", checkpoint=ckpt, progress=False)
            be.close()
    assert len(srv.requests) == 8  # 4, then 4 new for top_k, then 0: both stay in the checkpoint


def test_finished_in_flight_units_are_checkpointed_when_the_server_fails(tmp_path):
    spec, queries = _spec(3), arithmetic_queries(4)
    fault = Fault("status", match=queries[1].text, status=503, body="upstream down", times=None)
    with FakeChatServer(latency=0.3, faults=[fault]) as srv:
        be = _be(srv, spec, concurrency=6, max_retries=0)
        with pytest.raises(BackendError, match="503"):
            build_table(spec, be, queries, tmp_path / "t", progress=False)
        be.close()
        time.sleep(0.1)
        answered = srv.served
    units = read_units(tmp_path / "t.checkpoint.jsonl")
    assert len(units) == answered >= 3  # every request the server answered is in the checkpoint
    session = [r for r in scan(tmp_path / "t.checkpoint.jsonl").records if r["kind"] == "session"][-1]
    assert "upstream down" in session["status"]


def test_token_cap_stops_cleanly_and_resumes(tmp_path):
    spec, queries = _spec(3), arithmetic_queries(6)
    ckpt = tmp_path / "c.jsonl"
    with FakeChatServer(tokens_per_completion=10) as srv:
        be = _be(srv, spec, concurrency=2)
        table, stats = build_table(spec, be, queries, tmp_path / "t", checkpoint=ckpt, max_tokens_total=200, progress=False)
        assert table is None and stats.stopped_at_cap and not (tmp_path / "t").exists()
        first = stats.units_generated
        # each unit costs 40 completion tokens plus its prompt: the cap is reached after 4 units;
        # at most `concurrency` more were in flight
        assert 4 <= first <= 4 + 2 and stats.prompt_tokens + stats.completion_tokens >= 200
        table, stats = build_table(spec, be, queries, tmp_path / "t", checkpoint=ckpt, progress=False)
        be.close()
    assert stats.units_before == first and stats.units_generated == 18 - first and len(srv.requests) == 18
    sessions = [r for r in scan(ckpt).records if r["kind"] == "session"]
    assert "token cap" in sessions[0]["status"] and sessions[1]["status"] == "done"
    assert json.loads(json.dumps(table.provenance["build_sessions"])) == 2


def test_message_template_prompts_reach_the_server_as_rendered(tmp_path):
    from iapo_gym.live.source import LiveSource
    from iapo_gym.live.specs import check_template, render

    s = load_spec("smolarith")
    chat = [
        {"role": "system", "content": "You are a careful calculator."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "Answer: 5"},
        {"role": "user", "content": "{query}\nReply as 'Answer: <number>'."},
    ]
    spec = s.with_overrides(prompts=[s.prompts[0], chat], pool=2)
    queries = arithmetic_queries(3)
    with FakeChatServer() as srv:
        be = _be(srv, spec, concurrency=2)
        table, _ = build_table(spec, be, queries, tmp_path / "t", progress=False)
        src = LiveSource(spec, be, queries)
        src.pull(np.array([1]), np.array([2]), np.array([2]), np.random.default_rng(0))
        be.close()
    sent = [r["body"]["messages"] for r in srv.requests]
    assert sorted(len(m) for m in sent[:-1]) == [1, 1, 1, 4, 4, 4]
    chats = sorted((msgs for msgs in sent[:-1] if len(msgs) == 4), key=lambda m: m[3]["content"])
    assert chats == sorted((list(render(tuple(chat), q.text)) for q in queries), key=lambda m: m[3]["content"])
    assert sent[-1] == list(render(tuple(chat), queries[2].text))  # the live source renders the same way
    assert table.prompts[1] == json.dumps(chat) and table.n_prompts == 2
    assert check_template(tuple(chat[:3])) == "must end with the user turn"
    assert "no '{query}'" in check_template(({"role": "user", "content": "hi"},))
    with pytest.raises(ValueError, match=r"prompts\[1\] message 0 needs a role"):
        s.with_overrides(prompts=[s.prompts[0], [{"role": "robot", "content": "{query}"}]])


def test_scoring_never_stalls_generation(tmp_path):
    """The scorer blocks until the server has received every request: with scoring inline between
    batches this would dead-lock (caught by the timeout); the writer thread scores while the
    scheduler keeps generating."""
    import threading

    from iapo_gym.live.scorers import make_scorer

    s = load_spec("helpful_harmless")
    spec = s.with_overrides(prompts=s.prompts[:3], pool=2, scorer={"name": "lexical_proxy", "target_words": 10})
    queries = load_queries_sample(spec, 4)
    base = make_scorer(spec.scorer)
    all_sent = threading.Event()

    class Blocking:
        kind, name, objectives = base.kind, "blocking", base.objectives

        def score(self, qs, ts):
            if not all_sent.wait(20):
                raise TimeoutError("generation stalled while scoring")
            return base.score(qs, ts)

    with FakeChatServer(latency=0.05) as srv:
        be = _be(srv, spec, concurrency=3)
        def watch() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if len(srv.requests) >= 12:
                    all_sent.set()
                    return
                time.sleep(0.01)

        threading.Thread(target=watch, daemon=True).start()
        table, stats = build_table(spec, be, queries, tmp_path / "t", scorer=Blocking(), progress=False)
        be.close()
    assert stats.units_generated == 12 and table.outcome_values.shape == (3, 4, 2, 2)


def load_queries_sample(spec, n):
    from iapo_gym.live.specs import load_queries

    return load_queries(spec, local_path="sample", limit=n)


def test_reward_models_through_a_pooling_endpoint(tmp_path):
    from iapo_gym.live.scorers import make_scorer

    s = load_spec("helpful_harmless")
    with FakeChatServer() as srv:
        scorer_cfg = {"name": "reward_endpoint", "base_url": srv.base_url + "/v1", "batch_size": 5, "objectives": [
            {"name": "helpful", "model": "rm-helpful", "template": "H: {query} A: {response}"},
            {"name": "harmless", "model": "rm-harmless", "normalise": "none", "template": "{response}"}]}
        spec = s.with_overrides(prompts=s.prompts[:2], pool=3, scorer=scorer_cfg, objective_ranges=((0.0, 1.0), (-2.0, 2.0)))
        queries = load_queries_sample(spec, 3)
        be = _be(srv, spec, concurrency=2)
        table, _ = build_table(spec, be, queries, tmp_path / "t", progress=False)
        be.close()
        pooled = [r for r in srv.requests if "input" in r["body"]]
    units = {(u["p"], u["q"]): u for u in read_units(tmp_path / "t.checkpoint.jsonl")}
    for (p, q), u in units.items():
        want_h = [1 / (1 + np.exp(-FakeChatServer.reward(f"H: {queries[q].text} A: {t}"))) for t in u["texts"]]
        want_s = [FakeChatServer.reward(t) for t in u["texts"]]
        np.testing.assert_allclose(table.outcome_values[p, q, :, 0], want_h)
        np.testing.assert_allclose(table.outcome_values[p, q, :, 1], want_s)
    assert {r["body"]["model"] for r in pooled} == {"rm-helpful", "rm-harmless"}
    assert max(len(r["body"]["input"]) for r in pooled) <= 5
    assert make_scorer(scorer_cfg).ranges.tolist() == [[0.0, 1.0], [-np.inf, np.inf]]
