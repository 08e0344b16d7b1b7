"""Type-check the package as it installs: ``python scripts/typecheck.py [mypy options]``.

The zoo lives in the top-level ``agents/`` folder but imports as ``iapo_gym.agents`` (and
``envs_data/`` as ``iapo_gym.envs_data``) through ``[tool.setuptools.package-dir]``. An editable
install maps those names with an import hook that mypy does not follow, so mypy run on the checkout
cannot resolve ``iapo_gym.agents``. This script lays the packages out as the wheel does, as a tree
of links under ``build/typecheck/`` (read from the same ``[tool.setuptools]`` tables, so it cannot
drift from the wheel), runs mypy there with the ``[tool.mypy]`` settings of ``pyproject.toml``, and
prints every path relative to the checkout again (``agents/psst.py:12: error: ...``). The tree's
path is stable, so mypy's incremental cache (``.mypy_cache``) carries over between runs.

Exit status: mypy's (0 clean, 1 type errors, 2 usage or crash).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def package_dirs(pyproject: dict) -> dict[str, Path]:
    """Each package of ``[tool.setuptools] packages`` -> its source folder in the checkout."""
    setup = pyproject["tool"]["setuptools"]
    mapping = setup.get("package-dir", {})
    out = {}
    for name in setup["packages"]:
        parent, _, leaf = name.rpartition(".")
        if name in mapping:
            out[name] = ROOT / mapping[name]
        elif parent:
            out[name] = out[parent] / leaf
        else:
            out[name] = ROOT / name
    return out


def build_tree(dirs: dict[str, Path]) -> dict[Path, Path]:
    """Link every ``.py``/``.pyi``/``py.typed`` file into the wheel layout; returns tree path -> source."""
    if TREE.exists():
        shutil.rmtree(TREE)
    links: dict[Path, Path] = {}
    for name, src in dirs.items():
        dest = TREE.joinpath(*name.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.is_file() and (f.suffix in (".py", ".pyi") or f.name == "py.typed"):
                (dest / f.name).symlink_to(f)
                links[dest / f.name] = f
    return links


def main(argv: list[str]) -> int:
    """Run mypy on the wheel layout of the packages; paths in its report point into the checkout."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    links = build_tree(package_dirs(pyproject))
    top = sorted({name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]})
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--cache-dir", str(ROOT / ".mypy_cache"), *argv]
    for name in top:
        cmd += ["-p", name]
    env = dict(os.environ, MYPYPATH=str(TREE))
    proc = subprocess.run(cmd, cwd=TREE, env=env, capture_output=True, text=True)
    rel = {str(k.relative_to(TREE)): str(v.relative_to(ROOT)) for k, v in links.items()}
    for line in (proc.stdout + proc.stderr).splitlines():
        path, sep, rest = line.partition(":")
        print(f"{rel.get(path, path)}{sep}{rest}")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
