"""The builder's checkpoint: an append-only JSONL log of completed (prompt, query) work units.

Line kinds:

* ``{"kind": "header", ...}``: the first line; what was being built (spec fingerprint, model,
  pool, seed, query ids). A resume with a different header is refused.
* ``{"kind": "unit", "p": ..., "q": ..., "query_id": ..., "seed": ..., "texts": [...],
  "prompt_tokens": ..., "completion_tokens": [...], "answers": [...] | "scores": [[...]]}``:
  one (prompt, query) unit with its ``pool`` completions and their scores.
* ``{"kind": "session", "seconds": ..., "units": ..., "status": ...}``: the end of one build
  session (its wall time, units it generated, and ``"done"`` or the error that stopped it).

Every batch is appended with one ``write`` and ``fsync``; a torn last line (a crash during a
write) is dropped on load and truncated away before the next append, so the log only ever holds
whole records. A unit key appearing twice is a defect and raises.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CheckpointError(RuntimeError):
    """The checkpoint does not belong to this build, or is corrupt."""


@dataclass
class CheckpointLog:
    """An open checkpoint: its header, completed units and past sessions."""

    path: Path
    header: dict[str, Any]
    units: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path, header: dict[str, Any]) -> CheckpointLog:
        """Open (creating when absent) the log at ``path`` for the build described by ``header``.

        Raises:
            CheckpointError: the log was written for a different build.
        """
        path = Path(path)
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            log = cls(path, header)
            log._append([{"kind": "header", **header}])
            return log
        records, good_bytes = _read(path)
        if good_bytes < path.stat().st_size:  # drop a torn last line before appending more
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())
        if not records or records[0].get("kind") != "header":
            raise CheckpointError(f"{path} has no header line; delete it to start the build afresh")
        old = {k: v for k, v in records[0].items() if k != "kind"}
        diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
        if diff:
            raise CheckpointError(
                f"{path} was written for another build (differs in {diff}); use another --checkpoint "
                "or delete it to start afresh"
            )
        log = cls(path, old)
        for rec in records[1:]:
            if rec.get("kind") == "unit":
                key = (int(rec["p"]), int(rec["q"]))
                if key in log.units:
                    raise CheckpointError(f"{path}: unit (prompt {key[0]}, query {key[1]}) appears twice")
                log.units[key] = rec
            elif rec.get("kind") == "session":
                log.sessions.append(rec)
        return log

    def _append(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def add_units(self, records: list[dict[str, Any]]) -> None:
        """Append completed units (one write + fsync)."""
        for rec in records:
            key = (int(rec["p"]), int(rec["q"]))
            if key in self.units:
                raise CheckpointError(f"unit (prompt {key[0]}, query {key[1]}) is already in {self.path}")
        self._append([{"kind": "unit", **r} for r in records])
        for rec in records:
            self.units[(int(rec["p"]), int(rec["q"]))] = {"kind": "unit", **rec}

    def add_session(self, seconds: float, units: int, status: str) -> None:
        """Record the end of a build session."""
        rec = {"seconds": round(float(seconds), 3), "units": int(units), "status": status}
        self._append([{"kind": "session", **rec}])
        self.sessions.append({"kind": "session", **rec})


def _read(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parsed whole lines and the byte length they span (a torn tail is excluded)."""
    records: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
    return records, good


def read_units(path: str | Path) -> list[dict[str, Any]]:
    """The unit records of a checkpoint (or live-run recording), in file order."""
    records, _ = _read(Path(path))
    return [r for r in records if r.get("kind") == "unit"]
