"""Batched seeding (iapo_gym._seeding): numpy's generators bit for bit, and envs begun by a batch as reset leaves them."""

from __future__ import annotations

import copy
import pickle
import zlib

import numpy as np
import pytest
from agents_helpers import make_env, small_table

from iapo_gym import _seeding
from iapo_gym.continuous import ContinuousContexts
from iapo_gym.env import IAPOEnv
from iapo_gym.ledger import BudgetLedger
from iapo_gym.runs import RunBatch, RunStreams

CRC = zlib.crc32(b"psst")
EDGE_SEEDS = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**64 - 1, 2**64, 2**96 - 1, 2**96 + 5, 2**128 + 3]
RANDOM_SEEDS = [int(s) for s in np.random.default_rng(7).integers(0, 2**63, 40)] + list(range(2, 40))
SEEDS = EDGE_SEEDS + RANDOM_SEEDS
TAILS = [None, [CRC], [0], [CRC, 7], [2**40], [1, 2, 3], [1, 2, 3, 4], []]


def _entropy(seed: int, tail: list[int] | None) -> int | list[int]:
    return seed if tail is None else [seed, *tail]


def _numpys(seed: int, tail: list[int] | None) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_entropy(seed, tail))))


@pytest.mark.parametrize("tail", TAILS, ids=repr)
def test_state_words_are_numpys(tail):
    words, hashed = _seeding.state_words(SEEDS, tail)
    assert words.shape == (len(SEEDS), 4) and words.dtype == np.uint64
    for s, w, ok in zip(SEEDS, words, hashed, strict=True):
        n_words = (max(s.bit_length(), 1) + 31) // 32 + sum((max(v.bit_length(), 1) + 31) // 32 for v in tail or [])
        if s < 2**64:  # a seed below 2**64 is hashed exactly where its entropy fits numpy's pool of 4 words
            assert bool(ok) == (n_words <= 4), (s, tail)
        else:
            assert not ok
        if ok:
            np.testing.assert_array_equal(w, np.random.SeedSequence(_entropy(s, tail)).generate_state(4, np.uint64))
    if tail in (None, [CRC]):  # the two entropies the library seeds: every seed below 2**64 hashed here
        assert hashed[: EDGE_SEEDS.index(2**64)].all() and hashed[len(EDGE_SEEDS) :].all()


def test_unusual_seeds_are_left_to_numpy():
    """Seeds numpy would coerce or refuse are never hashed here: the generators are numpy's own (its errors too)."""
    for odd in ([np.int64(3)], [True], [3.0], [-1]):
        assert not _seeding.state_words(odd)[1].any()
    assert not _seeding.state_words([3], [-1])[1].any() and not _seeding.state_words([3], [np.uint32(5)])[1].any()
    g = _seeding.generators([np.int64(3)])[0]
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence(np.int64(3))))
    assert g.bit_generator.state == ref.bit_generator.state
    with pytest.raises(ValueError):
        _seeding.generators([-1])
    with pytest.raises(TypeError):
        _seeding.generators([1.5])
    assert _seeding.generators([]) == [] and _seeding.state_words([])[0].shape == (0, 4)


@pytest.mark.parametrize("tail", [None, [CRC], [CRC, 7]], ids=repr)
def test_generators_are_numpys_in_every_respect(tail):
    """Same state, draws, seed-sequence attributes, requests, children (over several spawns) and pickles."""
    for s, g in zip(SEEDS, _seeding.generators(SEEDS, tail), strict=True):
        ref = _numpys(s, tail)
        assert g.bit_generator.state == ref.bit_generator.state
        np.testing.assert_array_equal(g.random(5), ref.random(5))
        seq, rseq = g.bit_generator.seed_seq, ref.bit_generator.seed_seq
        assert (seq.entropy, seq.spawn_key, seq.pool_size, seq.n_children_spawned) == (rseq.entropy, (), 4, 0)
        np.testing.assert_array_equal(seq.pool, rseq.pool)
        assert seq.state == rseq.state and repr(seq) == repr(rseq)
        for n in (0, 1, 3, 4, 5, 9):
            for dtype in (np.uint32, np.uint64, "u8"):
                got = seq.generate_state(n, dtype)
                np.testing.assert_array_equal(got, rseq.generate_state(n, dtype))
                assert got.dtype == np.dtype(dtype)
        kids = [k.random(3) for k in g.spawn(2)] + [k.random_raw(3) for k in g.bit_generator.spawn(1)]
        kids += [k.generate_state(2) for k in seq.spawn(2)]
        rkids = [k.random(3) for k in ref.spawn(2)] + [k.random_raw(3) for k in ref.bit_generator.spawn(1)]
        rkids += [k.generate_state(2) for k in rseq.spawn(2)]
        for a, b in zip(kids, rkids, strict=True):
            np.testing.assert_array_equal(a, b)
        assert seq.n_children_spawned == 5
        for back in (pickle.loads(pickle.dumps(g)), copy.deepcopy(g)):
            assert type(back.bit_generator.seed_seq) is np.random.SeedSequence  # pickles hold numpy's own sequence
            assert back.bit_generator.seed_seq.state == rseq.state
            np.testing.assert_array_equal(back.random(4), copy.deepcopy(ref).random(4))


def test_precomputed_sequence_hands_its_words_once():
    """The words go to the first ``generate_state(4, uint64)`` (PCG64's); later requests come from the real sequence."""
    words, _ = _seeding.state_words([11])
    seq = _seeding.PrecomputedSeedSequence(11, words[0].copy())
    first = seq.generate_state(4, np.uint64)
    first[:] = 0  # whoever got them may change them: later answers are unaffected
    np.testing.assert_array_equal(seq.generate_state(4, np.uint64), np.random.SeedSequence(11).generate_state(4, np.uint64))
    with pytest.raises(AttributeError):
        seq.no_such_attribute  # noqa: B018


def test_run_streams_seed_numpys_generators():
    seeds = [0, 3, 2**32 + 9, 2**63 - 1, 2**70]  # the last beyond the hashed range: numpy seeds it
    streams = RunStreams(seeds, "psst")
    for s, g in zip(seeds, streams.generators, strict=True):
        ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([s, CRC])))
        assert g.bit_generator.state == ref.bit_generator.state
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, CRC])))
    np.testing.assert_array_equal(streams.random([3], [1]), ref.random(3))


def _env_state(env: IAPOEnv) -> dict:
    """Everything an env holds, its RNG by state and its ledger by its counters."""
    out = {}
    for k, v in vars(env).items():
        if isinstance(v, np.random.Generator):
            out[k] = v.bit_generator.state
        elif isinstance(v, BudgetLedger):
            out[k] = (v.spent, v.remaining, v.lifetime_spent, v.prompt_tokens, v.completion_tokens)
        elif isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, tuple):
            out[k] = tuple(x.tolist() if isinstance(x, np.ndarray) else x for x in v)
        elif k != "_lock":
            out[k] = v
    return out


@pytest.mark.parametrize("contexts", ["finite", "continuous"])
def test_a_batch_begins_each_env_as_reset_leaves_it(contexts):
    """RNG state (and its next draws), np_random_seed, context, ledger: as ``reset(seed=seed)``, after earlier use."""
    table = small_table("mv")
    seeds = [0, 5, 2**32 + 1, 2**64 + 3]  # the last seeded by numpy, not hashed
    ctx = contexts if contexts == "finite" else ContinuousContexts.for_table(table)

    def envs():
        out = [IAPOEnv(table, budget=500, split_seed=i, contexts=ctx) for i in range(len(seeds))]
        for e in out:  # an earlier run: other seed, spent budget, another context
            e.reset(seed=99)
            e.unwrapped.pull(np.array([0, 1]), np.array([2, 3]))
        return out

    batched, reset = envs(), envs()
    RunBatch(batched, 100, seeds, "psst")
    for e, s in zip(reset, seeds, strict=True):
        e.reset(seed=s)
    for b, r, s in zip(batched, reset, seeds, strict=True):
        assert b.np_random_seed == s and b.ledger.spent == 0
        assert _env_state(b) == _env_state(r)
        np.testing.assert_array_equal(b.np_random.random(4), r.np_random.random(4))
        np.testing.assert_array_equal(b.reset()[0], r.reset()[0])


def test_a_batch_leaves_a_shared_ledger_alone():
    table = small_table("bon")
    ledger = BudgetLedger(1000)
    ledger.charge_at_most(40)
    envs = [IAPOEnv(table, budget=ledger, split_seed=i) for i in range(3)]
    batch = RunBatch(envs, 100, [1, 2, 3], "x")
    assert ledger.spent == 40 and batch.budgets.tolist() == [100, 100, 100]
    assert [e.np_random_seed for e in envs] == [1, 2, 3]
    for e, s in zip(envs, [1, 2, 3], strict=True):
        ref = IAPOEnv(table, budget=ledger, split_seed=0)
        ref.reset(seed=s)
        assert e.np_random.bit_generator.state == ref.np_random.bit_generator.state
    assert ledger.spent == 40


def test_make_env_batch_matches_reset():
    """A batch of plain envs as the agents' tests build them: each env's RNG is the seed's."""
    envs = [make_env(small_table("mv"), s) for s in range(4)]
    RunBatch(envs, 50, [4, 5, 6, 7], "psst")
    for e, s in zip(envs, [4, 5, 6, 7], strict=True):
        ref = make_env(small_table("mv"), 0)
        ref.reset(seed=s)
        assert e.np_random.bit_generator.state == ref.np_random.bit_generator.state
        assert e.unwrapped._context_index == ref.unwrapped._context_index
