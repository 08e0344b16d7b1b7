"""The optional compiled-kernel switch (iapo_gym._jit): environment variable, lazy compile, numpy semantics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from iapo_gym import _jit


@_jit.kernel
def _ratio_sum(a, b):  # type: ignore[no-untyped-def]
    out = np.empty(a.size)
    for i in range(a.size):
        out[i] = a[i] / b[i] + np.sqrt(a[i])
    return out


@pytest.mark.parametrize(("flag", "expected"), [("0", False), ("off", False), ("no", False), ("auto", None), ("", None)])
def test_the_environment_variable_selects_the_path(monkeypatch: pytest.MonkeyPatch, flag: str, expected: bool | None) -> None:
    monkeypatch.setenv(_jit.ENV_VAR, flag)
    assert _jit.enabled() is (_jit.available() if expected is None else expected)


def test_forcing_the_kernels_without_numba_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_jit.ENV_VAR, "1")
    monkeypatch.setattr(_jit, "available", lambda: False)
    with pytest.raises(ImportError, match=r"iapo-gym\[fast\]"):
        _jit.enabled()


def test_a_bad_value_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_jit.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="IAPO_GYM_JIT='maybe'.*use 0"):
        _jit.enabled()


def test_importing_the_package_does_not_import_numba() -> None:
    code = "import sys, iapo_gym, iapo_gym.agents; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_kernel_gives_numpys_bits_and_numpys_division_by_zero() -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    a, b = rng.random(1000), rng.random(1000)
    b[:3] = 0.0
    a[1] = 0.0  # 0 / 0
    got = _ratio_sum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = a / b + np.sqrt(a)
    np.testing.assert_array_equal(got, want)  # bit for bit, inf and nan included
    assert np.isinf(got[0]) and np.isnan(got[1])
    np.testing.assert_array_equal(_ratio_sum.py_func(a[3:], b[3:]), want[3:])  # the plain function is kept


@_jit.helper
def _scaled_sum(a, lo, hi, scale):  # type: ignore[no-untyped-def]
    total = 0.0
    for i in range(lo, hi):
        total += a[i] / scale
    return total


@_jit.kernel
def _window_sums(a, width, scale):  # type: ignore[no-untyped-def]
    out = np.empty(a.size - width + 1)
    for i in range(out.size):
        out[i] = _scaled_sum(a, i, i + width, scale)  # a helper, compiled into the kernel
    return out


def test_a_helper_is_compiled_into_its_kernel_and_stays_a_plain_function() -> None:
    pytest.importorskip("numba")
    a = np.random.default_rng(4).random(50)
    want = np.array([_scaled_sum(a, i, i + 7, 3.0) for i in range(44)])
    assert _scaled_sum.__module__ == __name__ and not hasattr(_scaled_sum, "py_func")  # the function itself
    np.testing.assert_array_equal(_window_sums(a, 7, 3.0), want)  # the same bits compiled as in Python
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.isinf(_window_sums(a, 3, 0.0)).all()  # the kernels' numpy division by zero holds in the helper
