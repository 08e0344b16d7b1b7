"""How many CPU threads the numeric libraries of one experiment may use (``--threads``).

torch and the BLAS behind numpy/scipy start one thread per core by default. On a shared machine
(another experiment, a test suite or a build holding a core) that oversubscribes the CPU: every
parallel region waits for its slowest thread: with a second CPU-bound process running on 2 cores,
a small PPO run took 1.9x and a neural-agent run 6x as long with two threads as with one
(``benchmarks/bench_threads.py``). The runner therefore limits threads
deliberately; ``--threads 1`` (the default) is right for small per-run models on a shared laptop
or CI box, ``--threads 0`` leaves every library's own default.

Three layers, because no single switch reaches every library:

* the ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` variables, for
  libraries loaded *later* in this process (torch reads them when it is first imported; agents
  import torch lazily) and for child processes;
* ``threadpoolctl`` (when installed; it is a scikit-learn dependency) for BLAS/OpenMP pools
  already loaded, numpy's OpenBLAS in particular, which read the variables only at load time;
* ``torch.set_num_threads`` whenever torch is imported (:func:`apply_torch_threads` is called
  again before each fit, since an agent may have imported torch in between).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["limit_threads", "apply_torch_threads", "ENV_VARS"]

ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Limit this process's numeric libraries to ``n`` threads inside the block (``0``: no change).

    On exit the variables, the thread pools and torch's setting are restored, so a library caller
    (a notebook, a test) gets its process back as it was.
    """
    n = int(n)
    if n <= 0:
        yield
        return
    saved_env = {var: os.environ.get(var) for var in ENV_VARS}
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None
    for var in ENV_VARS:
        os.environ[var] = str(n)
    apply_torch_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the variables above still reach every library loaded from now on
        pools = None
    else:
        pools = threadpool_limits(limits=n)
    try:
        yield
    finally:
        if pools is not None:
            pools.restore_original_limits()
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if saved_torch is not None:  # torch imported inside the block keeps the limit it started with
            sys.modules["torch"].set_num_threads(saved_torch)


def apply_torch_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` if torch is already imported (never imports it)."""
    torch = sys.modules.get("torch")
    if int(n) > 0 and torch is not None and hasattr(torch, "set_num_threads"):
        if torch.get_num_threads() != int(n):
            torch.set_num_threads(int(n))
