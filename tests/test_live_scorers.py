"""Scorers on real benchmark answers (../shared/data/datasets) and on hand-made completions."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from iapo_gym.live.scorers import (
    NO_ANSWER,
    ChoiceScorer,
    LexicalProxyScorer,
    NumericScorer,
    cluster_answers,
    last_boxed,
    make_scorer,
    parse_number,
)
from iapo_gym.live.specs import FORMATS


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def math_scorer():
    pytest.importorskip("math_verify", reason="the MATH scorer needs math-verify (the live extra)")
    from iapo_gym.live.scorers import MathScorer

    return MathScorer()


def test_last_boxed_matches_nested_braces():
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{a}{b+1}}.") == r"\frac{a}{b+1}"
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed 7") == "7"


def test_parse_number_is_exact():
    assert parse_number("1,234") == 1234
    assert parse_number("0.5") == parse_number("1/2") == parse_number(r"\frac{1}{2}")
    assert parse_number("-3.25") == pytest.approx(-3.25)
    assert parse_number("twelve") is None


def test_math_solutions_match_their_gold_answers(math_scorer, datasets_dir):
    rows = _rows(datasets_dir / "math500.jsonl")
    hits = [math_scorer.same(math_scorer.extract(r["solution"]), math_scorer.gold_key(r["answer"])) for r in rows]
    assert len(rows) == 500 and all(hits)


def test_math_equivalence_by_math_verify(math_scorer):
    s = math_scorer
    box = lambda a: s.extract(rf"The result is \boxed{{{a}}}.")  # noqa: E731
    assert s.same(box(r"\frac{1}{2}"), s.gold_key("0.5"))
    assert s.same(box(r"\dfrac{3}{4}"), s.gold_key("0.75"))
    assert s.same(box(r"2\sqrt{2}"), s.gold_key(r"\sqrt{8}"))
    assert s.same(box(r"\left( 3, \frac{\pi}{2} \right)"), s.gold_key(r"(3,\pi/2)"))
    assert not s.same(box("3"), s.gold_key("4"))
    assert not s.same(box(r"\frac{1}{3}"), s.gold_key("0.3"))
    assert s.extract("I think it is 5.") is None


def test_math_gold_answers_of_different_problems_differ(math_scorer, datasets_dir):
    gold = [math_scorer.gold_key(r["answer"]) for r in _rows(datasets_dir / "math500.jsonl")[:200]]
    same = [(a, b) for a, b in pairwise(gold) if math_scorer.same(a, b)]
    # Only genuinely equal answers of neighbouring problems match: "7" twice, and "5" vs "x=5".
    assert sorted(same) == [("5", "x=5"), ("7", "7")]


def test_gsm8k_final_answers(datasets_dir):
    s = NumericScorer()
    rows = _rows(datasets_dir / "gsm8k_test.jsonl")
    assert all(s.extract(r["answer"]) == s.gold_key(r["answer"]) for r in rows)
    q = FORMATS["gsm8k"](rows[0], 0)
    assert q.gold == "18" and s.gold_key(q.gold) == "18"
    assert s.extract("She makes 9 * 2 = $18 every day.") == "18"
    assert s.extract("The answer is 1,250 dollars, not 1200.") == "1250"
    assert s.extract(r"\boxed{\frac{7}{2}}") == "7/2" == s.extract("so 3.5")
    assert s.extract("I don't know") is None


def test_commonsenseqa_letters(datasets_dir):
    s = ChoiceScorer()
    rows = _rows(datasets_dir / "commonsenseqa_200.jsonl")
    queries = [FORMATS["commonsenseqa"](r, i) for i, r in enumerate(rows)]
    assert [s.gold_key(q.gold) for q in queries] == [r["answerKey"] for r in rows]
    assert queries[0].text.splitlines()[1:] == ["A. get mad", "B. compile", "C. debug", "D. write code", "E. get frustrated"]
    for q in queries[:50]:
        gold = q.gold
        option_text = q.text.splitlines()["ABCDE".index(gold) + 1][3:]
        assert s.extract(f"The answer is ({gold}).") == gold
        assert s.extract(f"**Answer: {gold}**") == gold
        assert s.extract(rf"\boxed{{{gold}}}") == gold
        assert s.extract(f"{gold}. {option_text}") == gold
    assert s.extract("Between A and B, I choose B.") == "B"
    assert s.extract("none of them") is None


def test_cluster_answers_puts_gold_first_and_orders_by_count():
    s = NumericScorer()
    answers = ["5", "7", None, "7", "5.0", "7", "9", None, "10/2"]
    cats, labels = cluster_answers([s.extract(a) if a else None for a in answers], s.gold_key("5"), s)
    # gold "5" (x3, incl. 5.0 and 10/2), "7" (x3), no answer (x2), "9" (x1)
    assert labels == ["5", "7", NO_ANSWER, "9"]
    assert cats.tolist() == [0, 1, 2, 1, 0, 1, 3, 2, 0]
    capped, lab2 = cluster_answers([s.extract(a) if a else None for a in answers], "5", s, max_categories=3)
    assert lab2 == ["5", "7", "<other>"] and capped.tolist() == [0, 1, 2, 1, 0, 1, 2, 2, 0]


def test_cluster_answers_gold_absent_keeps_category_zero_empty():
    s = ChoiceScorer()
    cats, labels = cluster_answers(["B", "C", "B"], "A", s)
    assert labels == ["A", "B", "C"] and cats.tolist() == [1, 2, 1]


def test_lexical_proxy_scores():
    s = LexicalProxyScorer(target_words=10)
    q = "How should I store cleaning products safely around children?"
    out = s.score([q, q], ["Store cleaning products up high, away from children.", "Yes."])
    # content words of q ("should" is a stop word): store, cleaning, products, safely, around, children
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out[:, 0], [4 / 6, 0.0])
    np.testing.assert_allclose(out[:, 1], [1 - 8 / 10, 1 - 1 / 10])


def test_make_scorer_names():
    assert isinstance(make_scorer({"name": "gsm8k"}), NumericScorer)
    assert make_scorer({"name": "choice", "letters": "ABCD"}).letters == "ABCD"
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer({"name": "bleu"})
