"""``iapo_gym._portable_math.exp``: accurate, the same bits as a scalar twin, and what keeps a decision machine-independent.

numpy's float64 ``exp`` is AVX512F code on CPUs that have it and the C library's elsewhere; a
one-bit difference flipped ``psst_model``'s arm on Synth-Bernoulli (pinned case ``T=1500``, seed 1)
between an AVX512 machine and an AVX2 one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from policy_pins import CASES, PINS, compute

from iapo_gym import _jit
from iapo_gym._portable_math import _TAYLOR, _X_MAX, _X_MIN, INV_LN2, LN2_HI, LN2_LO, exp


def _scalar_exp(x: float) -> float:
    """The same algorithm on Python floats (IEEE doubles, ``round`` is half-to-even like ``rint``)."""
    if math.isnan(x):
        return math.nan
    xc = min(max(x, _X_MIN), _X_MAX)
    k = float(round(xc * INV_LN2))
    r = (xc - k * LN2_HI) - k * LN2_LO
    p = _TAYLOR[0]
    for c in _TAYLOR[1:]:
        p = p * r + c
    try:
        return math.ldexp(p, int(k))
    except OverflowError:
        return math.inf


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.view(np.int64) - b.view(np.int64))


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(20261207)
    return np.concatenate([
        rng.uniform(-745.0, 709.7, 20_000), rng.uniform(-1.0, 1.0, 20_000), rng.uniform(-40.0, 0.0, 20_000),
        rng.uniform(-746.0, -708.0, 2_000),  # subnormal results and underflow to 0
        np.arange(-20.0, 21.0) * math.log(2.0), [0.0, -0.0, 1e-300, -1e-300, 5e-324],
    ])


def test_exp_is_within_two_units_in_the_last_place_of_the_c_library() -> None:
    x = _inputs()
    ref = np.array([math.exp(v) for v in x])
    got = exp(x)
    assert got.dtype == np.float64 and got.shape == x.shape
    ulps = _ulps(got, ref)
    assert ulps.max() <= 2, x[np.argmax(ulps)]
    assert (ulps == 0).mean() > 0.8  # a sloppier polynomial or reduction would miss far more often


def test_exp_has_the_same_bits_as_its_scalar_twin() -> None:
    """Only correctly rounded operations: numpy's vector loops and Python's scalar ones agree bit for bit."""
    x = _inputs()
    scalar = np.array([_scalar_exp(float(v)) for v in x])
    np.testing.assert_array_equal(exp(x).view(np.int64), scalar.view(np.int64))


def test_exp_special_values() -> None:
    got = exp([np.nan, np.inf, -np.inf, 0.0, 1.0, 709.78, 710.0, -745.13, -745.2, -1e4, 1e4])
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0.0 and got[3] == 1.0
    assert got[4] == pytest.approx(math.e, rel=1e-15)
    assert got[5] == pytest.approx(math.exp(709.78), rel=1e-15) and np.isfinite(got[5])
    assert got[6] == np.inf and got[7] == 5e-324 and got[8] == 0.0 and got[9] == 0.0 and got[10] == np.inf
    assert exp(np.zeros((2, 3))).shape == (2, 3) and float(exp(2.0)) == pytest.approx(math.exp(2.0), rel=1e-15)


class _NumpyWithExp:
    """``numpy`` as a module global of :mod:`iapo_gym.agents.psst_model` sees it, with another ``exp``."""

    def __init__(self, exp_fn: object) -> None:
        self._exp = exp_fn

    def __getattr__(self, name: str) -> object:
        return self._exp if name == "exp" else getattr(np, name)


@pytest.mark.parametrize("direction", [np.inf, -np.inf], ids=["exp one ulp up", "exp one ulp down"])
def test_psst_model_decides_the_same_whatever_numpy_exp_returns(monkeypatch: pytest.MonkeyPatch, direction: float) -> None:
    """A numpy ``exp`` one unit in the last place off (another CPU's) leaves every pinned binary-answer policy as pinned.

    With numpy's ``exp`` in its shrinkage across prompts, the case ``T=1500`` flipped seed 1 for a
    one-ulp-down ``exp`` on an AVX2 machine (and the pins, written on an AVX512 one, failed there).
    """
    import iapo_gym.agents.psst_model as psst_model

    real = np.exp
    monkeypatch.setattr(psst_model, "np", _NumpyWithExp(lambda x, *a, **k: np.nextafter(real(x, *a, **k), direction)))
    monkeypatch.setenv(_jit.ENV_VAR, "0")  # the numpy twins: the kernels are compiled against the real numpy
    pinned = json.loads(PINS.read_text())
    cases = [c for c in CASES if c.task == "SynthBernoulli" and c.agent == "psst_model"]
    assert len(cases) == 2
    for case in cases:
        assert compute(case) == pinned[case.key], case.key
