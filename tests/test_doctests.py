"""Every ``>>>`` example in the package's docstrings runs (and its shown output matches).

The modules are found by their import names (``pkgutil.walk_packages`` over ``iapo_gym``), so the
zoo's examples run as ``iapo_gym.agents`` -- the name users import -- rather than as the top-level
folder ``agents/`` that ``pytest --doctest-modules`` would collect.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


# Packages whose folders live outside iapo_gym/ in the checkout ([tool.setuptools.package-dir]); an
# editable install maps them with an import hook, so a walk of iapo_gym.__path__ alone misses them.
MAPPED = ("iapo_gym.agents", "iapo_gym.envs_data")


def _modules() -> list[str]:
    names = {"iapo_gym", *MAPPED}
    for package in ("iapo_gym", *MAPPED):
        path = importlib.import_module(package).__path__
        names.update(m.name for m in pkgutil.walk_packages(path, prefix=f"{package}."))
    return sorted(names)


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    return [t for t in tests if t.examples and getattr(t, "filename", None) == getattr(module, "__file__", None)]


MODULES = _modules()


def test_the_walk_finds_the_zoo_and_the_examples() -> None:
    assert {"iapo_gym.agents", "iapo_gym.agents.testing", "iapo_gym.experiments.results"} <= set(MODULES)
    with_examples = [name for name in MODULES if _examples(name)]
    assert {"iapo_gym.agents", "iapo_gym.experiments.cliargs", "iapo_gym.tables.testing"} <= set(with_examples)


@pytest.mark.parametrize("name", [m for m in MODULES if _examples(m)])
def test_docstring_examples_run(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in _examples(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (report above)"
