"""The router against a local OpenAI-compatible upstream through the real OpenAI backend."""

from __future__ import annotations

import re

import numpy as np
import pytest

import iapo_gym
from iapo_gym.agents.base import TablePolicy
from iapo_gym.contexts import ContextSet
from iapo_gym.deploy.router import ContextError, Router, majority_vote
from iapo_gym.deploy.testing import FakeUpstream, cycle_responder
from iapo_gym.live.backends import OpenAIBackend, SamplingConfig
from iapo_gym.live.scorers import LexicalProxyScorer, NumericScorer
from iapo_gym.live.specs import Query, load_spec, spec_from_dict
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.tasks import load_task_table

ARMS = {"low": (2, 5), "mid": (1, 3), "high": (0, 1)}  # context -> (prompt, N)


def sum_responder(messages, n, seed):
    """Answers 'What is a + b?' right, except every third completion, which says a + b + 1."""
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", messages[0]["content"]).groups())
    return [f"The answer is {a + b + (1 if i % 3 == 2 else 0)}." for i in range(n)]


@pytest.fixture(scope="module")
def spec():
    return load_spec("smolarith")


@pytest.fixture(scope="module")
def policy_path(spec, tmp_path_factory):
    table = load_task_table("SmolArith")
    arms = np.array([p * 16 + n - 1 for p, n in (ARMS[c] for c in table.contexts.names)])
    return TablePolicy(table.contexts, arms, 16).save(tmp_path_factory.mktemp("pol") / "p.json", table, agent="hand")


def _backend(up, spec, **kw):
    return OpenAIBackend(up.model, up.base_url, SamplingConfig(**spec.sampling.to_json()), **kw)


def test_arm_per_context_request_votes_tokens_and_cost(spec, policy_path):
    policy = iapo_gym.load_policy(policy_path)
    with FakeUpstream(sum_responder) as up:
        router = Router(policy, spec, _backend(up, spec))
        for name, (p, n) in ARMS.items():
            ans = router.answer("What is 12 + 30?", name, seed=11)
            headers, body = up.requests[-1]
            assert body["n"] == n and body["seed"] == 11
            assert body["messages"] == list(spec.messages(p, Query("x", "What is 12 + 30?")))
            assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.8, 0.95, 40)
            assert (ans.prompt, ans.n, ans.arm, ans.context_name) == (p, n, p * 16 + n - 1, name)
            texts = sum_responder(body["messages"], n, 0)
            assert ans.completions == tuple(texts)
            assert ans.answer == "42" and ans.text == texts[0]
            wrong = sum(1 for i in range(n) if i % 3 == 2)
            assert ans.votes == ({"42": n - wrong, "43": wrong} if wrong else {"42": n})
            assert ans.completion_tokens == sum(len(t.split()) for t in texts)
            scale = load_task_table("SmolArith").provenance["cost_scale_per_token"]
            assert ans.cost == pytest.approx(ans.completion_tokens * scale) and ans.cost_basis == "tokens"
        # a weight vector deploys the nearest context's arm
        ans = router.answer("What is 1 + 2?", [1.0, 0.9])
        assert (ans.prompt, ans.n, ans.context_name, ans.context) == (0, 1, "high", (1.0, 0.9))
        ans = router.answer("What is 1 + 2?", {"name": "mid"})
        assert (ans.prompt, ans.n) == ARMS["mid"]


def test_bad_contexts_are_refused_before_any_request(spec, policy_path):
    with FakeUpstream(sum_responder) as up:
        router = Router(iapo_gym.load_policy(policy_path), spec, _backend(up, spec))
        for bad, match in [("urgent", "unknown context 'urgent'"), ([1.0], "must be 2 numbers"),
                           ([1.0, -0.2], "must be >= 0"), ([1.0, float("nan")], "finite"), ({"w": 1}, "'name'"),
                           ("", "unknown context")]:
            with pytest.raises(ContextError, match=match):
                router.answer("What is 1 + 2?", bad)
        assert up.requests == []


def test_answer_many_keeps_order_and_uses_backend_concurrency(spec, policy_path):
    with FakeUpstream(sum_responder, latency=0.2) as up:
        router = Router(iapo_gym.load_policy(policy_path), spec, _backend(up, spec, concurrency=4))
        queries = [f"What is {i} + {2 * i}?" for i in range(8)]
        answers = router.answer_many(queries, ["low", "mid"] * 4)
        assert [a.answer for a in answers] == [str(3 * i) for i in range(8)]
        assert [a.n for a in answers] == [5, 3] * 4
        assert up.max_in_flight == 4
        with pytest.raises(ContextError, match="3 contexts for 8 queries"):
            router.answer_many(queries, ["low"] * 3)


def test_majority_vote_ties_are_uniform_and_seeded(spec, policy_path):
    scorer = NumericScorer()
    picks = [majority_vote(["7", "8", None, None, "9"], scorer, np.random.default_rng(s))[0] for s in range(600)]
    # classes in first-seen order: 7, 8, <no answer>, 9; the unreadable answers (2 votes) win outright
    assert set(picks) == {2}
    winners = [majority_vote(["7", "8", "8", "7"], scorer, np.random.default_rng(s))[0] for s in range(600)]
    share = np.mean(np.asarray(winners) == 0)
    assert 0.43 < share < 0.57  # uniform tie-break: the table's expected credit 1/t
    with FakeUpstream(cycle_responder(("It is 7.", "It is 8."))) as up:
        pol = TablePolicy(load_task_table("SmolArith").contexts, np.array([1, 1, 1]), 16)  # prompt 0, N = 2
        router = Router(pol, spec, _backend(up, spec), table=load_task_table("SmolArith"))
        got = [router.answer("What is 3 + 4?", "low", seed=s) for s in range(60)]
        assert {a.answer for a in got} == {"7", "8"} and all(a.tied == 2 for a in got)
        assert [router.answer("What is 3 + 4?", "low", seed=s).answer for s in range(60)] == [a.answer for a in got]
        no_answer = Router(pol, spec, _backend(up, spec), table=load_task_table("SmolArith"))
        up.responder = cycle_responder(("No idea.",))
        ans = no_answer.answer("What is 3 + 4?", "low", seed=0)
        assert ans.answer is None and ans.votes == {"<no answer>": 2} and ans.text == "No idea."


def test_equivalent_answers_vote_together():
    mv = pytest.importorskip("math_verify")
    assert mv is not None
    from iapo_gym.live.scorers import MathScorer

    scorer = MathScorer()
    answers = [scorer.extract(t) for t in ("\\boxed{2}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{2}",
                                           "\\boxed{\\dfrac{2}{4}}")]
    winner, labels, cls, votes, tied = majority_vote(answers, scorer, np.random.default_rng(0))
    assert labels[winner] == "\\frac{1}{2}" and votes.tolist() == [2, 3] and tied == 1
    assert cls.tolist() == [0, 1, 1, 0, 1]


def test_best_of_n_scores_with_the_context_weights():
    spec = spec_from_dict({
        "task": "ToyBoN", "strategy": "bon", "prompts": ["Answer: {query}", "Briefly: {query}"],
        "dataset": {"format": "jsonl"}, "scorer": {"name": "lexical_proxy", "target_words": 20},
        "objectives": ["coverage", "brevity"], "objective_ranges": [[0, 1], [0, 1]],
        "contexts": {"type": "preference", "levels": {"low": 0.0, "high": 1.0}, "steps": [0.1, 0.9]},
        "n_max": 4, "pool": 4, "sampling": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64}, "cost": {"max_cost": 0.01},
    })
    contexts: ContextSet = spec.context_set()
    table = OutcomeTable(task="ToyBoN", strategy="bon", prompts=spec.prompts, query_ids=("q0",),
                         objectives=spec.objectives, objective_ranges=np.array([[0.0, 1.0], [0.0, 1.0]]),
                         contexts=contexts, n_max=4, cost=np.array([[0.01], [0.004]]), split=np.zeros(1, np.int8),
                         outcome_values=np.zeros((2, 1, 1, 2)), outcome_probs=np.ones((2, 1, 1)))
    policy = TablePolicy(contexts, np.full(len(contexts), 1 * 4 + 3), 4)  # prompt 1, N = 4 everywhere
    texts = ("Green plants use light.",
             "Photosynthesis in green plants turns light, water and carbon dioxide into sugar and oxygen, "
             "which is how plants make their food from light.",
             "Sugar.",
             "Plants make sugar from light in photosynthesis.")
    query = "Explain photosynthesis in green plants using light"
    with FakeUpstream(cycle_responder(texts)) as up:
        router = Router(policy, spec, _backend(up, spec), table=table)
        expected = LexicalProxyScorer(target_words=20).score([query] * 4, list(texts))
        chosen = set()
        for name, w in zip(contexts.names, contexts.weights, strict=True):
            ans = router.answer(query, name)
            assert ans.scores == pytest.approx(tuple(expected @ w[:-1]))
            assert ans.chosen == int(np.argmax(expected @ w[:-1])) and ans.text == texts[ans.chosen]
            assert ans.cost_basis == "table" and ans.cost == pytest.approx(4 * 0.004)
            chosen.add(ans.chosen)
        assert len(chosen) == 2  # coverage-heavy and brevity-heavy contexts pick different completions


def test_router_refuses_mismatched_backend_sampling_and_unknown_task(spec, policy_path):
    with FakeUpstream(sum_responder) as up:
        hot = OpenAIBackend(up.model, up.base_url, SamplingConfig(1.0, 0.95, 40))
        with pytest.raises(ValueError, match="build the backend with the spec's sampling"):
            Router(iapo_gym.load_policy(policy_path), spec, hot)
        bare = TablePolicy(load_task_table("SmolArith").contexts, np.zeros(3, np.int64), 16)
        with pytest.raises(ValueError, match="carries no task identity"):
            Router(bare, spec, _backend(up, spec))


def _tiny_reward_model(folder, seed):
    """A 1-layer GPT-2 sequence-classification model and a word-level tokenizer, built offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    words = "[PAD] [UNK] plants light sugar water green photosynthesis make use the and in from".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(words), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                        pad_token_id=0)
    GPT2ForSequenceClassification(config).eval().save_pretrained(folder)
    return str(folder)


def test_best_of_n_with_the_specs_reward_models(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from iapo_gym.live.scorers import make_scorer

    scorer_cfg = {"name": "reward_model", "max_length": 64, "objectives": [
        {"name": "helpful", "model": _tiny_reward_model(tmp_path / "rm1", 1), "template": "{query} {response}",
         "scale": 0.05},
        {"name": "harmless", "model": _tiny_reward_model(tmp_path / "rm2", 2), "template": "{query} {response}",
         "scale": 0.05}]}
    spec = spec_from_dict({
        "task": "ToyRM", "strategy": "bon", "prompts": ["{query}"], "dataset": {"format": "jsonl"}, "scorer": scorer_cfg,
        "objectives": ["helpful", "harmless"], "objective_ranges": [[0, 1], [0, 1]],
        "contexts": {"type": "preference", "levels": {"low": 0.0}, "steps": [0.1, 0.9]},
        "n_max": 4, "pool": 4, "sampling": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64},
    })
    contexts = spec.context_set()
    table = OutcomeTable(task="ToyRM", strategy="bon", prompts=spec.prompts, query_ids=("q0",),
                         objectives=spec.objectives, objective_ranges=np.array([[0.0, 1.0], [0.0, 1.0]]),
                         contexts=contexts, n_max=4, cost=np.array([[0.01]]), split=np.zeros(1, np.int8),
                         outcome_values=np.zeros((1, 1, 1, 2)), outcome_probs=np.ones((1, 1, 1)))
    texts = ("green plants use light", "sugar and water", "photosynthesis in the green plants make sugar from light",
             "light light light")
    query = "how do plants make sugar"
    with FakeUpstream(cycle_responder(texts)) as up:
        router = Router(TablePolicy(contexts, np.full(len(contexts), 3), 4), spec, _backend(up, spec), table=table)
        values = make_scorer(scorer_cfg).score([query] * 4, list(texts))  # an independent load of the models
        assert np.ptp(values, axis=0).min() > 1e-3  # the completions are told apart by both models
        seen = []
        for name, w in zip(contexts.names, contexts.weights, strict=True):
            ans = router.answer(query, name)
            assert ans.scores == pytest.approx(tuple(values @ w[:-1]), abs=1e-6)
            assert ans.chosen == int(np.argmax(values @ w[:-1])) and ans.text == texts[ans.chosen]
            seen.append(ans.scores)
        assert seen[0] != pytest.approx(seen[1])


def _toy_bon():
    spec = spec_from_dict({
        "task": "ToyBoN", "strategy": "bon", "prompts": ["Answer: {query}", "Briefly: {query}"],
        "dataset": {"format": "jsonl"}, "scorer": {"name": "lexical_proxy", "target_words": 20},
        "objectives": ["coverage", "brevity"], "objective_ranges": [[0, 1], [0, 1]],
        "contexts": {"type": "preference", "levels": {"low": 0.0, "high": 1.0}, "steps": [0.1, 0.9]},
        "n_max": 4, "pool": 4, "sampling": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64}, "cost": {"max_cost": 0.01},
    })
    table = OutcomeTable(task="ToyBoN", strategy="bon", prompts=spec.prompts, query_ids=("q0",),
                         objectives=spec.objectives, objective_ranges=np.array([[0.0, 1.0], [0.0, 1.0]]),
                         contexts=spec.context_set(), n_max=4, cost=np.array([[0.01], [0.004]]),
                         split=np.zeros(1, np.int8), outcome_values=np.zeros((2, 1, 1, 2)), outcome_probs=np.ones((2, 1, 1)))
    return spec, table


def test_continuous_weights_reach_a_neural_policy(tmp_path):
    from iapo_gym.agents.neural import NeuralPolicy

    spec, table = _toy_bon()
    ws = np.full((2, 8), -1.0)  # the linear skip alone: value = direction @ ws (directions sum to 1)
    ws[:, 1] = [1.0, 0.0]  # (p0, N2): the coverage weight's share
    ws[:, 7] = [0.0, 1.0]  # (p1, N4): the brevity weight's share; every other arm -1
    policy = NeuralPolicy(np.zeros((2, 1)), np.zeros(1), np.zeros((1, 8)), np.zeros(8), ws, np.zeros(8), 1.0,
                          np.zeros(2), np.ones(8, bool), 4)
    path = policy.save(tmp_path / "neural.json", table)
    loaded = iapo_gym.load_policy(path, spec=spec)
    query = "Explain photosynthesis"
    with FakeUpstream(cycle_responder(("Light to sugar.",))) as up:
        router = Router(loaded, spec, _backend(up, spec))
        for weights, (p, n) in (([0.8, 0.2, 0.3], (0, 2)), ([0.25, 0.75, 0.0], (1, 4)), ([3.0, 1.0, 0.05], (0, 2))):
            ans = router.answer(query, weights)
            assert (ans.prompt, ans.n, ans.context_name, ans.context) == (p, n, None, tuple(weights))
            assert up.requests[-1][1]["n"] == n
            assert up.requests[-1][1]["messages"][0]["content"] == spec.prompts[p].replace("{query}", query)
        named = table.contexts.names[0]  # a named context is its weight vector; it keeps its name
        ans = router.answer(query, named)
        w = table.contexts.weights[0]
        assert ans.context_name == named and ans.context == tuple(w)
        assert (ans.prompt, ans.n) == ((0, 2) if w[0] > w[1] else (1, 4))
        with pytest.raises(ContextError, match="must be 3 numbers"):
            router.answer(query, [0.5, 0.5])
