"""numpy's PCG64 in kernels (:mod:`iapo_gym._pcg`): jumps, the state stepped in place, and the cache guard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from iapo_gym import _pcg
from iapo_gym.runs import RunStreams


def test_pcg_jump_is_numpys_advance():
    """pcg_jump(k) moves a state as PCG64.advance(k) does (and as k single steps do)."""
    for k in (0, 1, 4, 16, 801, 12_345):
        bg = np.random.PCG64(k + 5)
        state, inc = bg.state["state"]["state"], bg.state["state"]["inc"]
        a_hi, a_lo, s_hi, s_lo = (w % (1 << 64) for w in _pcg.pcg_jump(k))
        a, s = (a_hi << 64) | a_lo, (s_hi << 64) | s_lo
        bg.advance(k)
        assert (a * state + s * inc) % (1 << 128) == bg.state["state"]["state"]
        single = state
        for _ in range(min(k, 20)):
            single = (single * _pcg.PCG_MULTIPLIER + inc) % (1 << 128)
        if k <= 20:
            assert single == bg.state["state"]["state"]


def test_every_module_inlining_the_intrinsics_records_this_files_digest():
    """numba's cache of a kernel follows its own file: an edit of _pcg.py must change the modules that inline it."""
    import iapo_gym.agents._sequential_kernels as sequential
    import iapo_gym.runs as runs

    digest = hashlib.sha256(Path(_pcg.__file__).read_bytes()).hexdigest()
    for module in (runs, sequential):
        line = f'_PCG_SHA256 = "{digest}"'
        assert line in Path(module.__file__).read_text(), f"{module.__name__}: set {line} (and let its kernels recompile)"


def test_the_state_words_read_in_place_are_the_generators_live_state():
    """state_in_place holds on this platform, and the words at state_address follow numpy's draws."""
    import ctypes

    assert _pcg.state_in_place()
    streams = RunStreams([4, 9], "in-place")
    mask = (1 << 64) - 1
    for g in streams.generators:
        words = (ctypes.c_uint64 * 4).from_address(_pcg.state_address(_pcg.bitgen_address(g.bit_generator)))
        for _ in range(3):
            st = g.bit_generator.state["state"]
            assert list(words) == [st["state"] & mask, st["state"] >> 64, st["inc"] & mask, st["inc"] >> 64]
            g.random(5)


def test_a_compiled_batch_of_long_requests_draws_numpys_values_and_leaves_its_state():
    """RunStreams.random on the in-place kernel: pcg_fill's lanes, their tails and refills, as numpy's PCG64 gives them."""
    pytest.importorskip("numba")
    seeds = [0, 7, 2**40 + 3]
    ours = RunStreams(seeds, "lanes")
    refs = [np.random.Generator(np.random.PCG64(np.random.SeedSequence([s, _crc("lanes")]))) for s in seeds]
    rng = np.random.default_rng(3)
    drawn: list[list[np.ndarray]] = [[], [], []]
    for _ in range(60):
        counts = rng.integers(0, 3000, 3)
        counts[rng.random(3) < 0.4] = rng.integers(0, 40)
        out = ours.random(counts, [0, 1, 2])
        for r, part in enumerate(np.split(out, np.cumsum(counts)[:-1])):
            drawn[r].append(part)
    for r in range(3):
        values = np.concatenate(drawn[r])
        unused = ours.buffer.shape[1] - int(ours.position[r])  # drawn into the buffer, not yet handed out
        want = refs[r].random(values.size + unused)
        np.testing.assert_array_equal(values, want[: values.size])
        assert ours.generators[r].bit_generator.state == refs[r].bit_generator.state


def _crc(salt: str) -> int:
    import zlib

    return zlib.crc32(salt.encode())
