"""Optional compiled kernels: numba when it is installed, the numpy code otherwise.

The engine is written in vectorised numpy and that code is always the reference. A few hot loops
that numpy cannot fuse (per-block tallies, one step of a sequential agent over every arm) also have
a numba kernel, used when numba is installed (``pip install "iapo-gym[fast]"``) unless the
``IAPO_GYM_JIT`` environment variable says otherwise:

* ``IAPO_GYM_JIT=0`` (or ``off``/``false``/``no``): always the numpy path;
* ``IAPO_GYM_JIT=1`` (or ``on``/``true``/``yes``): the kernels, and an error naming the extra if
  numba is missing;
* unset or ``auto``: the kernels when numba imports, else numpy.

Why numba and not a C extension: it keeps the wheel pure Python (no per-platform builds) and the
kernels next to their numpy twins, and it is the compiled dependency most of the scientific Python
stack already carries. Why optional: the core stays numpy + scipy + gymnasium, and a kernel compiles
on its first call (about a second, then cached on disk), which short scripts need not pay.

**Contract of every kernel:** the same bits as its numpy twin for the same inputs -- integer
tallies, element-wise IEEE operations (``+ - * /`` and ``sqrt`` are correctly rounded in both), and
float sums only where the twin sums in the same order -- so a seed's decisions never depend on which
path ran. Transcendental functions (``log``, ``exp``) stay in numpy: their last bit may differ
between numpy's and LLVM's implementations (and numpy's own between CPUs with and without AVX512F:
where that moves a decision, :mod:`iapo_gym._portable_math` computes it from ``+ - *`` alone). The
tests run both paths and compare them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ENV_VAR", "available", "enabled", "helper", "kernel", "twin"]

F = TypeVar("F", bound=Callable[..., Any])

#: The environment variable that selects the path (see the module docstring).
ENV_VAR = "IAPO_GYM_JIT"
_OFF = {"0", "off", "false", "no"}
_ON = {"1", "on", "true", "yes"}
#: Functions that kernels call (:func:`helper`), registered with numba before the first kernel compiles.
_HELPERS: list[Callable[..., Any]] = []
_REGISTERED: list[Callable[..., Any]] = []


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether numba can be imported (checked once per process, without importing it)."""
    return importlib.util.find_spec("numba") is not None


def enabled() -> bool:
    """Whether the compiled kernels run now (read from ``IAPO_GYM_JIT`` at every call, so tests can switch).

    Raises:
        ImportError: ``IAPO_GYM_JIT=1`` but numba is not installed.
        ValueError: ``IAPO_GYM_JIT`` holds something else than on / off / auto.
    """
    flag = os.environ.get(ENV_VAR, "auto").strip().lower()
    if flag in _OFF:
        return False
    if flag in _ON:
        if not available():
            raise ImportError(f'{ENV_VAR}=1 needs numba: pip install "iapo-gym[fast]" (or unset {ENV_VAR})')
        return True
    if flag in ("auto", ""):
        return available()
    raise ValueError(f"{ENV_VAR}={flag!r}: use 0 (numpy), 1 (numba kernels) or auto (numba when installed)")


def kernel(fn: F) -> F:
    """Decorator: ``fn`` compiled by ``numba.njit`` on its first call (not at import).

    ``cache=True`` keeps the machine code on disk between processes; ``error_model="numpy"`` makes
    a division by zero give ``inf``/``nan`` as numpy does, instead of raising. Call the kernel only
    when :func:`enabled` is true; its numpy twin is the other branch at the call site.
    """
    compiled: list[Any] = []

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        if not compiled:
            import numba

            _register_helpers()
            compiled.append(numba.njit(cache=True, nogil=True, error_model="numpy")(fn))
        return compiled[0](*args)

    call.py_func = fn  # type: ignore[attr-defined]  # the plain-Python function, as numba names it
    return call  # type: ignore[return-value]


def helper(fn: F) -> F:
    """Decorator: a plain function that kernels call, compiled into them by numba (plain Python elsewhere).

    One body shared by several kernels (e.g. one step of a run, used by a one-step kernel and by a
    many-step loop) instead of copies. ``fn`` itself is returned unchanged; numba learns to compile
    it (``numba.extending.register_jitable``, with the kernels' ``error_model="numpy"``) just before
    the first kernel compiles, so importing a module of kernels never imports numba. Numba inlines
    each call into its caller (``inline="always"``: no call overhead). Inlining does not remove
    reference counting: each inlined call binds its parameters anew, and a name bound to an array
    (or a tuple of arrays: each member) that lives across a loop costs an incref and a decref
    (atomic, through a call) per call unless numba's pruning removes the pair, which it does reliably
    only within one basic block; so a helper called once per step reads ``st.x[i]`` where it uses
    it instead of naming ``x = st.x`` at its top. Two rules: define a helper in the same module as the kernels that
    call it (numba's on-disk cache of a kernel is invalidated by changes to the kernel's own file
    only), and call a given helper from one place per function (two inlined copies in one function
    trip numba's SSA checks: ``NumbaIRAssumptionWarning``).
    """
    _HELPERS.append(fn)
    return fn


def twin(fn: F, name: str) -> F:
    """A second :func:`helper` with ``fn``'s code under another name, for a second call site in one kernel.

    Two inlined copies of one helper in one function trip numba's SSA checks; a distinct function
    object with the same code (and globals) is inlined as a helper of its own. Define the twin
    in the module of ``fn`` (numba's cache of a kernel follows its own file).
    """
    import types

    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__doc__ = f"A twin of :func:`{fn.__name__}` (:func:`iapo_gym._jit.twin`): the same code."
    copy.__qualname__ = name
    return helper(copy)  # type: ignore[return-value]


def _register_helpers() -> None:
    """Register every :func:`helper` defined so far with numba (once each)."""
    from numba.extending import register_jitable

    for fn in _HELPERS[len(_REGISTERED) :]:
        register_jitable(error_model="numpy", inline="always")(fn)
        _REGISTERED.append(fn)
