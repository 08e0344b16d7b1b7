"""Builders of hostile table files (tiny inputs that ask for huge allocations), shared by the tests.

Each builder writes its file itself; none allocates what the file asks for.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from iapo_gym.tables.io import ARRAYS_FILE, MANIFEST_FILE, save_table
from iapo_gym.tables.testing import example_table


def memo_pickle() -> bytes:
    """9 bytes: PROTO 2, NONE, LONG_BINPUT 2**27, STOP (the C unpickler grows its memo to 2**28 slots)."""
    return b"\x80\x02N" + b"r" + struct.pack("<I", 2**27) + b"."


def ndarray_call_pickle(n: int = 300_000_000, route: str = "reduce") -> bytes:
    """``numpy.ndarray((n,), 'f8')`` (2.4 GB for the default ``n``) called through REDUCE or NEWOBJ."""
    head = b"\x80\x04\x8c\x05numpy\x8c\x07ndarray\x93"
    args = pickle.dumps(((n,), "f8"), protocol=4)[2:-1]  # the argument tuple, without PROTO and STOP
    return head + args + (b"R." if route == "reduce" else b"\x81.")


def build_state_pickle(n: int = 300_000_000) -> bytes:
    """An empty ndarray from ``_reconstruct`` whose BUILD state declares ``n`` float64 but carries 8 bytes."""
    data = pickle.dumps(np.zeros(1), protocol=3)  # no frames: the state can be edited in place
    assert data.count(b"K\x01K\x01\x85") == 1  # state (version 1, shape (1,), ...)
    return data.replace(b"K\x01K\x01\x85", b"K\x01J" + struct.pack("<i", n) + b"\x85")


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npz_bomb(directory: Path, n_bytes: int, header_shape: str = "huge") -> Path:
    """A valid table directory whose ``cost`` member decompresses to ``n_bytes`` of zeros.

    ``header_shape="huge"``: the .npy header declares the huge shape (the manifest says (2, 10));
    ``"small"``: the header claims the manifest's shape and the zeros follow it anyway.
    """
    directory = save_table(example_table("mv"), directory)
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
        keep = {name: npz[name] for name in npz.files if name != "cost"}
    shape = (n_bytes // 8,) if header_shape == "huge" else (3, 10)
    chunk = bytes(2**20)
    with zipfile.ZipFile(directory / ARRAYS_FILE, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in keep.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, arr)
        with zf.open("cost.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header(shape))
            for _ in range(n_bytes // len(chunk)):
                fh.write(chunk)
    return directory


def nested_manifest(directory: Path, depth: int = 10**6) -> Path:
    """A table directory whose manifest.json is ``depth`` nested lists."""
    directory.mkdir(parents=True)
    (directory / MANIFEST_FILE).write_text("[" * depth + "]" * depth)
    (directory / ARRAYS_FILE).write_bytes(b"")
    return directory


def edit_manifest(directory: Path, **fields) -> None:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest.update(fields)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------- peak memory
_PROBE = r"""
import json, resource, sys
from pathlib import Path
import numpy  # noqa: F401
from iapo_gym.tables import importer, io
limit = int(sys.argv[3]) * 2**20
soft = (int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024) + limit
resource.setrlimit(resource.RLIMIT_AS, (soft, soft))  # a regression fails with MemoryError, not an OOM
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if sys.argv[1] == "pickle":
        importer.restricted_load(Path(sys.argv[2]).read_bytes())
    else:
        io.load_table(sys.argv[2])
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "error": error}))
"""


def peak_memory(kind: str, path: Path, limit_mib: int = 1024) -> dict:
    """Load ``path`` (``kind`` ``"pickle"`` or ``"table"``) in a fresh interpreter whose address space
    may grow by at most ``limit_mib``; returns its ``ru_maxrss`` before / after (KiB) and the error."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, str(path), str(limit_mib)],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
