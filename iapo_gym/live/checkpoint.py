"""The builder's checkpoint and the live-run recording: append-only JSONL logs that lose nothing.

Checkpoint line kinds (format 2):

* ``{"kind": "header", "format": 2, "task": ...}``: the first line.
* ``{"kind": "unit", "key": ..., "start": s, "n": k, "seed": ..., "texts": [...],
  "prompt_tokens": ..., "completion_tokens": [...], "scorer": ..., "answers" | "scores": ...,
  "sha": ...}``: completions ``s .. s+k-1`` of the work unit whose *content key* is ``key`` (a hash
  of the rendered messages, model, sampling parameters and seed; see
  :mod:`iapo_gym.live.builder`), with their scores under the scorer fingerprint ``scorer``.
  ``p``/``q``/``query_id`` are informational.
* ``{"kind": "score", "key", "start", "scorer", "answers" | "scores", "sha"}``: a re-scoring of a
  unit under another scorer (the generation is reused).
* ``{"kind": "failed", "key", "start", "status", "message", ...}``: a unit the server refused
  (quarantined; retried only with ``retry_failed``).
* ``{"kind": "session", "seconds", "units", "status"}``: the end of one build session.

Integrity: every record carries ``sha``, a hash of its own content, so a rewritten answer or a
flipped byte is caught. Damaged lines (bad JSON, bad UTF-8, a wrong checksum, a unit with too few
completions or negative token counts) are **never removed**: :func:`scan` reports them by line
number and skips them; every valid record after them is kept. A torn last line (a crash during a
write) is terminated with a newline before the next append, so it too stays in the file and is
reported. :func:`repair` writes a clean copy and keeps the original and the damaged lines beside
it. The header is checked before anything is written; a file whose first line is not a header is
refused and left untouched.

One process at a time: :meth:`CheckpointLog.open` takes an exclusive ``flock`` on the file; a
second build on the same checkpoint is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 2
MAX_LINE = 256 * 2**20  # a single record larger than this is treated as damaged (bounded memory)


class CheckpointError(RuntimeError):
    """The checkpoint or recording is damaged, belongs to another build, or is in use."""


def _canonical(rec: dict[str, Any]) -> bytes:
    body = {k: v for k, v in rec.items() if k != "sha"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with its integrity checksum ``sha`` (a hash of every other field)."""
    return {**rec, "sha": hashlib.sha256(_canonical(rec)).hexdigest()[:16]}


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_unit(rec: dict[str, Any], *, keyed: bool = True) -> str | None:
    """Why a unit record is unusable, or ``None`` when it is complete and consistent.

    Args:
        rec: the parsed record.
        keyed: a checkpoint unit (needs ``key`` and ``start``) rather than a live-run recording
            (needs ``p`` and ``q``).
    """
    if keyed:
        if not isinstance(rec.get("key"), str) or not _is_count(rec.get("start")):
            return "a unit needs a string 'key' and an integer 'start' >= 0"
    elif not (_is_count(rec.get("p")) and _is_count(rec.get("q"))):
        return "a recorded pull needs integer 'p' and 'q' >= 0"
    texts = rec.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "'texts' must be a list of strings"
    n = rec.get("n", len(texts))
    if not _is_count(n) or n < 1 or len(texts) != n:
        return f"holds {len(texts)} completions, expected n={n!r}"
    toks = rec.get("completion_tokens")
    if not isinstance(toks, list) or len(toks) != n or not all(_is_count(t) for t in toks):
        return "'completion_tokens' must be n integers >= 0"
    if not _is_count(rec.get("prompt_tokens")):
        return "'prompt_tokens' must be an integer >= 0"
    return _check_scores(rec, n)


def _check_scores(rec: dict[str, Any], n: int) -> str | None:
    if "answers" in rec:
        a = rec["answers"]
        if not isinstance(a, list) or len(a) != n or not all(x is None or isinstance(x, str) for x in a):
            return "'answers' must be n strings or nulls"
    if "scores" in rec:
        s = rec["scores"]
        if not isinstance(s, list) or len(s) != n:
            return "'scores' must hold one objective vector per completion"
        for row in s:
            if not isinstance(row, list) or not row or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in row
            ):
                return "'scores' rows must be non-empty lists of finite numbers"
        if len({len(r) for r in s}) > 1:
            return "'scores' rows differ in length"
    return None


@dataclass
class Scan:
    """What :func:`scan` found in a log file."""

    path: Path
    header: dict[str, Any] | None
    records: list[dict[str, Any]]  # valid records (header excluded), in file order
    damaged: list[tuple[int, str]]  # (1-based line number, why)
    torn_tail: bool  # the last line has no newline (a write cut short)

    def report(self, limit: int = 5) -> str:
        """One line naming the damaged lines."""
        shown = "; ".join(f"line {n}: {why}" for n, why in self.damaged[:limit])
        more = f" (and {len(self.damaged) - limit} more)" if len(self.damaged) > limit else ""
        return f"{self.path}: {len(self.damaged)} damaged line(s) skipped ({shown}{more})"


def _check_record(rec: Any, keyed: bool) -> str | None:
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    kind = rec.get("kind")
    if kind == "header":
        return None
    if "sha" not in rec:
        return "no checksum ('sha')"
    try:
        if seal(rec)["sha"] != rec["sha"]:
            return "checksum mismatch (the record was altered)"
    except (TypeError, ValueError) as exc:
        return f"unhashable content ({exc})"
    if kind == "unit":
        return check_unit(rec, keyed=keyed)
    if kind == "score":
        if not isinstance(rec.get("key"), str) or not _is_count(rec.get("start")) or not isinstance(rec.get("scorer"), str):
            return "a score record needs 'key', 'start' and 'scorer'"
        n = rec.get("n")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return "a score record needs n >= 1"
        if "answers" not in rec and "scores" not in rec:
            return "a score record needs 'answers' or 'scores'"
        return _check_scores(rec, n)
    if kind == "failed":
        return None if isinstance(rec.get("key"), str) and _is_count(rec.get("start")) else "a failure needs 'key' and 'start'"
    if kind == "session":
        return None
    return f"unknown record kind {kind!r}"


def scan(path: str | Path, *, keyed: bool = True, with_header: bool = True) -> Scan:
    """Read every line of a log, keeping valid records and reporting damaged ones.

    The file is never modified.

    Args:
        path: the log.
        keyed: checkpoint units (content keys) rather than live-run recordings.
        with_header: the first line must be a header (checkpoints); recordings have none.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    damaged: list[tuple[int, str]] = []
    header = None
    torn = False
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                torn = True
            if len(raw) > MAX_LINE:
                damaged.append((no, f"longer than {MAX_LINE} bytes"))
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                why = _check_record(rec, keyed)
            except UnicodeDecodeError:
                why = "not UTF-8 text"
            except (json.JSONDecodeError, RecursionError):
                why = "a write cut short (no newline)" if not raw.endswith(b"\n") else "not valid JSON"
            if no == 1 and with_header:
                if why is None and rec.get("kind") == "header":
                    header = rec
                    continue
                raise CheckpointError(
                    f"{path}: line 1 is not a checkpoint header ({why or 'kind ' + repr(rec.get('kind'))}); the file "
                    "was left untouched: pass another --checkpoint, or move this file aside to start afresh"
                )
            if why is not None:
                damaged.append((no, why))
            else:
                records.append(rec)
    return Scan(path, header, records, damaged, torn)


@dataclass
class CheckpointLog:
    """An open checkpoint (see the module docstring).

    Attributes:
        units: ``(key, start) -> unit record``.
        scores: ``(key, start, scorer fingerprint) -> answers or scores`` (from unit and score
            records).
        failed: ``(key, start) -> failure record`` for units not generated since they failed.
        damaged: ``(line, why)`` of skipped lines.
    """

    path: Path
    header: dict[str, Any]
    units: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    scores: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict)
    failed: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)
    _lock: Any = None
    _torn: bool = False

    @classmethod
    def open(cls, path: str | Path, header: dict[str, Any]) -> CheckpointLog:
        """Open (creating when absent) the checkpoint at ``path`` and lock it for this process.

        Raises:
            CheckpointError: the first line is not a format-2 header, the log is for another task,
                or another process holds it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "ab")  # noqa: SIM115 - held until close()
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            msg = f"{path} is in use by another build process; wait for it or use another --checkpoint"
            raise CheckpointError(msg) from None
        except ImportError:  # pragma: no cover - no flock on this platform
            pass
        try:
            if path.stat().st_size == 0:
                log = cls(path, {"kind": "header", "format": FORMAT, **header}, _lock=lock)
                log._append([log.header])
                return log
            s = scan(path)
            assert s.header is not None
            if s.header.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path} was written by an older iapo-gym (checkpoint format {s.header.get('format', 1)}, keyed by "
                    "position); it cannot be reused: pass another --checkpoint"
                )
            if s.header.get("task") != header.get("task"):
                raise CheckpointError(
                    f"{path} belongs to task {s.header.get('task')!r}, not {header.get('task')!r}; pass another --checkpoint"
                )
            log = cls(path, s.header, damaged=s.damaged, _lock=lock, _torn=s.torn_tail)
            for rec in s.records:
                log._index(rec)
            return log
        except BaseException:
            lock.close()
            raise

    def _index(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind == "unit":
            k = (rec["key"], int(rec["start"]))
            if k in self.units:  # a duplicate: keep the first, report the second
                self.damaged.append((0, f"unit {k[0][:12]}/{k[1]} appears twice (second copy ignored)"))
                return
            self.units[k] = rec
            self.failed.pop(k, None)
            if "scorer" in rec:
                self.scores[(*k, rec["scorer"])] = rec
        elif kind == "score":
            self.scores[(rec["key"], int(rec["start"]), rec["scorer"])] = rec
        elif kind == "failed":
            k = (rec["key"], int(rec["start"]))
            if k not in self.units:
                self.failed[k] = rec
        elif kind == "session":
            self.sessions.append(rec)

    def _append(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records)
        if self._torn:  # terminate a torn last line so it stays (reported) and our records stay whole
            data = "\n" + data
            self._torn = False
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def add(self, records: list[dict[str, Any]]) -> None:
        """Seal and append records (one write + fsync), then index them.

        Raises:
            CheckpointError: a unit is already in the log.
        """
        sealed = []
        for rec in records:
            if rec.get("kind") == "unit" and (rec["key"], int(rec["start"])) in self.units:
                raise CheckpointError(f"unit {rec['key'][:12]}/{rec['start']} is already in {self.path}")
            sealed.append(seal(rec))
        if sealed:
            self._append(sealed)
        for rec in sealed:
            self._index(rec)

    def add_session(self, seconds: float, units: int, status: str) -> None:
        """Record the end of a build session."""
        self.add([{"kind": "session", "seconds": round(float(seconds), 3), "units": int(units), "status": status[:500],
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}])

    def close(self) -> None:
        """Release the process lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> CheckpointLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_units(path: str | Path, *, on_damage: str = "raise", keyed: bool | None = None) -> list[dict[str, Any]]:
    """The valid unit records of a checkpoint or live-run recording, in file order.

    Args:
        path: the checkpoint or recording.
        on_damage: ``"raise"`` (default) refuses a file with any damaged line, naming the lines;
            ``"skip"`` returns the valid units (every one, also those after a bad line) and
            warns with the damaged line numbers.
        keyed: checkpoint (content-keyed) or recording units; detected from the first line
            when ``None``.

    Raises:
        CheckpointError: damaged lines and ``on_damage="raise"``.
    """
    path = Path(path)
    if keyed is None:
        with open(path, "rb") as f:
            first = f.readline(4096)
        keyed = b'"kind":"header"' in first.replace(b" ", b"")
    s = scan(path, keyed=keyed, with_header=keyed)
    if s.damaged:
        if on_damage == "raise":
            raise CheckpointError(s.report() + "; pass on_damage='skip' to use the valid units, or repair() it")
        if on_damage != "skip":
            raise ValueError(f"on_damage must be 'raise' or 'skip'; got {on_damage!r}")
        import warnings

        warnings.warn(s.report(), stacklevel=2)
    return [r for r in s.records if r.get("kind") == "unit"]


def repair(path: str | Path) -> tuple[Path, Path | None]:
    """Rewrite a checkpoint with only its valid records; keep the original and the damaged lines.

    The original is renamed ``<name>.orig-<timestamp>``; damaged lines go to
    ``<name>.damaged-<timestamp>`` (verbatim). Nothing is deleted.

    Returns:
        The path of the kept original and of the damaged-lines file (``None`` when none).
    """
    path = Path(path)
    s = scan(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    orig = path.with_name(f"{path.name}.orig-{stamp}")
    bad_path = path.with_name(f"{path.name}.damaged-{stamp}") if s.damaged else None
    bad_lines = {n for n, _ in s.damaged}
    raw = path.read_bytes().split(b"\n")
    if bad_path is not None:
        bad_path.write_bytes(b"".join(raw[n - 1] + b"\n" for n in sorted(bad_lines) if n >= 1))
    tmp = path.with_name(path.name + ".repair-tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in [s.header, *s.records]:
            f.write(json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path, orig)
    os.replace(tmp, path)
    return orig, bad_path
