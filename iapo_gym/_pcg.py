"""numpy's PCG64 inside compiled kernels: its step, its doubles and its state, bit for bit.

Every run of a batch draws from its own ``numpy.random.Generator(PCG64)``
(:class:`iapo_gym.runs.RunStreams`). Kernels that draw many values step that generator
themselves instead of calling its ``next_double`` through a function pointer per value (5-6 ns a
value): :func:`pcg_advance` is one step (or a jump of many: :func:`pcg_jump`) in LLVM's 128-bit
integers, :func:`pcg_uniform` numpy's ``next_double`` of a state, and :func:`pcg_fill` many values
from :data:`PCG_LANES` interleaved chains in vector registers (under 1 ns a value). The values,
and the generator's state after them, are numpy's (tests compare them with numpy's own).

A kernel reaches a generator's state in one of two ways:

* as four words handed in and back (:meth:`iapo_gym.runs.RunStreams.pcg_states` /
  ``set_pcg_states``: a Python call per run; the sequential agents' loop);
* in place, in the generator's own memory (:func:`pcg_load`, :func:`pcg_store`), from the address
  of its ``bitgen_t`` (numpy's public C API, as ``numba`` uses it): ``bitgen_t.state`` points to
  numpy's ``pcg64_state``, whose first member points to the 128-bit ``state`` and ``inc``.
  That layout is numpy's, not its public API, so :func:`state_in_place` checks it once per process
  against ``bit_generator.state`` (and that a draw moves it) before any kernel relies on it; where
  it does not hold (another layout, e.g. MSVC's two-word ``pcg128_t``), callers keep numpy's
  ``next_double``.

The intrinsics are placeholders until :func:`install` makes them numba intrinsics and binds them
into the calling kernel module's namespace. numba's on-disk cache of a kernel follows its own
file only, so every module whose kernels inline these records this file's SHA-256 in its own
source (``_PCG_SHA256 = "..."``; ``tests/test_pcg.py`` checks it): editing this file then means
editing those modules too, which invalidates their cached kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PCG_LANES",
    "PCG_MULT_HI",
    "PCG_MULT_LO",
    "PCG_MULTIPLIER",
    "bitgen_address",
    "install",
    "pcg_advance",
    "pcg_fill",
    "pcg_jump",
    "pcg_jumps",
    "pcg_load",
    "pcg_store",
    "pcg_uniform",
    "state_address",
    "state_in_place",
]

#: numpy's ``PCG64`` (``pcg_setseq_128_xsl_rr_64``) multiplier, and its high and low 64-bit words.
PCG_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
PCG_MULT_HI, PCG_MULT_LO = PCG_MULTIPLIER >> 64, PCG_MULTIPLIER & ((1 << 64) - 1)  # both below 2^63: int64 constants
#: Interleaved PCG64 chains of :func:`pcg_fill` (two 512-bit vectors of 64-bit lanes where the CPU has them).
PCG_LANES = 16


def _as_words(value: int) -> tuple[int, int]:
    """A 128-bit value as its (high, low) words, each the int64 with the same bits."""
    hi, lo = value >> 64 & ((1 << 64) - 1), value & ((1 << 64) - 1)
    return hi - (hi >> 63 << 64), lo - (lo >> 63 << 64)


@functools.lru_cache(maxsize=8)
def pcg_jump(k: int) -> tuple[int, int, int, int]:
    """``(A, S)`` as four int64 words: ``k`` steps of PCG64 take ``state`` to ``A state + S inc`` (mod ``2^128``).

    One step is ``state M + inc``; ``k`` steps compose to ``A = M^k``, ``S = 1 + M + ... + M^(k-1)``
    (by squaring: ``O(log k)`` products).
    """
    mask = (1 << 128) - 1
    a, s = 1, 0  # the identity
    pa, ps = PCG_MULTIPLIER, 1  # 2^j steps
    k = int(k)
    while k:
        if k & 1:
            a, s = a * pa & mask, (s * pa + ps) & mask
        pa, ps = pa * pa & mask, (ps * pa + ps) & mask
        k >>= 1
    return (*_as_words(a), *_as_words(s))


def pcg_jumps(skip: int) -> NDArray[np.int64]:
    """The jumps :func:`stream_take` reads: :data:`PCG_LANES` steps (:func:`pcg_fill`'s chains), ``skip`` steps, 4 steps."""
    return np.array((*pcg_jump(PCG_LANES), *pcg_jump(skip), *pcg_jump(4)), dtype=np.int64)


def pcg_advance(hi, lo, a_hi, a_lo, c_hi, c_lo):  # noqa: ANN001, ANN201
    """``(A s + C) mod 2^128`` of 128-bit values given as (high, low) int64 words: one PCG64 step, or a jump.

    A placeholder: :func:`install_pcg` makes it a numba intrinsic (LLVM's 128-bit integers).
    """
    raise RuntimeError("pcg_advance is a numba intrinsic; call install, then use it in a kernel")


def pcg_uniform(hi, lo):  # noqa: ANN001, ANN201
    """The ``next_double`` of numpy's PCG64 at state ``(hi, lo)`` (just stepped): ``(xsl_rr(state) >> 11) 2^-53``.

    ``xsl_rr`` is ``(hi ^ lo)`` rotated right by ``hi >> 58``. A placeholder, as :func:`pcg_advance`.
    """
    raise RuntimeError("pcg_uniform is a numba intrinsic; call install, then use it in a kernel")


def pcg_fill(out, first, n, lanes, a_hi, a_lo, c_hi, c_lo):  # noqa: ANN001, ANN201
    """``n`` values (a multiple of ``L`` = :data:`PCG_LANES`, at least ``L``) of ``L`` interleaved chains into ``out[first:]``.

    Chain ``l`` starts at state ``(lanes[l], lanes[L + l])`` and gives
    values ``l, l + L, l + 2L, ...``: its state's :func:`pcg_uniform`, then a jump of ``L`` steps
    ``(A, C)`` (:func:`pcg_jump` of ``L``, ``C = S inc``). ``lanes`` is left holding each chain's
    state of its last value (so lane ``L - 1``'s is the state after all ``n``). The chains are
    vectors of 64-bit lanes in LLVM IR: the 128-bit products from 32-bit halves (``a 64 x 64 -> 128``
    multiply has no vector instruction), the rotation a funnel shift. A placeholder, as
    :func:`pcg_advance`.
    """
    raise RuntimeError("pcg_fill is a numba intrinsic; call install, then use it in a kernel")


def pcg_load(address, k):  # noqa: ANN001, ANN201
    """The ``k``-th 64-bit word at ``address`` (an int64): a generator's state words, in place.

    A placeholder, as :func:`pcg_advance`.
    """
    raise RuntimeError("pcg_load is a numba intrinsic; call install, then use it in a kernel")


def pcg_store(address, k, word):  # noqa: ANN001, ANN201
    """Write ``word`` (an int64) as the ``k``-th 64-bit word at ``address``. A placeholder, as :func:`pcg_advance`."""
    raise RuntimeError("pcg_store is a numba intrinsic; call install, then use it in a kernel")


_NAMES = ("pcg_advance", "pcg_uniform", "pcg_fill", "pcg_load", "pcg_store")


def install(namespace: dict[str, Any]) -> None:
    """Make the intrinsics real (once per process) and bind them in ``namespace`` (a kernel module's ``globals()``).

    Call it before the first kernel of that module that uses them compiles: numba reads a kernel's
    globals when it compiles it.
    """
    _install()
    here = globals()
    for name in _NAMES:
        if name in namespace:
            namespace[name] = here[name]


@functools.lru_cache(maxsize=1)
def _install() -> None:
    """Replace the placeholders of this module by numba intrinsics (LLVM IR)."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    i64, i128 = ir.IntType(64), ir.IntType(128)

    @intrinsic
    def advance(typingctx: Any, hi: Any, lo: Any, a_hi: Any, a_lo: Any, c_hi: Any, c_lo: Any) -> Any:
        if not all(isinstance(t, types.Integer) for t in (hi, lo, a_hi, a_lo, c_hi, c_lo)):
            return None
        sig = types.UniTuple(types.int64, 2)(*([types.int64] * 6))

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            def join(h: Any, lo_: Any) -> Any:
                return builder.or_(builder.shl(builder.zext(h, i128), ir.Constant(i128, 64)), builder.zext(lo_, i128))

            s = builder.add(builder.mul(join(args[0], args[1]), join(args[2], args[3])), join(args[4], args[5]))
            words = [builder.trunc(builder.lshr(s, ir.Constant(i128, 64)), i64), builder.trunc(s, i64)]
            return context.make_tuple(builder, signature.return_type, words)

        return sig, codegen

    @intrinsic
    def uniform(typingctx: Any, hi: Any, lo: Any) -> Any:
        if not all(isinstance(t, types.Integer) for t in (hi, lo)):
            return None
        sig = types.float64(types.int64, types.int64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            hi, lo = args
            x = builder.xor(hi, lo)
            rot = builder.lshr(hi, ir.Constant(i64, 58))
            fshr = builder.module.declare_intrinsic("llvm.fshr", [i64], ir.FunctionType(i64, [i64, i64, i64]))
            bits = builder.lshr(builder.call(fshr, [x, x, rot]), ir.Constant(i64, 11))  # below 2^53: exact as a double
            return builder.fmul(builder.sitofp(bits, ir.DoubleType()), ir.Constant(ir.DoubleType(), 2.0**-53))

        return sig, codegen

    @intrinsic
    def load(typingctx: Any, address: Any, k: Any) -> Any:
        if not all(isinstance(t, types.Integer) for t in (address, k)):
            return None
        sig = types.int64(types.int64, types.int64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            words = builder.inttoptr(args[0], i64.as_pointer())
            return builder.load(builder.gep(words, [args[1]]), align=8)

        return sig, codegen

    @intrinsic
    def store(typingctx: Any, address: Any, k: Any, word: Any) -> Any:
        if not all(isinstance(t, types.Integer) for t in (address, k, word)):
            return None
        sig = types.void(types.int64, types.int64, types.int64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            words = builder.inttoptr(args[0], i64.as_pointer())
            builder.store(args[2], builder.gep(words, [args[1]]), align=8)
            return context.get_dummy_value()

        return sig, codegen

    globals().update(
        pcg_advance=advance, pcg_uniform=uniform, pcg_fill=_fill_intrinsic(intrinsic, ir, types), pcg_load=load,
        pcg_store=store,
    )


def _fill_intrinsic(intrinsic: Any, ir: Any, types: Any) -> Any:
    """:func:`pcg_fill` as a numba intrinsic (LLVM IR: one loop over vectors of :data:`PCG_LANES` 64-bit lanes)."""
    from numba.core import cgutils

    i32, i64, f64 = ir.IntType(32), ir.IntType(64), ir.DoubleType()
    vec, dvec = ir.VectorType(i64, PCG_LANES), ir.VectorType(f64, PCG_LANES)

    def const(value: int) -> Any:
        return ir.Constant(vec, [ir.Constant(i64, value)] * PCG_LANES)

    def splat(builder: Any, value: Any) -> Any:
        out = ir.Constant(vec, ir.Undefined)
        for lane in range(PCG_LANES):
            out = builder.insert_element(out, value, ir.Constant(i32, lane))
        return out

    @intrinsic
    def fill(typingctx: Any, out: Any, first: Any, n: Any, lanes: Any, a_hi: Any, a_lo: Any, c_hi: Any, c_lo: Any) -> Any:
        arrays = isinstance(out, types.Array) and out.dtype == types.float64 and out.ndim == 1
        arrays = arrays and isinstance(lanes, types.Array) and lanes.dtype == types.int64 and lanes.ndim == 1
        if not arrays or not all(isinstance(t, types.Integer) for t in (first, n, a_hi, a_lo, c_hi, c_lo)):
            return None
        sig = types.void(out, types.int64, types.int64, lanes, *([types.int64] * 4))

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            out_a = context.make_array(signature.args[0])(context, builder, args[0])
            lanes_a = context.make_array(signature.args[3])(context, builder, args[3])
            first, n, a_hi, a_lo, c_hi, c_lo = args[1], args[2], args[4], args[5], args[6], args[7]
            state = builder.bitcast(lanes_a.data, vec.as_pointer())  # [high words, low words]
            h0 = builder.load(state, align=8)
            x0 = builder.load(builder.gep(state, [ir.Constant(i64, 1)]), align=8)
            base = builder.gep(out_a.data, [first])
            m32, s32 = const(0xFFFFFFFF), const(32)
            ah, al, ch, cl = (splat(builder, v) for v in (a_hi, a_lo, c_hi, c_lo))
            al0, al1 = builder.and_(al, m32), builder.lshr(al, s32)
            fty = ir.FunctionType(vec, [vec, vec, vec])
            fshr = cgutils.get_or_insert_function(builder.module, fty, f"llvm.fshr.v{PCG_LANES}i64")
            scale = ir.Constant(dvec, [ir.Constant(f64, 2.0**-53)] * PCG_LANES)
            entry = builder.basic_block
            loop = builder.append_basic_block("pcg_fill.loop")
            step = builder.append_basic_block("pcg_fill.step")
            done = builder.append_basic_block("pcg_fill.done")
            builder.branch(loop)
            builder.position_at_end(loop)  # the values of the chains' states
            i, h, x = builder.phi(i64), builder.phi(vec), builder.phi(vec)
            xored = builder.xor(h, x)
            bits = builder.lshr(builder.call(fshr, [xored, xored, builder.lshr(h, const(58))]), const(11))
            values = builder.fmul(builder.sitofp(bits, dvec), scale)  # bits < 2^53: exact, as numpy's next_double
            builder.store(values, builder.bitcast(builder.gep(base, [i]), dvec.as_pointer()), align=8)
            i_next = builder.add(i, ir.Constant(i64, PCG_LANES))
            builder.cbranch(builder.icmp_signed("<", i_next, n), step, done)
            builder.position_at_end(step)  # (h, x) <- (h, x) (A_hi, A_lo) + (C_hi, C_lo) mod 2^128, per lane
            x0_, x1_ = builder.and_(x, m32), builder.lshr(x, s32)
            p00, p01 = builder.mul(x0_, al0), builder.mul(x0_, al1)
            p10, p11 = builder.mul(x1_, al0), builder.mul(x1_, al1)
            mid = builder.add(builder.add(builder.lshr(p00, s32), builder.and_(p01, m32)), builder.and_(p10, m32))
            low = builder.or_(builder.and_(p00, m32), builder.shl(mid, s32))
            carried = builder.add(builder.lshr(p10, s32), builder.lshr(mid, s32))
            high = builder.add(builder.add(p11, builder.lshr(p01, s32)), carried)
            high = builder.add(high, builder.add(builder.mul(h, al), builder.mul(x, ah)))
            x_next = builder.add(low, cl)
            h_next = builder.add(builder.add(high, ch), builder.zext(builder.icmp_unsigned("<", x_next, low), vec))
            builder.branch(loop)
            for phi, start, nxt in ((i, ir.Constant(i64, 0), i_next), (h, h0, h_next), (x, x0, x_next)):
                phi.add_incoming(start, entry)
                phi.add_incoming(nxt, step)
            builder.position_at_end(done)
            builder.store(h, state, align=8)
            builder.store(x, builder.gep(state, [ir.Constant(i64, 1)]), align=8)
            return context.get_dummy_value()

        return sig, codegen

    return fill


@functools.lru_cache(maxsize=1)
def state_in_place() -> bool:
    """Whether numpy's ``PCG64`` keeps its state where :func:`pcg_load` reads it (checked once per process).

    The layout expected: ``bitgen_t.state`` -> ``pcg64_state``, whose first member points to
    ``state`` then ``inc``, each a 128-bit integer stored low word first (gcc's and clang's
    ``__uint128_t`` on a little-endian machine). Checked on a fresh generator against
    ``bit_generator.state``, before and after numpy draws from it (so the words read are the live
    state, not a copy).
    """
    import ctypes
    import sys

    if sys.byteorder != "little" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    bit_generator = np.random.PCG64(np.random.SeedSequence(20_260_806))
    gen = np.random.Generator(bit_generator)
    try:
        words = (ctypes.c_uint64 * 4).from_address(state_address(bitgen_address(bit_generator)))
    except (ValueError, OSError, TypeError):  # no capsule or a null pointer: another implementation
        return False
    mask = (1 << 64) - 1
    for _ in range(2):
        st = bit_generator.state["state"]
        want = [st["state"] & mask, st["state"] >> 64, st["inc"] & mask, st["inc"] >> 64]
        if list(words) != want:
            return False
        gen.random(3)
    return True


def bitgen_address(bit_generator: np.random.BitGenerator) -> int:
    """The address of a bit generator's ``bitgen_t`` (numpy's public C API, through its capsule)."""
    return int(_capsule_pointer()(bit_generator.capsule, b"BitGenerator"))


@functools.lru_cache(maxsize=1)
def _capsule_pointer() -> Any:
    """``PyCapsule_GetPointer`` (ctypes): the address a numpy bit generator's ``capsule`` holds."""
    import ctypes

    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get


def state_address(bitgen: int) -> int:
    """The address of a ``PCG64``'s 128-bit ``state`` (then ``inc``) from its ``bitgen_t``'s (:func:`state_in_place`)."""
    import ctypes

    rng_state = ctypes.c_void_p.from_address(bitgen).value  # bitgen_t.state: numpy's pcg64_state
    if not rng_state:
        raise ValueError("the bit generator has no state")
    words = ctypes.c_void_p.from_address(rng_state).value  # pcg64_state.pcg_state
    if not words:
        raise ValueError("the bit generator has no state")
    return int(words)
