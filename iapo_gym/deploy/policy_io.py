"""Saved policies: a versioned JSON document per policy, checked against the spec it is deployed with.

``policy.save("psst.json", task=env)`` writes the document; :func:`load_policy` reads it back as
the same kind of :class:`~iapo_gym.agents.base.Policy`, with the document attached as
``policy.deployment`` (a :class:`PolicyDocument`). Every policy of the zoo is covered:

==============  ===============================================================================
kind            what the document holds
==============  ===============================================================================
``table``       one arm per context: flat arm, prompt index, prompt-text fingerprint and ``N``
``stochastic``  a distribution over the flat arms per context, and the policy's sampling seed
``neural``      the MLP's arrays in ``<stem>.weights.npz`` beside the JSON (``allow_pickle=False``)
``sb3``         the Stable-Baselines3 model in ``<stem>.sb3.zip`` beside the JSON
==============  ===============================================================================

The document (``format_version`` 1)::

    {"format": "iapo-gym.policy", "format_version": 1, "kind": "table",
     "task": {"name", "strategy", "objectives", "n_prompts", "n_max", "prompts": [fingerprints],
              "fingerprint", "contexts", "cost_unit", "cost_scale_per_token",
              "cost_per_completion", "sampling", "spec_fingerprint", "model", "table_checksum"},
     "policy": {...kind-specific...}, "n_max", "budget_used",
     "provenance": {"agent", "agent_config", "budget", "seed", "table_checksum", "created", "iapo_gym"},
     "info": {...}, "checksum": "<sha256 of the canonical JSON of everything above>"}

The **task fingerprint** hashes what decides what an arm *means*: the task name, strategy,
objectives and every prompt's text (its sha256). A policy refuses to deploy with a spec whose
fingerprint differs (another prompt list, order or wording), and with a spec that samples
differently from the table the policy was learnt on (the Q-values were measured at that
temperature, top-p and token limit). Side files (weights, models) are recorded with their sha256
and checked on load; a document whose checksum does not match is refused and left as it is.
Writes are atomic (a temporary file renamed into place; side files before the JSON).

Neural weights use ``.npz``: the deployed forward pass is numpy (no torch needed to serve), the
arrays are plain float64, and ``np.load(..., allow_pickle=False)`` cannot execute code; it needs
no dependency beyond the core.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.contexts import ContextSet

FORMAT = "iapo-gym.policy"
FORMAT_VERSION = 1
KINDS = ("table", "stochastic", "neural", "sb3")
_NEURAL_ARRAYS = ("w1", "b1", "w2", "b2", "ws", "centre", "cost_per_completion", "candidates")


class PolicyFormatError(ValueError):
    """A policy document that cannot be read (damaged, unknown version, missing side file)."""


class PolicyMismatchError(ValueError):
    """A policy deployed with a task spec it was not learnt for."""


def text_fingerprint(text: str) -> str:
    """First 16 hex digits of the sha256 of a prompt text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples and paths (for ``info`` and configs)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        x = float(obj)
        return x if np.isfinite(x) else None
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def table_checksum(table: Any) -> str:
    """sha256 over a table's prompts, contexts and outcome arrays (16 hex digits)."""
    from iapo_gym.tables.io import array_checksum

    h = hashlib.sha256()
    h.update(_canonical([table.task, table.strategy, list(table.prompts), list(table.query_ids), table.n_max]))
    for name in ("cost", "answer_probs", "gold", "outcome_values", "outcome_probs"):
        arr = getattr(table, name, None)
        if arr is not None:
            h.update(f"{name}:{array_checksum(np.asarray(arr))}".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the task identity
@dataclass(frozen=True)
class TaskIdentity:
    """What a policy was learnt for, recorded in its document and checked at deployment.

    Attributes:
        name: task name (``"SmolArith"``).
        strategy: ``"mv"`` or ``"bon"``.
        objectives: objective names.
        prompts: per prompt the fingerprint of its text (:func:`text_fingerprint`).
        n_max: the task's largest N.
        contexts: the task's finite context set (named contexts resolve against it).
        cost_unit: the table's cost unit (``"tokens*0.000295794"``).
        cost_scale_per_token: cost of one completion token when the table was built from tokens
            (live tables), else ``None``.
        cost_per_completion: ``(P,)`` the table's mean cost of one completion per prompt.
        sampling: the decoding parameters the table was built with, when recorded.
        spec_fingerprint: the build spec's fingerprint, when recorded.
        model: the model the table was built from, when recorded.
        table_checksum: :func:`table_checksum` of the table.
    """

    name: str
    strategy: str
    objectives: tuple[str, ...]
    prompts: tuple[str, ...]
    n_max: int
    contexts: ContextSet
    cost_unit: str = "cost"
    cost_scale_per_token: float | None = None
    cost_per_completion: tuple[float, ...] = ()
    sampling: dict[str, Any] | None = None
    spec_fingerprint: str | None = None
    model: str | None = None
    table_checksum: str | None = None

    @property
    def fingerprint(self) -> str:
        """16 hex digits over task name, strategy, objectives and prompt-text fingerprints."""
        return _task_fingerprint(self.name, self.strategy, self.objectives, self.prompts)

    @classmethod
    def from_table(cls, table: Any) -> TaskIdentity:
        """The identity of an :class:`~iapo_gym.tables.format.OutcomeTable` (or an env holding one)."""
        table = _table_of(table)
        prov = dict(table.provenance or {})
        scale = prov.get("cost_scale_per_token")
        sampling = prov.get("sampling")
        return cls(
            name=str(table.task),
            strategy=str(table.strategy),
            objectives=tuple(str(o) for o in table.objectives),
            prompts=tuple(text_fingerprint(p) for p in table.prompts),
            n_max=int(table.n_max),
            contexts=table.contexts,
            cost_unit=str(table.cost_unit),
            cost_scale_per_token=None if scale is None else float(scale),
            cost_per_completion=tuple(float(x) for x in np.asarray(table.cost).mean(axis=1)),
            sampling=None if sampling is None else dict(sampling),
            spec_fingerprint=prov.get("spec_fingerprint"),
            model=None if prov.get("model") is None else str(prov.get("model")),
            table_checksum=table_checksum(table),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (the document's ``"task"``), fingerprint included."""
        return {
            "name": self.name, "strategy": self.strategy, "objectives": list(self.objectives),
            "n_prompts": len(self.prompts), "n_max": self.n_max, "prompts": list(self.prompts),
            "fingerprint": self.fingerprint, "contexts": self.contexts.to_json(), "cost_unit": self.cost_unit,
            "cost_scale_per_token": self.cost_scale_per_token, "cost_per_completion": list(self.cost_per_completion),
            "sampling": self.sampling, "spec_fingerprint": self.spec_fingerprint, "model": self.model,
            "table_checksum": self.table_checksum,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskIdentity:
        """Inverse of :meth:`to_json`; refuses a document whose stored fingerprint disagrees."""
        out = cls(
            name=str(data["name"]), strategy=str(data["strategy"]), objectives=tuple(data["objectives"]),
            prompts=tuple(data["prompts"]), n_max=int(data["n_max"]), contexts=ContextSet.from_json(data["contexts"]),
            cost_unit=str(data.get("cost_unit", "cost")), cost_scale_per_token=data.get("cost_scale_per_token"),
            cost_per_completion=tuple(float(x) for x in data.get("cost_per_completion", ())),
            sampling=data.get("sampling"), spec_fingerprint=data.get("spec_fingerprint"), model=data.get("model"),
            table_checksum=data.get("table_checksum"),
        )
        if data.get("fingerprint") != out.fingerprint:
            raise PolicyFormatError(
                f"the task fingerprint {data.get('fingerprint')!r} does not match the task it describes "
                f"({out.fingerprint}); the document was edited by hand or damaged"
            )
        return out

    def check_spec(self, spec: Any) -> None:
        """Raise :class:`PolicyMismatchError` unless ``spec`` (a ``TaskSpec``) deploys this task.

        The spec's task fingerprint must equal the policy's (same task name, strategy, objectives and
        prompt texts in the same order) and, when the table recorded its decoding parameters, the
        spec must sample the same way.
        """
        theirs = _task_fingerprint(spec.task, spec.strategy, tuple(spec.objectives),
                                   tuple(text_fingerprint(p) for p in spec.prompts))
        if theirs != self.fingerprint:
            why = []
            if spec.task != self.name:
                why.append(f"task {spec.task!r} != {self.name!r}")
            if spec.strategy != self.strategy:
                why.append(f"strategy {spec.strategy!r} != {self.strategy!r}")
            if tuple(spec.objectives) != self.objectives:
                why.append(f"objectives {list(spec.objectives)} != {list(self.objectives)}")
            mine = self.prompts
            other = tuple(text_fingerprint(p) for p in spec.prompts)
            if len(other) != len(mine):
                why.append(f"{len(other)} prompts != {len(mine)}")
            else:
                diff = [i for i, (a, b) in enumerate(zip(mine, other, strict=True)) if a != b]
                if diff:
                    why.append(f"prompt text differs at index {diff}")
            raise PolicyMismatchError(
                f"the policy was learnt for task fingerprint {self.fingerprint}, the spec "
                f"{getattr(spec, 'path', None) or spec.task} has {theirs} ({'; '.join(why)}); deploy it with the "
                "spec its table was built from"
            )
        if self.sampling is not None:
            want = {k: float(v) if k != "max_tokens" else int(v) for k, v in self.sampling.items()}
            have = spec.sampling.to_json()
            bad = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if bad:
                detail = ", ".join(f"{k}={a} (policy: {b})" for k, (a, b) in sorted(bad.items()))
                raise PolicyMismatchError(
                    f"the spec samples with {detail}: the policy's Q-values were measured with the table's "
                    "sampling; set the spec's sampling to the table's"
                )


def _task_fingerprint(name: str, strategy: str, objectives: tuple[str, ...], prompts: tuple[str, ...]) -> str:
    payload = _canonical({"task": name, "strategy": strategy, "objectives": list(objectives), "prompts": list(prompts)})
    return hashlib.sha256(payload).hexdigest()[:16]


def _table_of(task: Any) -> Any:
    """The outcome table of ``task``: an ``OutcomeTable``, an env (wrapped or not) or a task name."""
    if hasattr(task, "prompts") and hasattr(task, "cost") and hasattr(task, "strategy"):
        return task
    base = getattr(task, "unwrapped", task)
    table = getattr(base, "table", None)
    if table is not None:
        return table
    if isinstance(task, str):
        from iapo_gym.tasks import load_task_table

        return load_task_table(task)
    raise TypeError(f"task must be an OutcomeTable, an IAPO env or a task name; got {type(task).__name__}")


# --------------------------------------------------------------------------- the document
@dataclass
class PolicyDocument:
    """A policy's saved form, minus the policy itself (attached to loaded policies as ``deployment``).

    Attributes:
        kind: one of :data:`KINDS`.
        task: the task identity.
        provenance: agent, its configuration, budget, seed, table checksum, creation time, version.
        path: where it was read from (``None`` before saving).
    """

    kind: str
    task: TaskIdentity
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def arm_label(self, arm: int) -> dict[str, Any]:
        """``{"arm", "prompt", "prompt_sha256", "n"}`` of a flat arm."""
        p, n = divmod(int(arm), self.task.n_max)
        return {"arm": int(arm), "prompt": p, "prompt_sha256": self.task.prompts[p], "n": n + 1}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _side_path(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.removesuffix(".json") + suffix)


def save_policy(
    policy: Any,
    path: str | Path,
    task: Any,
    *,
    agent: Any = None,
    agent_name: str | None = None,
    budget: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``policy`` as a versioned document at ``path`` (``.json``), side files beside it.

    Args:
        path: the document's path (``.json``).
        policy: any policy of the zoo (``TablePolicy``, ``StochasticPolicy``, ``NeuralPolicy``,
            ``ModelPolicy``).
        task: what the policy was learnt on: the ``OutcomeTable``, the env, or a task name.
        agent: the agent (its name and configuration are recorded) or an agent name.
        agent_name: the name to record instead of the agent's own (e.g. its registry name ``"topk4"``).
        budget: the training budget in completions.
        seed: the run's seed.
        overwrite: replace an existing document (default: refuse).

    Returns:
        The document's path.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"path must end in .json (side files go beside it); got {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or another path) to replace it")
    identity = TaskIdentity.from_table(_table_of(task))
    path.parent.mkdir(parents=True, exist_ok=True)
    n_max = int(policy.n_max)
    if n_max != identity.n_max:
        raise ValueError(f"the policy decodes arms with n_max={n_max}; the task has n_max={identity.n_max}")
    kind, body = _policy_body(policy, identity, path)
    if isinstance(agent, str) or agent is None:
        agent_name, agent_config = agent_name or agent, None
    else:
        agent_name, agent_config = agent_name or getattr(agent, "name", type(agent).__name__), _jsonable(agent.config())
    from iapo_gym import __version__

    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "task": identity.to_json(),
        "policy": body,
        "n_max": n_max,
        "budget_used": int(getattr(policy, "budget_used", 0)),
        "provenance": {
            "agent": agent_name, "agent_config": agent_config, "budget": None if budget is None else int(budget),
            "seed": None if seed is None else int(seed), "table_checksum": identity.table_checksum,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "iapo_gym": __version__,
        },
        "info": _jsonable(getattr(policy, "info", {}) or {}),
    }
    doc["checksum"] = hashlib.sha256(_canonical(doc)).hexdigest()
    _atomic_write(path, json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False).encode() + b"\n")
    return path


def _policy_body(policy: Any, identity: TaskIdentity, path: Path) -> tuple[str, dict[str, Any]]:
    """The kind and the kind-specific part of the document (writes side files)."""
    from iapo_gym.agents.base import StochasticPolicy, TablePolicy

    n_arms = len(identity.prompts) * identity.n_max
    if isinstance(policy, TablePolicy):
        arms = np.asarray(policy.arms, dtype=np.int64)
        if arms.size and (arms.min() < 0 or arms.max() >= n_arms):
            raise ValueError(f"the policy's arms must lie in 0..{n_arms - 1} for this task")
        doc = PolicyDocument("table", identity)
        rows = [{"context": name, **doc.arm_label(a)} for name, a in zip(policy.contexts.names, arms, strict=True)]
        return "table", {"contexts": policy.contexts.to_json(), "arms": rows}
    if isinstance(policy, StochasticPolicy):
        probs = np.asarray(policy.probs, dtype=np.float64)
        if probs.shape[1] != n_arms:
            raise ValueError(f"the policy is over {probs.shape[1]} arms; the task has {n_arms}")
        return "stochastic", {"contexts": policy.contexts.to_json(), "probs": probs.tolist(), "seed": int(policy.seed)}
    cls = type(policy).__name__
    if cls == "NeuralPolicy":
        arrays: dict[str, Any] = {k: np.asarray(getattr(policy, k)) for k in _NEURAL_ARRAYS}
        side = _side_path(path, ".weights.npz")
        fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".npz", dir=side.parent)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            digest = _file_sha256(Path(tmp))
            os.replace(tmp, side)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return "neural", {"weights": {"file": side.name, "sha256": digest,
                                      "arrays": {k: list(v.shape) for k, v in arrays.items()}},
                          "scale": float(policy.scale)}
    if cls == "ModelPolicy":
        side = _side_path(path, ".sb3.zip")
        fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".zip", dir=side.parent)
        os.close(fd)
        try:
            policy.model.save(tmp)
            digest = _file_sha256(Path(tmp))
            os.replace(tmp, side)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return "sb3", {"model": {"file": side.name, "sha256": digest}, "algo": str(policy.algo), "n_arms": int(policy.n_arms)}
    raise TypeError(f"cannot save a {cls}: saving covers TablePolicy, StochasticPolicy, NeuralPolicy and ModelPolicy")


def read_document(path: str | Path) -> dict[str, Any]:
    """The parsed, verified document at ``path`` (format, version and checksum checked)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no policy document at {path}; save one with policy.save(path, task=...)") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFormatError(f"{path} is not a policy document (invalid JSON: {exc}); the file is left as it is") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PolicyFormatError(f"{path} is not an iapo-gym policy document (no \"format\": \"{FORMAT}\")")
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PolicyFormatError(f"{path}: format_version must be a positive integer; got {version!r}")
    if version > FORMAT_VERSION:
        raise PolicyFormatError(
            f"{path} has format_version {version}; this iapo-gym reads up to {FORMAT_VERSION}: upgrade iapo-gym"
        )
    stored = doc.pop("checksum", None)
    if stored != hashlib.sha256(_canonical(doc)).hexdigest():
        raise PolicyFormatError(
            f"{path} is damaged or was edited (checksum mismatch); it is left as it is: save the policy again"
        )
    doc["checksum"] = stored
    if doc.get("kind") not in KINDS:
        raise PolicyFormatError(f"{path}: unknown policy kind {doc.get('kind')!r}; one of {KINDS}")
    return doc


def _side_file(path: Path, entry: dict[str, Any]) -> Path:
    side = path.parent / Path(entry["file"]).name  # only beside the document, never elsewhere
    if not side.is_file():
        raise PolicyFormatError(f"{path} needs {side.name} beside it; copy it along with the document")
    if _file_sha256(side) != entry["sha256"]:
        raise PolicyFormatError(f"{side} does not match the sha256 recorded in {path.name}; it is left as it is")
    return side


def load_policy(path: str | Path, spec: Any = None) -> Any:
    """Read a policy saved with ``policy.save``; the document is attached as ``policy.deployment``.

    Args:
        path: the ``.json`` document.
        spec: a ``TaskSpec`` (or a spec name/path) to deploy with: refused with
            :class:`PolicyMismatchError` unless its task fingerprint and sampling match.

    Raises:
        PolicyFormatError: not a policy document, a newer format version, damaged, side file missing.
        PolicyMismatchError: ``spec`` is another task.
    """
    path = Path(path)
    doc = read_document(path)
    identity = TaskIdentity.from_json(doc["task"])
    n_max = int(doc["n_max"])
    body = doc["policy"]
    kwargs: dict[str, Any] = {"budget_used": int(doc.get("budget_used", 0)), "info": dict(doc.get("info") or {})}
    kind = doc["kind"]
    if kind == "table":
        from iapo_gym.agents.base import TablePolicy

        arms = []
        for row in body["arms"]:
            p, n = divmod(int(row["arm"]), n_max)
            if (p, n + 1) != (int(row["prompt"]), int(row["n"])) or identity.prompts[p] != row["prompt_sha256"]:
                raise PolicyFormatError(f"{path}: arm {row} disagrees with its prompt, N or prompt fingerprint")
            arms.append(int(row["arm"]))
        policy: Any = TablePolicy(ContextSet.from_json(body["contexts"]), np.asarray(arms, dtype=np.int64), n_max, **kwargs)
    elif kind == "stochastic":
        from iapo_gym.agents.base import StochasticPolicy

        policy = StochasticPolicy(ContextSet.from_json(body["contexts"]), np.asarray(body["probs"], dtype=np.float64),
                                  n_max, seed=int(body["seed"]), **kwargs)
    elif kind == "neural":
        from iapo_gym.agents.neural import NeuralPolicy

        side = _side_file(path, body["weights"])
        with np.load(side, allow_pickle=False) as z:
            arrays: dict[str, Any] = {k: np.array(z[k]) for k in _NEURAL_ARRAYS}
        policy = NeuralPolicy(**{k: arrays[k] for k in _NEURAL_ARRAYS if k != "candidates"},
                              candidates=arrays["candidates"].astype(bool), scale=float(body["scale"]), n_max=n_max,
                              **kwargs)
    else:
        from iapo_gym.agents.sb3 import ModelPolicy, _algorithm_class

        side = _side_file(path, body["model"])
        model = _algorithm_class(body["algo"]).load(str(side), device="cpu")
        policy = ModelPolicy(model, body["algo"], int(body["n_arms"]), n_max, **kwargs)
    policy.deployment = PolicyDocument(kind, identity, dict(doc.get("provenance") or {}), path)
    if spec is not None:
        if isinstance(spec, str | Path):
            from iapo_gym.live.specs import load_spec

            spec = load_spec(spec)
        identity.check_spec(spec)
    return policy


def deployment_of(policy: Any, table: Any = None) -> PolicyDocument:
    """The deployment document of ``policy``: the one it was loaded with, else built from ``table``."""
    doc = getattr(policy, "deployment", None)
    if isinstance(doc, PolicyDocument):
        return doc
    if table is None:
        raise ValueError(
            "this policy carries no task identity: load it with iapo_gym.load_policy, or pass the table "
            "(or env) it was learnt on as table="
        )
    return PolicyDocument(_kind_of(policy), TaskIdentity.from_table(_table_of(table)))


def _kind_of(policy: Any) -> str:
    from iapo_gym.agents.base import StochasticPolicy, TablePolicy

    if isinstance(policy, TablePolicy):
        return "table"
    if isinstance(policy, StochasticPolicy):
        return "stochastic"
    return {"NeuralPolicy": "neural", "ModelPolicy": "sb3"}.get(type(policy).__name__, "custom")
