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

Writes never leave a corrupt file: a new file is written whole to a temporary file and renamed;
rows are appended in a single ``write`` per batch and ``fsync``-ed, and a torn last line left by a
crash is dropped (atomically) the next time the file is opened.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["COLUMNS", "KEY", "ResultsFile", "Results", "ResultsError", "atomic_write_text"]

KEY: tuple[str, ...] = ("env", "contexts", "agent", "budget", "seed")
COLUMNS: tuple[str, ...] = KEY + (
    "acr",
    "oracle_acr",
    "regret",
    "optimal_frac",
    "budget_used",
    "wall_s",
    "policy",
)
_INT = {"budget", "seed", "budget_used"}
_FLOAT = {"acr", "oracle_acr", "regret", "optimal_frac", "wall_s"}


class ResultsError(ValueError):
    """A results file that cannot be used (foreign header, corrupt row in the middle)."""


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
        v = row[col]
        if col == "policy" and not isinstance(v, str):
            v = json.dumps(v, separators=(",", ":"))
        elif col in _FLOAT:
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


def _parse(fields: list[str]) -> dict[str, Any]:
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{len(fields)} fields, expected {len(COLUMNS)}")
    row: dict[str, Any] = {}
    for col, v in zip(COLUMNS, fields, strict=True):
        if col in _INT:
            row[col] = int(v)
        elif col in _FLOAT:
            row[col] = float(v)
        elif col == "policy":
            row[col] = json.loads(v)
        else:
            row[col] = v
    return row


class ResultsFile:
    """The results CSV of one output directory: read (repairing a torn tail), append, resume.

    >>> store = ResultsFile(out / "results.csv")
    >>> store.done(("IAPO-MATH-v0", "finite", "psst", 5000, 3))
    >>> store.append([row, ...])
    """

    def __init__(self, path: str | Path, repair: bool = True) -> None:
        """Open the results file at ``path``.

        ``repair=False`` reads only: a torn last line is skipped in memory, the file is left alone
        (for readers while a runner may be appending).
        """
        self.path = Path(path)
        self._repair = repair
        self.rows: list[dict[str, Any]] = self._load()
        self._keys = {tuple(r[k] for k in KEY) for r in self.rows}

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        if not text:
            return []
        lines = text.splitlines(keepends=True)
        header = next(csv.reader([lines[0]]))
        if tuple(header) != COLUMNS:
            raise ResultsError(
                f"{self.path} has columns {header}, not this runner's {list(COLUMNS)}; "
                "pass another --out directory or move the old file away"
            )
        rows: list[dict[str, Any]] = []
        good_end = len(lines[0])
        offset = good_end
        for i, line in enumerate(lines[1:], start=2):
            offset += len(line)
            last = i == len(lines)
            try:
                if not line.endswith("\n"):
                    raise ValueError("no line end (torn write)")
                rows.append(_parse(next(csv.reader([line]))))
                good_end = offset
            except (ValueError, StopIteration, json.JSONDecodeError) as exc:
                if not last:
                    raise ResultsError(
                        f"{self.path}: line {i} is corrupt ({exc}); fix or delete that line and run again"
                    ) from None
        if good_end != len(text) and self._repair:  # a crash tore the last append: drop the partial line
            atomic_write_text(self.path, text[:good_end])
        return rows

    def done(self, key: Sequence[Any]) -> bool:
        """Whether the run ``key`` (:data:`KEY` order) is already recorded."""
        return tuple(key) in self._keys

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record finished runs: one ``write`` + ``fsync`` (a new file is written atomically)."""
        rows = [r for r in rows if tuple(r[k] for k in KEY) not in self._keys]
        if not rows:
            return
        if not self.path.exists():
            atomic_write_text(self.path, _to_csv(rows, header=True))
        else:
            data = _to_csv(rows, header=False).encode("utf-8")
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

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Results:
        """Columns of ``rows`` (dicts with :data:`COLUMNS`)."""
        cols: dict[str, Any] = {}
        for col in COLUMNS:
            vals = [r[col] for r in rows]
            if col == "policy":
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
