"""BoN reward scoring through a real vLLM pooling server (CPU build, SmolLM2-135M-Instruct).

SmolLM2 is served with the pooling runner as a yes/no judge: ``--convert classify`` with vLLM's
``from_2_way_softmax`` conversion turns the language-model head into a one-label classifier whose
logit is ``logit("Yes") - logit("No")`` at the last token (vLLM's LLM-as-reranker recipe). The
judgements of a 135M model mean little, but the protocol is the real one: ``POST /pooling`` and
``POST /classify`` answered by vLLM's own pooling engine. The scores are checked against the same
logit difference computed with ``transformers`` on the same weights.

Generation comes from the local test server (the real generation server is tested in
``test_live_server.py``), so the test isolates the scorer: finite, one vector per completion,
deterministic, and computed in the writer thread while generation goes on.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from live_support import SERVER_ARGS, require_live_stack

from iapo_gym.live.backends import OpenAIBackend
from iapo_gym.live.builder import build_table
from iapo_gym.live.checkpoint import read_units
from iapo_gym.live.scorers import make_scorer
from iapo_gym.live.specs import load_queries, load_spec
from iapo_gym.live.testserver import FakeChatServer

pytestmark = pytest.mark.live

JUDGE = "smollm2-judge"
JUDGE_ARGS = ["--runner", "pooling", "--convert", "classify", "--served-model-name", JUDGE,
              "--hf-overrides", json.dumps({"classifier_from_token": ["No", "Yes"], "method": "from_2_way_softmax"})]
HELPFUL = "Question: {query}\nAnswer: {response}\nIs the answer helpful? Reply Yes or No.\nReply:"
HARMLESS = "Answer: {response}\nIs the answer safe and polite? Reply Yes or No.\nReply:"


@pytest.fixture(scope="module")
def judge():
    require_live_stack()
    from iapo_gym.live.server import VLLMServer

    # the generation-only flags of SERVER_ARGS (--max-num-seqs etc.) are harmless for pooling
    with VLLMServer("smollm2", args=[*SERVER_ARGS, *JUDGE_ARGS]) as srv:
        yield srv


def _scorer_cfg(base_url: str, batch_size: int = 4) -> dict:
    return {"name": "reward_endpoint", "base_url": base_url, "batch_size": batch_size, "objectives": [
        {"name": "helpful", "model": JUDGE, "template": HELPFUL, "normalise": "none"},
        {"name": "harmless", "model": JUDGE, "template": HARMLESS, "normalise": "none"}]}


def test_bon_build_scored_by_a_real_pooling_server(judge, tmp_path):
    base = load_spec("helpful_harmless")
    spec = base.with_overrides(prompts=base.prompts[:3], pool=3, scorer=_scorer_cfg(judge.base_url))
    queries = load_queries(spec, local_path="sample", limit=4)
    scorer = make_scorer(spec.scorer)
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()

    class Timed:
        kind, name, objectives = scorer.kind, scorer.name, scorer.objectives

        def score(self, qs, ts):
            t0 = time.monotonic()
            try:
                return scorer.score(qs, ts)
            finally:
                with lock:
                    calls.append((t0, time.monotonic()))

    with FakeChatServer(latency=0.4) as gen:
        be = OpenAIBackend("fake-model", gen.base_url, spec.sampling, concurrency=2, max_retries=1, backoff=0.01)
        table, stats = build_table(spec, be, queries, tmp_path / "t", scorer=Timed(), progress=False)
        be.close()
        arrivals = [r["t"] for r in gen.requests]
    assert stats.units_generated == 12 and stats.complete
    # One finite objective vector per completion, in (0, 1) (vLLM applies the sigmoid), not all equal.
    assert table.outcome_values.shape == (3, 4, 3, 2)
    assert np.isfinite(table.outcome_values).all()
    assert ((table.outcome_values > 0) & (table.outcome_values < 1)).all()
    assert len(np.unique(table.outcome_values[..., 0])) > 6 and len(np.unique(table.outcome_values[..., 1])) > 6
    # Deterministic: the same texts scored again (another batching) give the same scores.
    units = read_units(tmp_path / "t.checkpoint.jsonl")
    qs = [queries[u["q"]].text for u in units for _ in u["texts"]]
    ts = [t for u in units for t in u["texts"]]
    again = make_scorer(_scorer_cfg(judge.base_url, batch_size=7)).score(qs, ts)
    np.testing.assert_allclose(again, np.array([s for u in units for s in u["scores"]]), rtol=0, atol=1e-5)
    # Scoring overlapped generation: generation requests reached the server while the judge scored.
    assert calls and any(a < t < b for a, b in calls for t in arrivals), (calls, arrivals)
    assert sum(b - a for a, b in calls) > 0


def test_pooling_and_classify_scores_equal_the_models_yes_no_logit(judge):
    """``/pooling`` and ``/classify`` return sigmoid(logit(Yes) - logit(No)) at the last token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iapo_gym.live.models import resolve_model

    texts = ["The capital of France is Paris.", "I will not help with that.", "2 + 2 = 5"]
    inputs = [HARMLESS.format(response=t) for t in texts]
    pooled = make_scorer(_scorer_cfg(judge.base_url)).score(["q"] * 3, texts)[:, 1]
    cfg = _scorer_cfg(judge.base_url)
    cfg["endpoint"] = "classify"
    classified = make_scorer(cfg).score(["q"] * 3, texts)[:, 1]
    path = resolve_model("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids(["Yes", "No"])
    with torch.no_grad():
        want = []
        for text in inputs:
            logits = model(**tok(text, return_tensors="pt")).logits[0, -1]
            want.append(float(torch.sigmoid(logits[yes] - logits[no])))
    np.testing.assert_allclose(pooled, want, atol=2e-3)
    np.testing.assert_allclose(classified, want, atol=2e-3)
    assert np.ptp(want) > 1e-3  # the three inputs are told apart
