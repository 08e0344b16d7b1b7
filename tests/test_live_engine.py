"""The real vLLM engine in process (CPU build, SmolLM2-135M-Instruct): backend, builder, live source."""

from __future__ import annotations

import os

import numpy as np
import pytest
from live_support import ENGINE_KWARGS, require_live_stack

from iapo_gym.live.backends import GenerationRequest, SamplingConfig
from iapo_gym.live.builder import build_table, prompt_id, unit_seed
from iapo_gym.live.checkpoint import read_units
from iapo_gym.live.scorers import NumericScorer, cluster_answers
from iapo_gym.live.source import LiveSource, ReplayBackend
from iapo_gym.live.specs import load_queries, load_spec
from iapo_gym.tables.io import load_table
from iapo_gym.tables.validation import validate_table

pytestmark = pytest.mark.live
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def engine():
    require_live_stack()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from iapo_gym.live.backends import VLLMBackend

    backend = VLLMBackend("smollm2", SamplingConfig(0.8, 0.95, MAX_TOKENS), seed=0, **ENGINE_KWARGS)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def spec():
    s = load_spec("smolarith")
    return s.with_overrides(prompts=s.prompts[:2], pool=4, sampling=SamplingConfig(0.8, 0.95, MAX_TOKENS))


def _req(text: str, n: int, seed: int) -> GenerationRequest:
    return GenerationRequest(({"role": "user", "content": text},), n, seed)


def test_seeded_generation_and_token_counts(engine):
    reqs = [_req("What is 2 + 3?", 3, 11), _req("Name a colour.", 2, 12), _req("What is 2 + 3?", 3, 99)]
    first = engine.generate(reqs)
    alone = engine.generate([reqs[0]])[0]
    assert alone.texts == first[0].texts  # same seed, another batch: same completions
    assert first[2].texts != first[0].texts  # another seed: other completions
    for r, g in zip(reqs, first, strict=True):
        assert len(g.texts) == r.n and g.exact_counts
        assert g.prompt_tokens == len(engine.encode(r.messages))
        assert all(1 <= c <= MAX_TOKENS for c in g.completion_tokens)
        assert [c == MAX_TOKENS for c in g.completion_tokens] == [f == "length" for f in g.finish_reasons]
    ids = engine.encode(reqs[0].messages)
    assert engine.tokenizer.decode(ids).rstrip().endswith("assistant")  # ChatML generation prompt applied


def test_builder_matches_raw_generate(engine, spec, tmp_path):
    queries = load_queries(spec, limit=3)
    table, stats = build_table(spec, engine, queries, tmp_path / "t", seed=5, batch_size=4, progress=False)
    assert stats.units_generated == 6 and stats.completions == 24
    units = read_units(tmp_path / "t.checkpoint.jsonl")
    # The builder's request for a unit is exactly the raw vLLM call with the unit's seed.
    import vllm

    prompts = [{"prompt_token_ids": engine.encode(spec.messages(u["p"], queries[u["q"]]))} for u in units]
    assert all(u["seed"] == unit_seed(5, prompt_id(spec.prompts[u["p"]]), queries[u["q"]].id) for u in units)
    params = [vllm.SamplingParams(n=4, seed=u["seed"], temperature=0.8, top_p=0.95,
                                  max_tokens=MAX_TOKENS) for u in units]
    raw = engine.llm.generate(prompts, params, use_tqdm=False)
    for u, out in zip(units, raw, strict=True):
        assert u["texts"] == [c.text for c in sorted(out.outputs, key=lambda c: c.index)]
        assert u["completion_tokens"] == [len(c.token_ids) for c in sorted(out.outputs, key=lambda c: c.index)]
    # The table is the answer clustering of those texts.
    s = NumericScorer()
    loaded = load_table(tmp_path / "t")
    validate_table(loaded)
    for q in range(3):
        answers = [s.extract(t) for p in range(2) for t in next(u for u in units if (u["p"], u["q"]) == (p, q))["texts"]]
        cats, _ = cluster_answers(answers, s.gold_key(queries[q].gold), s)
        for p in range(2):
            counts = np.bincount(cats.reshape(2, 4)[p], minlength=loaded.n_outcomes)
            np.testing.assert_allclose(loaded.answer_probs[p, q], counts / 4)
    tokens = np.array([[np.mean(next(u for u in units if (u["p"], u["q"]) == (p, q))["completion_tokens"]) for q in range(3)]
                       for p in range(2)])
    np.testing.assert_allclose(loaded.cost, tokens * 0.01 / tokens.mean(1).max())
    assert loaded.provenance["model"] == "smollm2" and loaded.provenance["sampling"]["max_tokens"] == MAX_TOKENS


def test_live_source_scores_and_replays(engine, spec, tmp_path):
    queries = load_queries(spec, limit=4)
    src = LiveSource(spec, engine, queries, record=tmp_path / "run.jsonl")
    prompt, n, query = np.array([0, 1, 1]), np.array([3, 1, 4]), np.array([0, 2, 3])
    pulls, ptoks, ctoks = src.pull(prompt, n, query, np.random.default_rng(0))
    rec = read_units(tmp_path / "run.jsonl")
    assert [(r["p"], r["q"], len(r["texts"])) for r in rec] == [(0, 0, 3), (1, 2, 1), (1, 3, 4)]
    s = NumericScorer()
    for b, r in enumerate(rec):
        correct = [s.extract(t) == queries[r["q"]].gold for t in r["texts"]]
        assert pulls.values[b, : n[b], 0].astype(bool).tolist() == correct
        assert ctoks[b] == sum(r["completion_tokens"]) and ptoks[b] == r["prompt_tokens"]
    np.testing.assert_allclose(pulls.cost.sum(1), ctoks * src.cost_per_token)
    replay = LiveSource(spec, ReplayBackend(tmp_path / "run.jsonl", spec, queries), queries)
    again = replay.pull(prompt, n, query, np.random.default_rng(0)).pulls
    np.testing.assert_array_equal(again.outcome, pulls.outcome)
    np.testing.assert_array_equal(again.cost, pulls.cost)


def test_env_live_mode_charges_records_and_replays(engine, spec, tmp_path):
    from iapo_gym.arms import arm_index
    from iapo_gym.env import IAPOEnv
    from iapo_gym.ledger import BudgetExceededError
    from iapo_gym.live.env_mode import aligned_queries, spec_table
    from iapo_gym.live.source import recording_to_table

    table = spec_table(spec, load_queries(spec, limit=4))
    rec = tmp_path / "live.jsonl"
    env = IAPOEnv(table, budget=20, backend=engine, live={"spec": spec, "record": rec})
    obs, _ = env.reset(seed=0)
    _, reward, terminated, _, info = env.step(arm_index(1, 3, spec.n_max))
    units = read_units(rec)
    assert terminated and len(units) == 1 and (units[0]["p"], len(units[0]["texts"])) == (1, 3)
    queries = aligned_queries(spec, table.query_ids)
    gold = queries[units[0]["q"]].gold
    s = NumericScorer()
    assert info["values"][:3, 0].astype(bool).tolist() == [s.extract(t) == gold for t in units[0]["texts"]]
    led = env.ledger
    assert led.spent == 3 and led.completion_tokens == sum(units[0]["completion_tokens"])
    assert led.prompt_tokens == units[0]["prompt_tokens"]
    train = env.train_queries
    pulls = env.pull(np.repeat([0, 1], train.size), 1, np.tile(train, 2))  # every prompt on every train query
    assert led.spent == 3 + 2 * train.size and len(read_units(rec)) == 1 + 2 * train.size
    with pytest.raises(BudgetExceededError):
        env.pull([0], [16])
    assert len(read_units(rec)) == 1 + 2 * train.size  # refused before generating anything
    # The recording replays the run exactly, with no LLM.
    env2 = IAPOEnv(table, budget=20, backend=LiveSource(spec, ReplayBackend(rec, spec, queries), queries))
    env2.reset(seed=0)
    _, reward2, _, _, info2 = env2.step(arm_index(1, 3, spec.n_max))
    pulls2 = env2.pull(np.repeat([0, 1], train.size), 1, np.tile(train, 2))
    assert reward2 == reward and np.array_equal(info2["values"], info["values"])
    np.testing.assert_array_equal(pulls2.outcome, pulls.outcome)
    # ... and as a table of the empirical outcome distributions it observed.
    t = recording_to_table(rec, spec, queries)
    assert set(t.query_ids) == {table.query_ids[q] for q in train}
    first = t.query_ids.index(table.query_ids[int(train[0])])
    np.testing.assert_allclose(t.answer_probs[0, first, 0], float(pulls.values[0, 0, 0]))


class _Chunked:
    """The builder's old path: ``LLM.generate`` on chunks of units, each chunk waited for."""

    def __init__(self, engine):
        self.model, self.sampling, self.engine = engine.model, engine.sampling, engine

    def stream(self, requests):
        yield from enumerate(self.engine.generate_batch(requests))

    def close(self):
        pass


def test_continuous_engine_matches_chunked_path_bit_for_bit(engine, spec, tmp_path):
    """Units are queued in the running engine (3 in flight, 12 units: many top-ups) and each is
    delivered as it finishes; the table equals the chunked ``LLM.generate`` path's bit for bit."""
    import threading
    import time

    queries = load_queries(spec, limit=6)
    events: list[tuple[float, str]] = []
    lock = threading.Lock()
    submit = engine.submit

    def traced(request):
        fut = submit(request)
        with lock:
            events.append((time.monotonic(), "submit"))
        fut.add_done_callback(lambda f: events.append((time.monotonic(), "done")))
        return fut

    engine.submit = traced
    try:
        table, stats = build_table(spec, engine, queries, tmp_path / "cont", seed=5, concurrency=3, progress=False)
    finally:
        del engine.submit
    assert stats.units_generated == 12 and stats.complete
    order = [kind for _, kind in sorted(events)]
    in_flight = np.cumsum([1 if k == "submit" else -1 for k in order])
    assert in_flight.max() == 3 and order.count("submit") == 12  # the window is kept, never exceeded
    ref, ref_stats = build_table(spec, _Chunked(engine), queries, tmp_path / "chunk", seed=5, batch_size=4, progress=False)
    assert ref_stats.units_generated == 12
    cont = {u["key"]: u for u in read_units(tmp_path / "cont.checkpoint.jsonl")}
    chunk = {u["key"]: u for u in read_units(tmp_path / "chunk.checkpoint.jsonl")}
    assert cont.keys() == chunk.keys()
    for k, u in cont.items():
        for field in ("texts", "completion_tokens", "prompt_tokens", "finish_reasons", "answers", "seed"):
            assert u[field] == chunk[k][field], field
    a, b = load_table(tmp_path / "cont"), load_table(tmp_path / "chunk")
    for name in ("answer_probs", "cost", "gold", "split"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.provenance["answer_labels"] == b.provenance["answer_labels"] and a.query_ids == b.query_ids


def test_engine_quarantines_a_refused_request_and_keeps_going(engine):
    from iapo_gym.live.backends import RequestRejected

    too_long = _req("seven " * 2000, 2, 1)  # about 2,000 tokens > max_model_len 1024
    fut = engine.submit(too_long)
    ok = engine.submit(_req("What is 2 + 3?", 2, 11))
    with pytest.raises(RequestRejected) as info:
        fut.result(timeout=120)
    assert info.value.status == 400 and "1024" in str(info.value)
    assert ok.result(timeout=300).texts == engine.generate([_req("What is 2 + 3?", 2, 11)])[0].texts


def test_engine_hands_back_each_request_as_it_finishes(engine):
    """Requests queued together come back in the order they finish in the engine, each as soon as
    it finishes: a short answer is not held back by a long one submitted with it."""
    import time

    reqs = [_req("Write a long story about a dragon and a knight.", 2, 3), _req("Reply with one word: yes or no?", 2, 4),
            _req("Describe the history of Rome in detail.", 2, 5), _req("What is 1 + 1? Answer with the number only.", 2, 6)]
    t0 = time.monotonic()
    futs = [engine.submit(r) for r in reqs]
    done: dict[int, float] = {}
    for i, f in enumerate(futs):
        f.add_done_callback(lambda _, i=i: done.setdefault(i, time.monotonic() - t0))
    gens = [f.result(timeout=300) for f in futs]
    steps = [max(g.completion_tokens) for g in gens]  # engine steps each request needed
    assert max(steps) == MAX_TOKENS and min(steps) <= MAX_TOKENS - 8, steps  # seeded: a short and a long answer
    for a in range(4):
        for b in range(4):
            if steps[a] + 4 <= steps[b]:  # a needed at least 4 fewer decoding steps than b
                assert done[a] < done[b], (steps, done)
    assert [g.texts for g in gens] == [g.texts for g in engine.generate_batch(reqs)]
