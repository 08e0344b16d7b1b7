"""Many ``numpy`` generators seeded at once, bit for bit as ``Generator(PCG64(SeedSequence(entropy)))``.

Seeding one generator the usual way costs ~8 us, most of it ``SeedSequence``'s hashing in
Python-level loops (``SeedSequence(entropy)``, then ``generate_state(4, np.uint64)`` inside
``PCG64``). When an entropy assembles to at most four 32-bit words (a seed below ``2**64``, as
gymnasium seeds an env; such a seed followed by a 32-bit salt, as :class:`~iapo_gym.runs.RunStreams`
seeds a run), numpy pads it with zero words to its pool of four and the hash constants never
depend on the data: the state words of many entropies are one fixed sequence of ``uint32`` array
operations (:func:`state_words`). Each generator is then built from a :class:`PrecomputedSeedSequence`
that hands ``PCG64`` its precomputed words and is the real ``SeedSequence`` for everything else
(spawning, attributes, pickling): the generators are indistinguishable from numpy's own.

Anything else (longer entropies, seeds that are not plain non-negative ints) is seeded by numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISpawnableSeedSequence
from numpy.typing import NDArray

__all__ = ["PrecomputedSeedSequence", "generators", "state_words"]

# numpy/random/bit_generator.pyx (SeedSequence with its default pool of four words)
_POOL = 4
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = 0xCA01F9DD
_MIX_MULT_R = 0x4973F715
_XSHIFT = 16
_MASK32 = 0xFFFFFFFF


def _hash_constants(init: int, mult: int, n: int) -> list[int]:
    """The first ``n`` multipliers of numpy's hash (``h = init; h *= mult`` before each use), as uint32 values."""
    out, h = [], init
    for _ in range(n):
        out.append(h)
        h = (h * mult) & _MASK32
    return out


# Every hashmix of ``mix_entropy`` XORs with one constant and multiplies by the next: 4 to fill the
# pool, then 12 to mix every pool word into every other.
_A = _hash_constants(_INIT_A, _MULT_A, 4 + 12 + 1)
_B = _hash_constants(_INIT_B, _MULT_B, 2 * _POOL + 1)
_FILL_XOR = np.array(_A[:4], dtype=np.uint32)[:, None]
_FILL_MUL = np.array(_A[1:5], dtype=np.uint32)[:, None]
_OUT_XOR = np.array(_B[: 2 * _POOL], dtype=np.uint32).reshape(2, _POOL, 1)
_OUT_MUL = np.array(_B[1 : 2 * _POOL + 1], dtype=np.uint32).reshape(2, _POOL, 1)
# the 12 mixing steps: (source word, destination word, hashmix XOR and multiplier)
_MIX_STEPS = [
    (src, dst, np.uint32(_A[k]), np.uint32(_A[k + 1]))
    for k, (src, dst) in enumerate(((s, d) for s in range(_POOL) for d in range(_POOL) if s != d), start=4)
]
_MIX_L, _MIX_R = np.uint32(_MIX_MULT_L), np.uint32(_MIX_MULT_R)


def _int_words(n: int) -> list[int]:
    """The 32-bit words of ``n >= 0``, lowest first (``0``: one word), as numpy's ``_int_to_uint32_array``."""
    words = [n & _MASK32]
    n >>= 32
    while n:
        words.append(n & _MASK32)
        n >>= 32
    return words


def _hashed(words: NDArray[np.uint32]) -> NDArray[np.uint64]:
    """``(S, 4)`` uint64: ``generate_state(4, np.uint64)`` of ``S`` entropies given as ``(4, S)`` zero-padded words.

    ``SeedSequence.mix_entropy`` then ``generate_state``, each step one array operation over all
    the entropies (uint32 arithmetic wraps as numpy's C code does).
    """
    pool = words ^ _FILL_XOR  # hashmix each word into the pool
    pool *= _FILL_MUL
    pool ^= pool >> _XSHIFT
    h = np.empty(words.shape[1], dtype=np.uint32)
    for src, dst, xor, mul in _MIX_STEPS:  # mix every pool word into every other
        np.bitwise_xor(pool[src], xor, out=h)  # hashmix(pool[src])
        h *= mul
        h ^= h >> _XSHIFT
        h *= _MIX_R  # mix(pool[dst], h)
        row = pool[dst]
        row *= _MIX_L
        row -= h
        row ^= row >> _XSHIFT
    # generate_state(8 uint32 words): the pool twice, each word hashed with its own constants
    out = pool[None] ^ _OUT_XOR
    out *= _OUT_MUL
    out ^= out >> _XSHIFT
    # uint64 word j is uint32 words 2j (low) and 2j + 1 (high): numpy's little-endian view
    flat = np.ascontiguousarray(out.reshape(2 * _POOL, -1).T, dtype="<u4")
    return flat.view("<u8").astype(np.uint64)


def state_words(seeds: Sequence[int], tail: Sequence[int] | None = None) -> tuple[NDArray[np.uint64], NDArray[np.bool_]]:
    """``SeedSequence(e).generate_state(4, np.uint64)`` for ``e = seed`` (``tail`` None) or ``[seed, *tail]``, per seed.

    Returns ``(words (S, 4) uint64, hashed (S,) bool)``: row ``s`` holds seed ``s``'s words
    where ``hashed[s]``; the other rows (an entropy of more than four 32-bit words, a seed that
    is not a plain int in ``0 .. 2**64 - 1``, a tail that is not plain non-negative ints) are
    zeros, to be seeded by numpy.
    """
    n = len(seeds)
    hashed = np.zeros(n, dtype=bool)
    words = np.zeros((n, _POOL), dtype=np.uint64)
    tail_words: list[int] = []
    if tail is not None:
        if not all(type(v) is int and v >= 0 for v in tail):
            return words, hashed
        tail_words = [w for v in tail for w in _int_words(v)]
    if n == 0 or len(tail_words) > _POOL - 1 or not all(type(s) is int for s in seeds):
        return words, hashed
    try:
        s64 = np.array(seeds, dtype=np.uint64)
    except OverflowError:  # a seed below 0 or from 2**64: each seed on its own
        ok = [0 <= s < 1 << 64 for s in seeds]
        if not any(ok):
            return words, hashed
        idx = np.flatnonzero(ok)
        sub, sub_hashed = state_words([seeds[i] for i in idx.tolist()], tail)
        words[idx], hashed[idx] = sub, sub_hashed
        return words, hashed
    lo = (s64 & np.uint64(_MASK32)).astype(np.uint32)
    hi = (s64 >> np.uint64(32)).astype(np.uint32)
    two = hi != 0  # the seed takes two words, else one
    # the entropy's words, zero-padded: [lo, (hi,) *tail, 0...]
    padded = np.zeros((_POOL + 1, n), dtype=np.uint32)
    padded[0] = lo
    padded[1] = hi  # rows of one-word seeds are overwritten by the tail or stay 0 (their padding)
    if tail_words:
        col = np.array(tail_words, dtype=np.uint32)[:, None]
        padded[1 : 1 + col.shape[0], ~two] = col
        padded[2 : 2 + col.shape[0], two] = col
    fits = (1 + two.astype(np.int64) + len(tail_words)) <= _POOL
    if fits.all():
        words = _hashed(padded[:_POOL])
        hashed[:] = True
    elif fits.any():
        words[fits] = _hashed(np.ascontiguousarray(padded[:_POOL, fits]))
        hashed[fits] = True
    return words, hashed


class PrecomputedSeedSequence(ISpawnableSeedSequence):
    """``np.random.SeedSequence(entropy)`` whose ``generate_state(4, np.uint64)`` (what ``PCG64`` asks) is known.

    The first such request is answered with the words given (handed over, not copied: the
    sequence then forgets them). Everything else -- other requests, :meth:`spawn`, attributes
    such as ``entropy``, ``spawn_key``, ``pool``, ``pool_size``, ``n_children_spawned`` or
    ``state``, ``repr``, pickling -- goes to the real ``SeedSequence(entropy)``, built on first
    use and kept (so children spawned over several calls are numbered as numpy numbers them).
    Pickled or copied, it becomes that real sequence.
    """

    __slots__ = ("_entropy", "_words", "_real")

    def __init__(self, entropy: Any, words: NDArray[np.uint64] | None) -> None:
        self._entropy = entropy
        self._words = words
        self._real: np.random.SeedSequence | None = None

    def real(self) -> np.random.SeedSequence:
        """The real ``np.random.SeedSequence(entropy)`` (built once, then kept)."""
        if self._real is None:
            self._real = np.random.SeedSequence(self._entropy)
        return self._real

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> NDArray[Any]:
        """``n_words`` words of seed state, as ``SeedSequence.generate_state``."""
        words = self._words
        if words is not None and n_words == _POOL and dtype is np.uint64:
            self._words = None
            return words
        return self.real().generate_state(n_words, dtype)

    def spawn(self, n_children: int) -> list[np.random.SeedSequence]:  # type: ignore[override]  # numpy's own children
        """Child sequences, as ``SeedSequence.spawn`` (numbered on from those spawned before)."""
        return self.real().spawn(n_children)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in PrecomputedSeedSequence.__slots__:
            raise AttributeError(name)
        return getattr(self.real(), name)

    def __repr__(self) -> str:
        return repr(self.real())

    def __reduce__(self) -> Any:
        return self.real().__reduce__()


def generators(seeds: Sequence[int], tail: Sequence[int] | None = None) -> list[np.random.Generator]:
    """``np.random.Generator(np.random.PCG64(np.random.SeedSequence(e)))`` per seed, bit for bit.

    ``e`` is the seed itself (``tail`` None; as ``gymnasium``'s ``np_random(seed)``) or the list
    ``[seed, *tail]``. Seeds :func:`state_words` hashes cost about 1.5 us each instead of ~8;
    the others are seeded by numpy (its errors included).
    """
    words, hashed = state_words(seeds, tail)
    gens = []
    Generator, PCG64 = np.random.Generator, np.random.PCG64
    for s, w, ok in zip(seeds, words, hashed.tolist(), strict=True):
        entropy = s if tail is None else [s, *tail]
        seq = PrecomputedSeedSequence(entropy, w) if ok else np.random.SeedSequence(entropy)
        gens.append(Generator(PCG64(seq)))
    return gens
