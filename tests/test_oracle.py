"""Exact oracle: brute-force cross-checks, policy metrics, MATH reference values, Monte-Carlo check."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from iapo_gym import oracle
from iapo_gym.arms import arm_index
from iapo_gym.oracle import acr, best_arms, bon_expected_max, mv_credit, per_query_values, q_values, regret
from iapo_gym.tables.testing import example_table


# --------------------------------------------------------------------------- brute force
def _compositions(n: int, parts: int):
    if parts == 1:
        yield (n,)
        return
    for i in range(n + 1):
        for rest in _compositions(n - i, parts - 1):
            yield (i, *rest)


def brute_mv_credit(p: np.ndarray, gold: int, n: int) -> float:
    """Sum over all vote-count vectors of multinomial probability times 1/t credit."""
    total = 0.0
    for counts in _compositions(n, len(p)):
        prob = math.factorial(n)
        for c, pi in zip(counts, p, strict=True):
            prob *= pi**c / math.factorial(c)
        top = max(counts)
        if counts[gold] == top:
            total += prob / sum(1 for c in counts if c == top)
    return total


def brute_bon(scores: np.ndarray, probs: np.ndarray, n: int) -> float:
    """Sum over all outcome sequences of their probability times the max score."""
    total = 0.0
    for seq in itertools.product(range(len(scores)), repeat=n):
        total += np.prod(probs[list(seq)]) * max(scores[list(seq)])
    return total


@pytest.mark.parametrize("n_categories", [2, 3, 4, 5])
def test_mv_credit_matches_enumeration(n_categories):
    rng = np.random.default_rng(n_categories)
    probs = rng.dirichlet(np.ones(n_categories), size=7)
    probs[1] = 1.0 / n_categories  # uniform: ties of every size t, up to t = A
    probs[2] = 0.0
    probs[2, :2] = [0.5, 0.5]  # zero-probability categories
    probs[3] = probs[0]  # a repeated row (deduplicated internally)
    gold = rng.integers(0, n_categories, size=7)
    gold[2] = 1
    gold[3] = gold[0]
    exact = mv_credit(probs, gold, 7)
    brute = np.array([[brute_mv_credit(probs[r], gold[r], n) for n in range(1, 8)] for r in range(7)])
    np.testing.assert_allclose(exact, brute, atol=1e-13)


def test_mv_credit_known_tie_values():
    # Two votes, two equally likely answers: a 1-1 tie (prob 1/2) is worth 1/2, 2-0 for gold 1/4.
    np.testing.assert_allclose(mv_credit([[0.5, 0.5]], [0], 2), [[0.5, 0.25 + 0.5 * 0.5]])
    # Three votes over three equally likely answers: all distinct (prob 6/27) is a 3-way tie -> 1/3.
    c3 = mv_credit([[1 / 3, 1 / 3, 1 / 3]], [2], 3)[0, 2]
    assert c3 == pytest.approx(1 / 3)  # by symmetry the three answers share credit 1
    assert brute_mv_credit(np.full(3, 1 / 3), 2, 3) == pytest.approx(c3)
    # A single category (always gold) is always right; a gold of probability 0 is never.
    np.testing.assert_allclose(mv_credit([[1.0]], [0], 4), np.ones((1, 4)))
    np.testing.assert_allclose(mv_credit([[0.0, 1.0]], [0], 4), np.zeros((1, 4)))


def test_mv_credit_rejects_bad_input():
    with pytest.raises(ValueError, match="gold"):
        mv_credit([[0.5, 0.5]], [2], 3)
    with pytest.raises(ValueError, match="n_max"):
        mv_credit([[0.5, 0.5]], [0], 10_000)


def test_bon_expected_max_matches_enumeration():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 4))
    probs = rng.dirichlet(np.ones(4), size=5)
    scores[1, 2] = scores[1, 0]  # tied scores
    probs[2, 3] = 0.0  # a zero-probability outcome with the top score must not count
    scores[2, 3] = 10.0
    probs[2] /= probs[2].sum()
    exact = bon_expected_max(scores, probs, 4)
    brute = np.array([[brute_bon(scores[r], probs[r], n) for n in range(1, 5)] for r in range(5)])
    np.testing.assert_allclose(exact, brute, atol=1e-12)


# --------------------------------------------------------------------------- table level
def test_per_query_values_formula_mv():
    t = example_table("mv", seed=3, n_prompts=2, n_queries=4, n_outcomes=3, n_max=5)
    v = per_query_values(t)
    assert v.shape == (len(t.contexts), 2, 4, 5)
    p, q = 1, 2
    credit = [brute_mv_credit(t.answer_probs[p, q], int(t.gold[q]), n) for n in range(1, 6)]
    w = t.contexts.weights
    for c in range(len(t.contexts)):
        expected = w[c, 0] * np.array(credit) - w[c, -1] * np.arange(1, 6) * t.cost[p, q]
        np.testing.assert_allclose(v[c, p, q], expected, atol=1e-12)


def test_per_query_values_formula_bon():
    t = example_table("bon", seed=4, n_prompts=2, n_queries=3, n_outcomes=3, n_max=4)
    w = np.array([[0.3, 0.7, 0.2], [0.9, 0.1, 1.0]])
    v = per_query_values(t, w)
    p, q = 1, 0
    for c in range(2):
        scores = t.outcome_values[p, q] @ w[c, :-1]
        expected = [brute_bon(scores, t.outcome_probs[p, q], n) - w[c, -1] * n * t.cost[p, q] for n in range(1, 5)]
        np.testing.assert_allclose(v[c, p, q], expected, atol=1e-12)


@pytest.mark.parametrize("strategy", ["mv", "bon"])
def test_q_values_average_queries_and_accept_any_weights(strategy):
    t = example_table(strategy, seed=5, n_prompts=3, n_queries=10, n_outcomes=4, n_max=6)
    queries = t.test_queries()
    rng = np.random.default_rng(0)
    k = t.n_objectives
    w = np.concatenate([rng.uniform(0, 1, size=(50, k)), rng.uniform(0, 2, size=(50, 1))], axis=1)
    q = q_values(t, queries, weights=w)
    assert q.shape == (50, 3, 6)
    np.testing.assert_allclose(q, per_query_values(t, w)[:, :, queries].mean(axis=2), atol=1e-12)
    # the table's own contexts (cached path) agree with passing the same weights explicitly
    np.testing.assert_allclose(q_values(t, queries), q_values(t, queries, weights=t.contexts.weights), atol=1e-12)
    mask = np.zeros(t.n_queries, bool)
    mask[queries] = True
    np.testing.assert_allclose(q_values(t, mask, weights=w), q, atol=1e-12)
    with pytest.raises(ValueError, match="query indices"):
        q_values(t, [t.n_queries])


def test_bon_chunking_matches_single_chunk(monkeypatch):
    t = example_table("bon", seed=6, n_prompts=3, n_queries=5, n_outcomes=4, n_max=5)
    w = np.random.default_rng(2).uniform(0, 1, size=(7, 3))
    whole = per_query_values(t, w)
    monkeypatch.setattr(oracle, "_BON_CHUNK_ELEMENTS", 1)  # one context per chunk
    monkeypatch.setattr(oracle, "_BON_BLOCK_ELEMENTS", 3)  # a handful of rows per block
    np.testing.assert_allclose(per_query_values(t, w), whole, atol=1e-14)


def test_best_arms_acr_regret():
    q = np.array(
        [
            [[0.1, 0.5, 0.2], [0.5, 0.0, 0.3]],  # tie between (0, N=2) and (1, N=1): lowest index wins
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.9]],
        ]
    )
    best = best_arms(q)
    np.testing.assert_array_equal(best, [1, 5])
    probs = np.array([0.25, 0.75])
    assert acr(q, best, probs) == pytest.approx(0.25 * 0.5 + 0.75 * 0.9)
    arms = np.array([[0, 5], [1, 0], [3, 5]])
    np.testing.assert_allclose(acr(q, arms, probs), [0.25 * 0.1 + 0.75 * 0.9, 0.125, 0.125 + 0.675])
    np.testing.assert_allclose(regret(q, arms, probs), [0.25 * 0.4, 0.675, 0.0])
    assert regret(q, best, probs) == 0.0
    with pytest.raises(ValueError, match="arm indices"):
        acr(q, [0, 6], probs)


def test_report_on_example_table():
    t = example_table("mv", seed=7, n_prompts=3, n_queries=10, n_outcomes=4, n_max=6)
    r = oracle.report(t, t.test_queries())
    q = q_values(t, t.test_queries())
    assert r.n_queries == len(t.test_queries())
    assert r.acr == pytest.approx(float((q.reshape(len(q), -1).max(axis=1) * t.contexts.probs).sum()))
    for c, row in enumerate(r.contexts):
        assert row.q == pytest.approx(q[c, row.prompt, row.n - 1])
    assert r.best_single_sample == pytest.approx(q_values(t, t.test_queries(), [[1.0, 0.0]])[0, :, 0].max())


# --------------------------------------------------------------------------- the paper's MATH table
@pytest.fixture(scope="module")
def math_table(math_pickle):
    from iapo_gym.tables.importer import import_released

    return import_released(math_pickle)


def test_math_reference_values(math_table):
    t = math_table
    q = q_values(t)
    best = best_arms(q)
    expected = {"low": ((4, 32), 0.8511), "mid": ((4, 11), 0.8266), "high": ((4, 5), 0.7899)}
    for c, name in enumerate(t.contexts.names):
        (p, n), value = expected[name]
        assert best[c] == arm_index(p, n, t.n_max)
        assert q[c, p, n - 1] == pytest.approx(value, abs=5e-5)
    assert acr(q, best, t.contexts.probs) == pytest.approx(0.8225, abs=5e-4)
    single = q_values(t, weights=[[1.0, 0.0]])[0, :, 0].max()
    assert single == pytest.approx(0.7747, abs=5e-5)
    # the credit does not depend on the context: a thousand contexts cost one multiply-add
    w = np.stack([np.ones(1001), np.linspace(0, 1, 1001)], axis=1)
    many = q_values(t, weights=w)
    np.testing.assert_allclose(many[[0, 200, 1000]], q[[0, 1, 2]], atol=1e-12)


# --------------------------------------------------------------------------- Monte-Carlo cross-check
def _mc_check(table, arms: list[tuple[int, int]], draws: int, seed: int) -> None:
    """The MC mean of ``utility`` over random pulls lies within its 99.9% interval of the exact Q."""
    sampling = pytest.importorskip("iapo_gym.sampling")
    if not hasattr(sampling, "sample_pulls"):
        pytest.skip("iapo_gym.sampling.sample_pulls is not written yet")
    from iapo_gym.utility import utility

    rng = np.random.default_rng(seed)
    q = q_values(table)
    for p, n in arms:
        query = rng.integers(0, table.n_queries, size=draws)
        pulls = sampling.sample_pulls(
            table, np.full(draws, p), query, np.full(draws, n), rng
        )
        u = utility(pulls, table.contexts.weights)  # (C, draws)
        mean, se = u.mean(axis=1), u.std(axis=1, ddof=1) / np.sqrt(draws)
        z = 3.29  # two-sided 99.9%
        assert np.all(np.abs(mean - q[:, p, n - 1]) <= z * se + 1e-12), (p, n, mean, q[:, p, n - 1], se)


def test_monte_carlo_matches_exact_on_math(math_table):
    _mc_check(math_table, [(4, 1), (4, 5), (0, 2), (10, 12), (4, 32)], draws=20_000, seed=11)


def test_monte_carlo_matches_exact_on_bon():
    t = example_table("bon", seed=8, n_prompts=3, n_queries=12, n_outcomes=6, n_max=8)
    _mc_check(t, [(0, 1), (1, 3), (2, 8)], draws=20_000, seed=12)


# --------------------------------------------------------------------------- command line
def _run_cli(argv: list[str], capsys) -> str:
    from iapo_gym.cli import main

    assert main(argv) == 0
    return capsys.readouterr().out


def test_cli_oracle_json_on_math(math_table, tmp_path, capsys):
    from iapo_gym.tables.io import save_table

    save_table(math_table, tmp_path / "MATH")
    data = json.loads(_run_cli(["oracle", str(tmp_path / "MATH"), "--json"], capsys))
    assert data["n_queries"] == 316 and data["split"] == "all"
    got = {c["name"]: (c["prompt"], c["n"], c["q"]) for c in data["contexts"]}
    for name, (p, n, value) in {"low": (4, 32, 0.8511), "mid": (4, 11, 0.8266), "high": (4, 5, 0.7899)}.items():
        assert got[name][:2] == (p, n)
        assert got[name][2] == pytest.approx(value, abs=5e-5)
    assert data["acr"] == pytest.approx(0.8225, abs=5e-4)
    assert data["best_single_sample"] == pytest.approx(0.7747, abs=5e-5)
    text = _run_cli(["oracle", str(tmp_path / "MATH"), "--split", "test"], capsys)
    assert "64 queries" in text and "oracle ACR" in text


def test_cli_oracle_split_and_plot(tmp_path, capsys):
    import matplotlib.image as mpimg

    from iapo_gym.tables.io import save_table

    t = example_table("bon", seed=9, n_prompts=4, n_queries=10, n_outcomes=5, n_max=6)
    save_table(t, tmp_path / "ex")
    data = json.loads(_run_cli(["oracle", str(tmp_path / "ex"), "--split", "train", "--json"], capsys))
    q = q_values(t, t.train_queries())
    assert data["n_queries"] == len(t.train_queries())
    assert data["acr"] == pytest.approx(acr(q, best_arms(q), t.contexts.probs), abs=1e-12)
    out = tmp_path / "plots" / "landscape.png"
    assert "wrote" in _run_cli(["plot", str(tmp_path / "ex"), "--out", str(out), "--contexts", "0,1"], capsys)
    img = mpimg.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 400  # two panels side by side
    assert img[..., :3].std() > 0.05  # not a blank canvas
    from iapo_gym.cli import main

    assert main(["plot", str(tmp_path / "ex"), "--contexts", "99"]) == 2  # clear error, not a crash
    assert "out of range" in capsys.readouterr().err


def test_task_name_and_context_selection():
    from iapo_gym.oracle_cli import select_contexts, task_name

    assert task_name("IAPO-MATH-v0") == "MATH"
    assert task_name("iapo_gym:IAPO-SynthCategorical-v0") == "SynthCategorical"
    assert task_name("MATH") == "MATH"
    names = tuple(f"c{i}" for i in range(27))
    assert select_contexts(names, None) == [0, 3, 6, 10, 13, 16, 20, 23, 26]
    assert select_contexts(names[:3], None) == [0, 1, 2]
    assert select_contexts(names, "c5,2") == [5, 2]
    assert select_contexts(names, "all") == list(range(27))


def test_mv_row_blocks_and_dedup_do_not_change_values(monkeypatch):
    rng = np.random.default_rng(21)
    probs = rng.integers(0, 8, size=(700, 3)).astype(float) + 0.5
    probs /= probs.sum(axis=1, keepdims=True)  # coarse rows: many repeats after gold-first sorting
    gold = rng.integers(0, 3, size=700)
    whole = mv_credit(probs, gold, 9)
    rows = oracle._gold_first(probs, gold)
    unique, inverse = oracle._unique_rows(rows)
    ref_unique, ref_inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(unique, ref_unique)
    np.testing.assert_array_equal(inverse, ref_inverse.reshape(-1))
    assert len(unique) < 700
    monkeypatch.setattr(oracle, "_MV_BLOCK_ELEMENTS", 1)  # 256-row blocks
    np.testing.assert_allclose(mv_credit(probs, gold, 9), whole, atol=1e-15)
    np.testing.assert_allclose(whole[5], [brute_mv_credit(probs[5], int(gold[5]), n) for n in range(1, 10)], atol=1e-13)
