"""A command line from a dataclass whose field docstrings are the help (as CleanRL's ``Args``).

>>> from dataclasses import dataclass
>>> from iapo_gym.experiments.cliargs import parse_dataclass
>>> @dataclass
... class Args:
...     runs: int = 20
...     \"\"\"independent runs (seeds) per configuration\"\"\"
>>> parse_dataclass(Args, ["--runs", "5"])
Args(runs=5)

Each field becomes ``--field-name`` (underscores to dashes). ``bool`` fields become
``--flag / --no-flag``. A field's help is the string literal right below it in the class body.
An option given twice is an error naming it (argparse would silently keep the last one, so
``--agent-args a:k=1 --agent-args b:k=2`` would drop ``a``'s settings).
:func:`explicit_fields` tells which options the user actually typed, so presets can fill the rest.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["field_docs", "build_parser", "parse_dataclass", "explicit_fields"]


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal after each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_of(f: dataclasses.Field, cls: type) -> type:
    hints = {}
    try:
        import typing

        hints = typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - unresolvable annotations fall back to str
        pass
    t = hints.get(f.name, str)
    return t if t in (int, float, bool, str) else str


def _refuse_repeat(parser: argparse.ArgumentParser, namespace: argparse.Namespace, dest: str, option: str) -> None:
    if dest in vars(namespace):  # defaults are suppressed: present only once the user gave it
        parser.error(
            f"{option} given more than once (only the last would count); give it once: an option that takes "
            "several values takes them in one argument, as its --help shows"
        )


class _Once(argparse.Action):
    """Store a value; refuse a second occurrence of the option."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        _refuse_repeat(parser, namespace, self.dest, " / ".join(self.option_strings))
        setattr(namespace, self.dest, values)


class _FlagOnce(argparse.BooleanOptionalAction):
    """``--flag / --no-flag``; refuse a second occurrence (``--track --no-track``)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        _refuse_repeat(parser, namespace, self.dest, " / ".join(self.option_strings))
        super().__call__(parser, namespace, values, option_string)


def build_parser(
    cls: type, prog: str | None = None, description: str | None = None, epilog: str | None = None
) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` with one option per field of dataclass ``cls``.

    Defaults are suppressed in the namespace (see :func:`explicit_fields`); the help shows them. An
    option given twice is an error naming it, not a silent override.
    """
    docs = field_docs(cls)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in dataclasses.fields(cls):
        typ = _type_of(f, cls)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default!r})"
        flag = "--" + f.name.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, dest=f.name, action=_FlagOnce, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=typ, metavar=typ.__name__.upper(), action=_Once, help=help_text)
    return parser


def explicit_fields(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """The options present on the command line, as ``{field: value}``."""
    return dict(vars(parser.parse_args(argv)))


def parse_dataclass(cls: type[T], argv: Sequence[str] | None = None, **parser_kwargs: Any) -> T:
    """Parse ``argv`` into an instance of ``cls`` (fields not given keep their defaults)."""
    parser = build_parser(cls, **parser_kwargs)
    return cls(**explicit_fields(parser, argv))
