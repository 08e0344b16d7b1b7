"""``results.csv``: one row per run, crash-safe appends, resume.

Columns (:data:`COLUMNS`):

``env, contexts, agent, budget, seed``
    the run's key (:data:`KEY`); ``seed`` seeds the agent, the train/test split (real tasks) and
    the world (synthetic tasks).
``acr, oracle_acr, regret``
    exact test-split average contextual return of the learnt policy, of the best arm per context,
    and their difference (``>= 0``).
``optimal_frac``
    probability (over the context distribution and the policy's own randomness) that the deployed
    arm is an optimal one; ``1 - optimal_frac`` is the error rate.
``budget_used``
    completions the agent spent (``<= budget``).
``wall_s``
    seconds of fitting per run: the wall time of the configuration's vectorised batch
    (``fit_many`` over all its seeds) divided by the number of runs in the batch.
``policy``
    JSON ``{"prompt": [...], "n": [...], "n_mean": [...], "optimal": [...], "best_prompt": [...],
    "best_n": [...]}``, one entry per context: the deployed (modal) prompt and N, the expected N,
    the probability of an optimal arm, and the oracle's prompt and N.
``agent_config``
    JSON ``{"source": ..., "config": {...}}``: where the agent came from (a zoo name, an import
    path ``module:Class`` or an entry point) and its hyper-parameters. Files written before this
    column existed are read (the column is empty) and upgraded when next written to.

Writes never leave a corrupt file: a new file is written whole to a temporary file and renamed
(with the permissions the user's umask gives, not ``mkstemp``'s 0600); rows are appended in a
single ``write`` per batch and ``fsync``-ed, and a torn last line (one without its line end) left
by a crash is dropped (atomically) the next time the file is opened. Damaged files are never cut:

* an empty file gets its header with the first append;
* a header fused with the first row (no line end after it) or a file without a header is repaired
  losslessly, after the original is copied to ``results.csv.damaged-<time>``;
* a foreign header, a corrupt complete line or a non-finite metric is a :class:`ResultsError`
  naming the line and the fix, and the file is left as it is.

Rows are unique by :data:`KEY`; a file that holds a key twice (two processes appended to one
directory before :class:`OutputLock` existed) is read with the first row of each key and the
number of duplicates reported in :attr:`ResultsFile.duplicates`. :class:`OutputLock` keeps a
second writer out of an output directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["COLUMNS", "KEY", "OutputLock", "ResultsFile", "Results", "ResultsError", "atomic_write_text"]

KEY: tuple[str, ...] = ("env", "contexts", "agent", "budget", "seed")
COLUMNS: tuple[str, ...] = KEY + (
    "acr",
    "oracle_acr",
    "regret",
    "optimal_frac",
    "budget_used",
    "wall_s",
    "policy",
    "agent_config",
)
#: The columns of files written before ``agent_config`` existed (read, and upgraded on write).
LEGACY_COLUMNS: tuple[str, ...] = COLUMNS[:-1]
_INT = {"budget", "seed", "budget_used"}
_FLOAT = {"acr", "oracle_acr", "regret", "optimal_frac", "wall_s"}
_HEADER = ",".join(COLUMNS)
_LEGACY_HEADER = ",".join(LEGACY_COLUMNS)


class ResultsError(ValueError):
    """A results file or output directory that cannot be used (the message names the fix)."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename.

    The file gets the permissions a plain ``open`` would give it (``0o666`` less the umask), not the
    private ``0o600`` of :func:`tempfile.mkstemp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _format(row: dict[str, Any]) -> list[str]:
    out = []
    for col in COLUMNS:
        v = row.get(col, "") if col == "agent_config" else row[col]
        if col in ("policy", "agent_config") and not isinstance(v, str):
            v = json.dumps(v, separators=(",", ":"), sort_keys=col == "agent_config", default=str)
        elif col in _FLOAT:
            if not math.isfinite(float(v)):
                key = ", ".join(f"{k}={row.get(k)!r}" for k in KEY)
                raise ResultsError(f"refusing to record {col}={v!r} for the run ({key}): metrics must be finite; "
                                   "the agent or its policy produced an invalid value")
            v = repr(float(v))
        elif col in _INT:
            v = str(int(v))
        out.append(str(v))
    return out


def _to_csv(rows: Iterable[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(_format(row))
    return buf.getvalue()


def _parse(fields: list[str], columns: Sequence[str] = COLUMNS) -> dict[str, Any]:
    if len(fields) != len(columns):
        raise ValueError(f"{len(fields)} fields, expected {len(columns)}")
    row: dict[str, Any] = {"agent_config": ""}
    for col, v in zip(columns, fields, strict=True):
        if col in _INT:
            row[col] = int(v)
        elif col in _FLOAT:
            row[col] = float(v)
            if not math.isfinite(row[col]):
                raise ValueError(f"{col} is {v}, not a finite number")
        elif col == "policy":
            row[col] = json.loads(v)
        else:
            row[col] = v
    return row


class OutputLock:
    """An exclusive lock on an output directory (``OUT/.train.lock``, ``fcntl.flock``).

    A second process that tries to write into the same directory gets a :class:`ResultsError`
    naming the holder's pid. The kernel releases the lock when its holder exits, however it exits
    (a SIGKILL included), so a stale lock file never blocks a resume.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> with OutputLock(out):  # append to out/results.csv, write tables and figures ...
    ...     OutputLock(out).acquire()  # ... while a second writer is refused
    Traceback (most recent call last):
    iapo_gym.experiments.results.ResultsError: another train.py (pid ...) is writing to ...
    >>> OutputLock(out).acquire().release()  # free again once the holder is done
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ".train.lock"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`ResultsError` when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no advisory locks, run unguarded
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ResultsError(
                f"another train.py (pid {holder}) is writing to {self.directory}; wait for it to finish "
                "or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; it is only a place to lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ResultsFile:
    """The results CSV of one output directory: read (repairing a torn tail), append, resume.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> store = ResultsFile(out / "results.csv")
    >>> key = ("IAPO-MATH-v0", "finite", "psst", 5000, 3)
    >>> store.done(key)
    False
    >>> metrics = {"acr": 0.41, "oracle_acr": 0.45, "regret": 0.04, "optimal_frac": 0.5,
    ...            "budget_used": 4998, "wall_s": 0.3, "policy": {"arms": [3, 3, 0]}}
    >>> store.append([dict(zip(KEY, key, strict=True)) | metrics])
    >>> ResultsFile(out / "results.csv").done(key)  # a later run resumes past it
    True
    """

    def __init__(self, path: str | Path, repair: bool = True) -> None:
        """Read ``path`` (if it exists).

        ``repair=False`` reads only: a torn last line is skipped in memory and the file is left
        alone (for readers while a runner may be appending).
        """
        self.path = Path(path)
        self._repair = repair
        self.duplicates = 0  # rows whose key was already read (the first one is kept)
        self.repaired = ""  # what was wrong with the header, if anything
        self.rows: list[dict[str, Any]] = self._load()
        self._keys = {tuple(r[k] for k in KEY) for r in self.rows}

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ResultsError(
                f"{self.path} is not UTF-8 text (byte {exc.start}); it is not a results file of this runner: "
                "pass another --out directory or move the file away"
            ) from None
        if not text:
            return []  # an empty file (e.g. created by hand): the first append writes the header
        text, columns = self._header(text)
        lines = text.splitlines(keepends=True)
        rows: list[dict[str, Any]] = []
        seen: set[tuple] = set()
        good_end = len(lines[0])
        offset = good_end
        for i, line in enumerate(lines[1:], start=2):
            offset += len(line)
            if not line.endswith("\n"):
                if i == len(lines):
                    break  # a crash tore the last append: the line is dropped below
                raise ResultsError(f"{self.path}: line {i} has no line end; fix or delete that line and run again")
            try:
                row = _parse(next(csv.reader([line])), columns)
            except (ValueError, StopIteration) as exc:
                raise ResultsError(
                    f"{self.path}: line {i} is corrupt ({exc}); fix or delete that line and run again"
                ) from None
            key = tuple(row[k] for k in KEY)
            if key in seen:
                self.duplicates += 1
            else:
                seen.add(key)
                rows.append(row)
            good_end = offset
        if self._repair:
            if columns != COLUMNS:  # an older file: upgrade the header (rows keep an empty agent_config)
                if self.duplicates:  # the upgrade writes each key once: keep the original beside it
                    stamp = time.strftime("%Y%m%d-%H%M%S")
                    shutil.copy2(self.path, self.path.with_name(f"{self.path.name}.pre-upgrade-{stamp}"))
                atomic_write_text(self.path, _to_csv(rows, header=True))
            elif good_end != len(text):  # drop the torn last line
                atomic_write_text(self.path, text[:good_end])
        return rows

    def _header(self, text: str) -> tuple[str, tuple[str, ...]]:
        """``(text, columns)`` with a recognisable damaged header repaired (the original kept aside)."""
        first = text.split("\n", 1)[0].rstrip("\r")
        if first == _HEADER:
            return text, COLUMNS
        if first == _LEGACY_HEADER:
            return text, LEGACY_COLUMNS
        for header, columns in ((_HEADER, COLUMNS), (_LEGACY_HEADER, LEGACY_COLUMNS)):
            if first.startswith(header):  # the header lost its line end and fused with the first row
                rest = first[len(header):]
                if self._parses(rest, columns):
                    return self._repaired(text, header + "\n" + text[len(header):], "the header had no line end"), columns
        if self._parses(first, COLUMNS):  # rows without a header (e.g. appended to an empty file)
            return self._repaired(text, _HEADER + "\n" + text, "the header was missing"), COLUMNS
        if self._parses(first, LEGACY_COLUMNS):
            return self._repaired(text, _LEGACY_HEADER + "\n" + text, "the header was missing"), LEGACY_COLUMNS
        found = next(csv.reader([first]), [])
        raise ResultsError(
            f"{self.path} has columns {found[:len(COLUMNS) + 1]}, not this runner's {list(COLUMNS)}; "
            "pass another --out directory or move the old file away"
        )

    @staticmethod
    def _parses(line: str, columns: Sequence[str]) -> bool:
        try:
            _parse(next(csv.reader([line])), columns)
        except (ValueError, StopIteration):
            return False
        return True

    def _repaired(self, old: str, new: str, why: str) -> str:
        self.repaired = why
        if self._repair:
            backup = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.copy2(self.path, backup)
            atomic_write_text(self.path, new)
            self.repaired = f"{why}; repaired, the original is kept as {backup.name}"
        return new

    def done(self, key: Sequence[Any]) -> bool:
        """Whether the run ``key`` (:data:`KEY` order) is already recorded."""
        return tuple(key) in self._keys

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record finished runs: one ``write`` + ``fsync`` (a new file is written atomically)."""
        rows = [r for r in rows if tuple(r[k] for k in KEY) not in self._keys]
        if not rows:
            return
        text = _to_csv(rows, header=False)  # formats (and checks) every row before anything is written
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write_text(self.path, _HEADER + "\n" + text)
        else:
            data = text.encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        # Keep the in-memory copy in the same (parsed) form as rows read back from disk.
        for r in rows:
            parsed = _parse(_format(r))
            self.rows.append(parsed)
            self._keys.add(tuple(parsed[k] for k in KEY))


@dataclass
class Results:
    """Column view of result rows for analysis (numpy arrays; ``policy`` stays a list of dicts)."""

    env: NDArray[np.str_]
    contexts: NDArray[np.str_]
    agent: NDArray[np.str_]
    budget: NDArray[np.int64]
    seed: NDArray[np.int64]
    acr: NDArray[np.float64]
    oracle_acr: NDArray[np.float64]
    regret: NDArray[np.float64]
    optimal_frac: NDArray[np.float64]
    budget_used: NDArray[np.int64]
    wall_s: NDArray[np.float64]
    policy: list[dict[str, Any]]
    agent_config: list[str]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Results:
        """Columns of ``rows`` (dicts with :data:`COLUMNS`)."""
        cols: dict[str, Any] = {}
        for col in COLUMNS:
            vals = [r.get(col, "") for r in rows]
            if col == "agent_config":
                cols[col] = [v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for v in vals]
            elif col == "policy":
                cols[col] = [v if isinstance(v, dict) else json.loads(v) for v in vals]
            elif col in _INT:
                cols[col] = np.asarray(vals, dtype=np.int64)
            elif col in _FLOAT:
                cols[col] = np.asarray(vals, dtype=np.float64)
            else:
                cols[col] = np.asarray(vals, dtype=str)
        return cls(**cols)

    @classmethod
    def read(cls, path: str | Path) -> Results:
        """Load ``results.csv``."""
        return cls.from_rows(ResultsFile(path, repair=False).rows)

    def __len__(self) -> int:
        return int(self.acr.shape[0])

    def mask(self, **equal: Any) -> NDArray[np.bool_]:
        """Rows whose columns equal the given values, e.g. ``mask(env=..., agent="psst")``."""
        m = np.ones(len(self), dtype=bool)
        for col, v in equal.items():
            m &= getattr(self, col) == v
        return m

    def unique(self, col: str) -> list[Any]:
        """Distinct values of a column, in first-seen order (budgets and seeds sorted)."""
        vals = getattr(self, col)
        if col in _INT:
            return sorted(int(v) for v in np.unique(vals))
        seen: dict[Any, None] = {}
        for v in vals.tolist():
            seen.setdefault(v, None)
        return list(seen)

    def paired(self, col: str, env: str, budget: int, agent_a: str, agent_b: str) -> tuple[NDArray, NDArray, NDArray]:
        """``(seeds, a, b)``: column ``col`` of two agents on their common seeds (sorted)."""
        out = []
        for agent in (agent_a, agent_b):
            m = self.mask(env=env, budget=budget, agent=agent)
            out.append(dict(zip(self.seed[m].tolist(), getattr(self, col)[m].tolist(), strict=True)))
        seeds = np.array(sorted(set(out[0]) & set(out[1])), dtype=np.int64)
        a = np.array([out[0][s] for s in seeds.tolist()], dtype=np.float64)
        b = np.array([out[1][s] for s in seeds.tolist()], dtype=np.float64)
        return seeds, a, b
