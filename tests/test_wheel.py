"""The package as a user installs it: a wheel, installed non-editably into a fresh virtual environment.

The wheel is built once per module (sdist first, then the wheel from the sdist, as ``python -m build``
does, so a file missing from either fails here). Each fresh environment sees this interpreter's
third-party packages through a ``.pth`` file that lists their site-packages directories: Python adds
those directories to ``sys.path`` *without* processing their own ``.pth`` files, so the development
checkout's editable ``iapo_gym`` (an import hook installed by such a file) does not leak in; every
check asserts that ``iapo_gym`` is imported from the fresh environment. Commands run from a temporary
directory outside the checkout.

The coexistence check with OpenAI's Agents SDK (``openai-agents``, top-level package ``agents``)
installs it from the package registry and is skipped, with the reason, when the registry is
unreachable.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import iapo_gym

REPO = Path(__file__).resolve().parents[1]
MATH_PICKLE = REPO.parent / "shared" / "data" / "published" / "MATH_final.pkl"
# Ids whose tables the wheel ships or generates: they must be made in any fresh environment.
ALWAYS_MADE = {"IAPO-SynthBernoulli-v0", "IAPO-SynthCategorical-v0", "IAPO-SmolArith-v0"}


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def _setuptools_can_build() -> bool:
    """Whether this interpreter's setuptools is new enough for pyproject.toml (then no download is needed)."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked plus untracked-not-ignored) copied to ``dest``: no stale build/ leaks in."""
    import shutil

    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True, timeout=60,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy all but the usual clutter
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv*", "build", "dist", "*.egg-info", "__pycache__",
                                                                  ".git", "runs", ".mypy_cache", ".pytest_cache"))
        return dest
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not shipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``iapo_gym-<version>-py3-none-any.whl``, built from an sdist of the checkout."""
    pytest.importorskip("build", reason="the wheel test needs the `build` package (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    cmd = [sys.executable, "-m", "build", "--outdir", str(tmp / "dist")]
    if _setuptools_can_build():
        cmd.append("--no-isolation")
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        log = proc.stdout[-3000:] + proc.stderr[-3000:]
        if "--no-isolation" not in cmd and ("Could not find a version" in log or "No matching distribution" in log):
            pytest.skip("setuptools>=77 is not installed here and the package registry is unreachable to fetch it")
        raise AssertionError(f"building the wheel failed:\n{log}")
    (whl,) = (tmp / "dist").glob("iapo_gym-*.whl")
    return whl


def _fresh_env(root: Path) -> Path:
    """A new virtual environment whose only route to third-party packages is a ``.pth`` file; its python."""
    venv.EnvBuilder(with_pip=False, clear=True).create(root)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip()
    deps = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    Path(site, "_iapo_test_deps.pth").write_text("\n".join(deps) + "\n")
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", MPLBACKEND="Agg", **extra)
    return env


def _pip(python: Path, *args: str, cwd: Path, timeout: float = 300) -> str:
    return _run([str(python), "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd, env=_clean_env(), timeout=timeout)


def test_wheel_holds_only_the_project_and_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"iapo_gym", f"iapo_gym-{iapo_gym.__version__}.dist-info"}, sorted(top)  # no top-level `agents`
    # Every module of the package and the zoo, under its import name.
    for folder, package in (("iapo_gym", "iapo_gym"), ("agents", "iapo_gym/agents"), ("envs_data", "iapo_gym/envs_data")):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).as_posix()
            assert f"{package}/{rel}" in names, f"{folder}/{rel} is not in the wheel"
    # Package data: the specs, the shipped table, sample queries, the typing markers.
    for path in (REPO / "envs_data").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".npz"):
            rel = path.relative_to(REPO / "envs_data").as_posix()
            assert f"iapo_gym/envs_data/{rel}" in names, f"envs_data/{rel} is not in the wheel"
    for package in ("iapo_gym", "iapo_gym/agents"):
        assert f"{package}/py.typed" in names
    meta = zipfile.ZipFile(wheel).read(f"iapo_gym-{iapo_gym.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in meta and "Requires-Dist: torch" in meta
    assert not any(line.startswith("Requires-Dist: torch") and "extra ==" not in line for line in meta.splitlines())
    entry = zipfile.ZipFile(wheel).read(f"iapo_gym-{iapo_gym.__version__}.dist-info/entry_points.txt").decode()
    assert "iapo-gym = iapo_gym.cli:main" in entry


CHECK = r"""
import json, sys
import gymnasium as gym
import iapo_gym
from iapo_gym.live.specs import load_spec
from iapo_gym.tables.store import TableNotFoundError
import iapo_gym.agents as zoo

made, missing = {}, {}
for env_id in sorted(k for k in gym.registry if k.startswith("IAPO-")):
    try:
        env = gym.make(env_id, budget=500)
    except TableNotFoundError as exc:
        missing[env_id] = str(exc).splitlines()[0]
        continue
    obs, info = env.reset(seed=0)
    env.step(0)
    u = env.unwrapped
    made[env_id] = {"prompts": u.n_prompts, "n_max": u.n_max, "train": len(u.train_queries),
                    "test": len(u.test_queries), "spent": int(u.ledger.spent)}
specs = {}
for name in ("smolarith", "math", "commonsenseqa", "helpful_harmless", "summarization"):
    s = load_spec(name)
    specs[name] = {"task": s.task, "prompts": len(s.prompts), "path": str(s.path)}
print(json.dumps({"iapo_gym": iapo_gym.__file__, "zoo": zoo.__file__, "version": iapo_gym.__version__,
                  "agents": sorted(zoo.AGENTS), "made": made, "missing": missing, "specs": specs,
                  "editable_finder": [type(f).__name__ for f in sys.meta_path if "editable" in repr(f).lower()]}))
"""


def test_installed_wheel_makes_every_env_trains_and_loads_specs(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_env(tmp_path / "venv")
    _pip(python, "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    work = tmp_path / "elsewhere"  # outside the checkout
    work.mkdir()
    data = tmp_path / "data"
    env = _clean_env(IAPO_GYM_DATA=str(data))
    cli = str(Path(python).with_name("iapo-gym"))

    assert _run([cli, "--version"], cwd=work, env=env).strip() == f"iapo-gym {iapo_gym.__version__}"
    expect = set(ALWAYS_MADE)
    if MATH_PICKLE.exists():  # the paper's released table, imported through the installed CLI
        _run([cli, "data", "import", str(MATH_PICKLE)], cwd=work, env=env)
        expect.add("IAPO-MATH-v0")
    else:
        print(f"IAPO-MATH-v0 not made: the released table is not at {MATH_PICKLE} (../shared is absent)")

    report = json.loads(_run([str(python), "-c", CHECK], cwd=work, env=env).strip().splitlines()[-1])
    venv_root = (tmp_path / "venv").resolve()
    assert Path(report["iapo_gym"]).resolve().is_relative_to(venv_root), report["iapo_gym"]
    assert Path(report["zoo"]).resolve().is_relative_to(venv_root), report["zoo"]
    assert not report["editable_finder"], "the checkout's editable install leaked into the fresh environment"
    assert report["version"] == iapo_gym.__version__
    assert set(report["made"]) == expect, report["missing"]
    # Every other registered id is a released table this environment has not imported: a clear error.
    assert all("iapo-gym data" in why for why in report["missing"].values()), report["missing"]
    smol = report["made"]["IAPO-SmolArith-v0"]
    assert (smol["prompts"], smol["train"] + smol["test"], smol["spent"]) == (6, 24, 1)  # arm 0 pulls N = 1
    if "IAPO-MATH-v0" in expect:
        assert report["made"]["IAPO-MATH-v0"]["prompts"] == 25
        assert report["made"]["IAPO-MATH-v0"]["train"] + report["made"]["IAPO-MATH-v0"]["test"] == 316
    assert {"psst", "topk4", "uniform", "ucb", "random"} <= set(report["agents"])
    for name, spec in report["specs"].items():
        assert Path(spec["path"]).resolve().is_relative_to(venv_root), f"spec {name} read from {spec['path']}"
    assert report["specs"]["smolarith"]["task"] == "SmolArith" and report["specs"]["smolarith"]["prompts"] == 6
    print("made:", sorted(report["made"]), "| missing:", sorted(report["missing"]))

    out = work / "run"
    _run([cli, "train", "--env", "IAPO-SmolArith-v0", "--agents", "psst", "--budgets", "300", "--runs", "3",
          "--out", str(out), "--no-progress"], cwd=work, env=env, timeout=300)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["env"], r["agent"], int(r["budget"]), int(r["seed"])) for r in rows] == [
        ("IAPO-SmolArith-v0", "psst", 300, s) for s in range(3)
    ]
    for r in rows:
        acr, oracle, regret = float(r["acr"]), float(r["oracle_acr"]), float(r["regret"])
        assert 0 < int(r["budget_used"]) <= 300
        assert acr <= oracle + 1e-9 and abs(oracle - acr - regret) < 1e-9
    assert (out / "acr_vs_budget.png").stat().st_size > 0 and any((out / "tb").rglob("events.out.tfevents.*"))
    print(
        "runner (seed, used, acr, oracle):",
        [(r["seed"], r["budget_used"], r["acr"][:6], r["oracle_acr"][:6]) for r in rows],
    )


# --------------------------------------------------------------------------- next to openai-agents
@pytest.fixture(scope="module")
def openai_agents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheelhouse with openai-agents and its dependencies from the package registry (CI has one).

    Downloaded once, so each install order installs offline from it; skipped when the registry is
    unreachable.
    """
    house = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(house), "openai-agents"],
        capture_output=True, text=True, timeout=300, env=_clean_env(),
    )
    if proc.returncode != 0 or not list(house.glob("openai_agents-*.whl")):
        pytest.skip(f"the package registry is unreachable (pip download openai-agents: {proc.stderr.strip()[-200:]})")
    return house


BOTH = r"""
import json, agents, iapo_gym.agents as zoo
from agents import Runner, Agent
print(json.dumps({"agents": agents.__file__, "Runner": Runner.__module__, "zoo": zoo.__file__, "psst": "psst" in zoo.AGENTS}))
"""
OPENAI_ONLY = "import agents; from agents import Runner; print(agents.__file__, Runner.__module__)"
ZOO_ONLY = r"""
import importlib.util, json, iapo_gym.agents as zoo
print(json.dumps({"zoo": zoo.__file__, "psst": "psst" in zoo.AGENTS, "agents": repr(importlib.util.find_spec("agents"))}))
"""


@pytest.mark.parametrize("first", ["openai-agents", "iapo-gym"])
def test_coexists_with_openai_agents_in_either_install_order(
    first: str, wheel: Path, openai_agents: Path, tmp_path: Path
) -> None:
    python = _fresh_env(tmp_path / "venv")
    work = tmp_path / "elsewhere"
    work.mkdir()
    ours = ["install", "--no-deps", "--no-index", str(wheel)]
    theirs = ["install", "--no-index", "--find-links", str(openai_agents), "openai-agents"]
    for args in (theirs, ours) if first == "openai-agents" else (ours, theirs):
        _pip(python, *args, cwd=work, timeout=600)
    env = _clean_env()
    site = (tmp_path / "venv").resolve()

    both = json.loads(_run([str(python), "-c", BOTH], cwd=work, env=env).strip().splitlines()[-1])
    assert Path(both["agents"]).resolve().is_relative_to(site)
    assert Path(both["agents"]).parts[-2:] == ("agents", "__init__.py")
    assert both["Runner"].startswith("agents.")  # OpenAI's Runner, from OpenAI's package
    assert Path(both["zoo"]).resolve().is_relative_to(site) and both["psst"]

    # Uninstalling the one installed last leaves the other whole.
    if first == "openai-agents":
        _pip(python, "uninstall", "-y", "iapo-gym", cwd=work)
        out = _run([str(python), "-c", OPENAI_ONLY], cwd=work, env=env)
        assert "agents." in out.split()[-1]
        gone = subprocess.run([str(python), "-c", "import iapo_gym"], cwd=work, env=env, capture_output=True, text=True)
        assert gone.returncode != 0 and "No module named 'iapo_gym'" in gone.stderr
    else:
        _pip(python, "uninstall", "-y", "openai-agents", cwd=work)
        out = _run([str(python), "-c", ZOO_ONLY], cwd=work, env=env)
        zoo = json.loads(out.strip().splitlines()[-1])
        assert zoo["agents"] == "None", out  # no top-level `agents` left behind by either package
        assert Path(zoo["zoo"]).resolve().is_relative_to(site) and zoo["psst"]
    print(f"{first} first: both import ({both['agents']}, {both['zoo']}); after uninstalling the other: {out.strip()}")
