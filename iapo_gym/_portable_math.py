"""Elementary functions built from correctly rounded operations only: the same bits on every machine.

numpy computes float64 ``exp`` with its own AVX512F code on CPUs that have it and with the C
library's elsewhere. The two disagree in the last bit for some inputs, and one bit is enough to flip
a near-tied decision: ``psst_model``'s shrinkage across prompts on Synth-Bernoulli chose another arm
on an AMD EPYC (AVX2) than on the AVX512 machine that pinned its policies. A seed must determine its
run on any machine, so decision paths use :func:`exp` here instead.

:func:`exp` reduces ``x = k ln 2 + r`` with ``|r| <= ln 2 / 2`` (Cody and Waite's two-part ``ln 2``,
as fdlibm), evaluates the Taylor polynomial of degree 13 by Horner's rule (its truncation error is
below ``1e-17`` relative) and scales by ``2**k`` with ``ldexp``. Every step is an IEEE ``+ - *``
(correctly rounded, never fused here: numpy's ``add`` and ``multiply`` are separate ufuncs), ``rint``
or ``ldexp`` (exact), so no CPU feature can change a bit. It is within 2 units in the last place of
the C library's ``exp`` (``tests/test_portable_math.py``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["exp"]

#: ``ln 2`` split as fdlibm does: ``LN2_HI`` has 32 trailing zero bits, so ``k * LN2_HI`` is exact for ``|k| < 2**20``.
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
#: Taylor coefficients ``1 / j!`` for ``j = 13 .. 0`` (Horner's order).
_TAYLOR = tuple(1.0 / float(np.prod(np.arange(1, j + 1, dtype=np.float64))) for j in range(13, -1, -1))
#: Beyond these ``exp`` is ``inf`` / ``0`` in float64; clipping keeps ``k`` a small integer.
_X_MAX, _X_MIN = 710.0, -746.0


def exp(x: ArrayLike) -> NDArray[np.float64]:
    """``e**x`` element-wise in float64, bit-identical on every machine (see the module docstring).

    ``nan`` stays ``nan``, ``inf`` gives ``inf`` and ``-inf`` gives 0; overflow and underflow
    round as ``ldexp`` does (to ``inf``, to subnormals and to 0).
    """
    xa = np.asarray(x, dtype=np.float64)
    nan = np.isnan(xa)
    xc = np.clip(xa, _X_MIN, _X_MAX)
    if nan.any():
        xc[nan] = 0.0
    k = np.rint(xc * INV_LN2)
    r = xc - k * LN2_HI  # in place below: the same operations, fewer temporaries
    r -= k * LN2_LO
    p = np.full_like(r, _TAYLOR[0])
    for c in _TAYLOR[1:]:
        p *= r
        p += c
    with np.errstate(over="ignore"):  # beyond x = 709.78: inf, as it should
        out = np.ldexp(p, k.astype(np.int32))
    if nan.any():
        out[nan] = np.nan
    return out
