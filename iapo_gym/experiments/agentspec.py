"""Which agents an experiment runs: zoo names, import paths, entry points, hyper-parameters.

``--agents`` is a comma-separated list of ``[label=]target`` items. A *target* is

* a zoo name (``psst``, ``topk4``, ... : :data:`iapo_gym.agents.AGENTS`);
* an entry point of the group :data:`ENTRY_POINT_GROUP` (``iapo_gym.agents``) that an installed
  package declares, e.g. in its ``pyproject.toml``::

      [project.entry-points."iapo_gym.agents"]
      best_of_first_pull = "my_pkg.agents:BestOfFirstPull"

* an import path ``module:Attribute`` (``my_pkg.my_module:MyAgent``) or ``file.py:Attribute``.
  As uvicorn and gunicorn do, the current directory is put on ``sys.path`` first, so a module
  beside you imports without installing it.

The attribute is an :class:`~iapo_gym.agents.base.Agent` subclass or a factory returning an agent.
The *label* names the agent's runs in ``results.csv``, TensorBoard, figures and the Wilcoxon
tables; it defaults to the zoo or entry-point name, or to the class's ``name`` attribute (its
``__name__`` when it keeps the base class's). Give a label to run one agent twice with different
hyper-parameters: ``--agents topk4,topk4_k2=topk4 --agent-args "topk4_k2:k=2,rho=0.1"``.

``--agent-args`` is ``label:key=value,key=value[;label:...]``; values are Python literals
(``2``, ``0.1``, ``'one'``, ``[1, 2]``, ``True``); a bare word is a string. Keys and types are
checked against the agent's constructor before anything runs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentSpec",
    "AgentSpecError",
    "available_agents",
    "parse_agent_args",
    "resolve_agents",
]

#: The entry-point group third-party packages register agents under.
ENTRY_POINT_GROUP = "iapo_gym.agents"
_LABEL = re.compile(r"^[A-Za-z0-9_.+\-]+$")


class AgentSpecError(ValueError):
    """An agent that cannot be resolved or configured (the message names the fix)."""


@dataclass(frozen=True)
class AgentSpec:
    """One agent of an experiment.

    Attributes:
        label: its name in results.csv, TensorBoard, figures and tables.
        target: what the user named (zoo name, entry-point name or import path).
        source: where it was found (``zoo``, ``entry point <name> = <value>``, ``import``).
        overrides: hyper-parameters set on the command line or in the experiment file.
        factory: builds the agent from keyword overrides.
    """

    label: str
    target: str
    source: str
    overrides: dict[str, Any] = field(default_factory=dict)
    factory: Callable[..., Any] = field(default=lambda **kw: None, repr=False, compare=False)

    def build(self) -> Any:
        """A fresh agent with the overrides applied."""
        return self.factory(**self.overrides)

    def config(self) -> dict[str, Any]:
        """The built agent's hyper-parameters, JSON-normalised (what results and hparams record)."""
        agent = self.build()
        cfg = agent.config() if hasattr(agent, "config") else {}
        return json.loads(json.dumps(cfg, sort_keys=True, default=str))

    def record(self) -> dict[str, Any]:
        """``{"agent": target, "source": ..., "config": {...}}`` for the ``agent_config`` column."""
        return {"agent": self.target, "source": self.source, "config": self.config()}


# --------------------------------------------------------------------------- lookup
def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_agents() -> list[str]:
    """Zoo names, then the names installed packages register under :data:`ENTRY_POINT_GROUP`."""
    from iapo_gym.agents import AGENTS

    return list(AGENTS) + sorted(n for n in _entry_points() if n not in AGENTS)


def _import_attr(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise AgentSpecError(f"--agents: {target!r} is not an import path; write module:Attribute, e.g. my_pkg.agents:MyAgent")
    cwd = os.getcwd()
    if cwd not in sys.path:  # as uvicorn / gunicorn: modules beside the user import without installing
        sys.path.insert(0, cwd)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AgentSpecError(f"--agents {target}: no file {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except AgentSpecError:
        raise
    except ImportError as exc:
        raise AgentSpecError(
            f"--agents {target}: cannot import {module_name!r} ({exc}); install it or run from its directory"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AgentSpecError(f"--agents {target}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _as_factory(obj: Any, target: str) -> Callable[..., Any]:
    if not callable(obj):
        raise AgentSpecError(f"--agents {target}: {obj!r} is not an Agent class or a factory returning an agent")
    return obj


def _default_label(obj: Any, target: str) -> str:
    from iapo_gym.agents.base import Agent

    if inspect.isclass(obj):
        own = obj.__dict__.get("name") if isinstance(obj.__dict__.get("name"), str) else None
        if own is None:
            named = getattr(obj, "name", None)
            own = named if isinstance(named, str) and named != Agent.name else None
        return own or obj.__name__
    return getattr(obj, "__name__", target.rpartition(":")[2])


def _resolve_one(item: str) -> AgentSpec:
    from iapo_gym.agents import AGENTS

    label, sep, target = item.partition("=")
    if not sep:
        label, target = "", item
    label, target = label.strip(), target.strip()
    if not target:
        raise AgentSpecError(f"--agents: {item!r} names no agent")
    if target in AGENTS:
        spec = AgentSpec(label or target, target, "zoo", {}, AGENTS[target])
    elif ":" not in target:
        eps = _entry_points()
        if target not in eps:
            raise AgentSpecError(
                f"--agents: unknown agent(s) {target}; available: {', '.join(sorted(available_agents()))} "
                "(or an import path module:Class)"
            )
        ep = eps[target]
        try:
            obj = ep.load()
        except Exception as exc:
            raise AgentSpecError(f"--agents {target}: the entry point {ep.value!r} failed to load ({exc})") from None
        spec = AgentSpec(label or target, target, f"entry point {target} = {ep.value}", {}, _as_factory(obj, target))
    else:
        obj = _import_attr(target)
        spec = AgentSpec(label or _default_label(obj, target), target, "import", {}, _as_factory(obj, target))
    if not _LABEL.match(spec.label):
        raise AgentSpecError(
            f"--agents: label {spec.label!r} may only hold letters, digits and _ . + -; name it, e.g. mine={target}"
        )
    return spec


# --------------------------------------------------------------------------- agent-args
def _split_top(text: str, sep: str) -> Iterator[str]:
    """Split on ``sep`` outside quotes and brackets."""
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def _literal(text: str) -> Any:
    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    if low.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(low)
    except (ValueError, SyntaxError):
        return low  # a bare word: a string


def parse_agent_args(text: str) -> dict[str, dict[str, Any]]:
    """``"topk4:k=2,rho=0.1;ucb:c=0.5"`` -> ``{"topk4": {"k": 2, "rho": 0.1}, "ucb": {"c": 0.5}}``."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in _split_top(text, ";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        label, sep, body = chunk.partition(":")
        label = label.strip()
        if not sep or not label:
            raise AgentSpecError(f"--agent-args: {chunk!r} must look like label:key=value,key=value (e.g. topk4:k=2,rho=0.1)")
        params = out.setdefault(label, {})
        for pair in _split_top(body, ","):
            if not pair.strip():
                continue
            key, eq, value = pair.partition("=")
            key = key.strip()
            if not eq or not key.isidentifier():
                raise AgentSpecError(f"--agent-args {label}: {pair.strip()!r} must be key=value (e.g. k=2)")
            params[key] = _literal(value)
    return out


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """``({name: annotation}, accepts_any_keyword)`` of what ``factory`` (or the class it builds) takes."""
    if inspect.isclass(factory) and dataclasses.is_dataclass(factory):
        try:
            hints = typing.get_type_hints(factory)
        except Exception:  # unresolvable annotations: names only
            hints = {}
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(factory) if f.init}, False
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, True
    params = {n: p.annotation for n, p in sig.parameters.items() if n != "self"
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return params, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _check_type(label: str, key: str, value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation`` where that is lossless (int -> float), else an error."""
    if annotation is Any or annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return value
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise AgentSpecError(f"--agent-args {label}: {key}={value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    options = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    if value is None and type(None) in options:
        return None
    for opt in options:
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is bool and isinstance(value, bool):
            return value
        if opt is str and isinstance(value, str):
            return value
        if opt not in (int, float, bool, str):
            return value  # containers, classes, literals inside unions: the constructor checks them
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise AgentSpecError(f"--agent-args {label}: {key}={value!r} must be {names}")


def _configure(spec: AgentSpec, overrides: dict[str, Any]) -> AgentSpec:
    probe = spec.factory
    if spec.source == "zoo":  # zoo factories wrap their class: look at the class they build
        probe = type(spec.factory())
    params, any_kw = _parameters(probe)
    if not any_kw:
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise AgentSpecError(
                f"--agent-args {spec.label}: unknown hyper-parameter(s) {', '.join(unknown)}; "
                f"{spec.target} takes {', '.join(params) or 'none'}"
            )
    checked = {k: _check_type(spec.label, k, v, params.get(k, Any)) for k, v in overrides.items()}
    spec = dataclasses.replace(spec, overrides=checked)
    try:
        agent = spec.build()
    except (TypeError, ValueError) as exc:
        raise AgentSpecError(f"--agents {spec.label}: building {spec.target} failed: {exc}") from None
    from iapo_gym.agents.base import Agent

    if not isinstance(agent, Agent):
        raise AgentSpecError(
            f"--agents {spec.label}: {spec.target} built a {type(agent).__name__}, not an iapo_gym Agent "
            "(subclass iapo_gym.agents.Agent and implement fit)"
        )
    return spec


def resolve_agents(
    text: str, agent_args: str | dict[str, dict[str, Any]] = "", *, lenient: bool = False
) -> tuple[list[AgentSpec], list[str]]:
    """``--agents`` and ``--agent-args`` -> ``(specs, missing)``.

    ``lenient`` (presets) leaves unknown zoo names out and returns them in ``missing`` instead of
    raising. Everything else that is wrong raises :class:`AgentSpecError` naming the fix.
    """
    items = [t.strip() for t in _split_top(text, ",") if t.strip()]
    if items == ["all"]:
        items = available_agents()
    if not items:
        raise AgentSpecError(f"--agents is empty; available: {', '.join(sorted(available_agents()))}")
    specs: list[AgentSpec] = []
    missing: list[str] = []
    for item in items:
        try:
            specs.append(_resolve_one(item))
        except AgentSpecError:
            if lenient and ":" not in item and "=" not in item:
                missing.append(item)
                continue
            raise
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        if all(labels.count(d) == sum(1 for s in specs if s.label == d and s.target == d) for d in dupes):
            specs = list({s.label: s for s in specs}.values())  # the same zoo name twice: once
        else:
            raise AgentSpecError(f"--agents: label(s) {', '.join(dupes)} used twice; name each variant, e.g. mine2=...")
    if not specs:
        raise AgentSpecError(f"--agents names no registered agent; available: {', '.join(sorted(available_agents()))}")
    args = parse_agent_args(agent_args) if isinstance(agent_args, str) else agent_args
    by_label = {s.label: s for s in specs}
    stray = [k for k in args if k not in by_label]
    if stray:
        raise AgentSpecError(f"--agent-args: {', '.join(stray)} not among --agents ({', '.join(by_label)})")
    return [_configure(s, args.get(s.label, {})) for s in specs], missing


def labels_of(specs: Sequence[AgentSpec]) -> list[str]:
    """The labels of ``specs``, in order."""
    return [s.label for s in specs]
