"""Every code snippet of README.md and docs/*.md runs as a test (in a subprocess, in a scratch directory).

Marker convention: an HTML comment on the line right above a fenced block says what to do with it.

* ``python`` blocks run by default; ``bash``/``sh``/``console`` blocks run only when marked ``run``.
* ``<!-- snippet: skip REASON -->``: not run; the test is skipped with REASON (needs hours, a GPU,
  a network, a server...). Every skip must give a reason.
* ``<!-- snippet: run -->``: run this shell block (cheap commands only; ``python`` and ``iapo-gym``
  resolve to this interpreter's environment, ``train.py`` / ``scripts/`` / ``benchmarks/`` to the
  checkout).
* ``<!-- snippet: needs-math -->``: needs the paper's MATH table; it is imported into a scratch
  data directory from ``../shared/data`` and the test is skipped when that is absent.
* ``<!-- snippet: continues -->``: a python block that continues the previous python block of
  the same page (both run together).
* ``<!-- snippet: file=NAME -->``: the block is a file the reader creates (e.g. ``my_agent.py``);
  it is written into the page's scratch directory before every later block of the page runs.

Directives combine: ``<!-- snippet: run needs-math -->``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
MARK = re.compile(r"^<!--\s*snippet:\s*(.*?)\s*-->\s*$")
SHELL = {"bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Snippet:
    """One fenced block of a page and its marker."""

    page: Path
    line: int
    lang: str
    code: str
    marker: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO).as_posix()}:{self.line}"

    def has(self, word: str) -> bool:
        return word in self.marker.split()

    @property
    def file(self) -> str | None:
        m = re.search(r"\bfile=(\S+)", self.marker)
        return m.group(1) if m else None

    @property
    def skip_reason(self) -> str | None:
        m = re.match(r"skip\b\s*(.*)", self.marker)
        return m.group(1).strip() if m else None


def snippets(page: Path) -> list[Snippet]:
    """The fenced blocks of ``page`` (language, code, the marker line above it)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.match(prev.strip())
        out.append(Snippet(page, i + 1, m.group(1).lower(), "\n".join(lines[i + 1:j]) + "\n", mark.group(1) if mark else ""))
        i = j + 1
    return out


ALL = [s for page in PAGES for s in snippets(page) if s.lang == "python" or s.lang in SHELL]


def test_snippets_are_found_and_skips_give_reasons() -> None:
    assert len([s for s in ALL if s.lang == "python"]) >= 6
    for s in ALL:
        if s.skip_reason is not None:
            assert s.skip_reason, f"{s.id}: '<!-- snippet: skip -->' needs a reason"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch directory that looks like the checkout's root to the snippets."""
    for name in ("train.py", "scripts", "benchmarks", "envs_data"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def _env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["IAPO_GYM_DATA"] = str(data_dir)
    env["MPLBACKEND"] = "Agg"
    return env


def _program(s: Snippet) -> str:
    if not s.has("continues"):
        return s.code
    page = snippets(s.page)
    chain = [s]
    idx = page.index(s)
    for prev in reversed(page[:idx]):
        if prev.lang == "python" and prev.file is None:
            chain.insert(0, prev)
            if not prev.has("continues"):
                break
    return "\n".join(c.code for c in chain)


@pytest.mark.parametrize("snippet", ALL, ids=[s.id for s in ALL])
def test_snippet_runs(snippet: Snippet, workdir: Path, request: pytest.FixtureRequest) -> None:
    if snippet.skip_reason is not None:
        pytest.skip(f"{snippet.id}: {snippet.skip_reason}")
    if snippet.file:
        if snippet.lang != "python":
            pytest.skip(f"{snippet.id}: a file the reader writes ({snippet.file}); used by the page's later blocks")
    elif snippet.lang in SHELL and not snippet.has("run"):
        pytest.skip(f"{snippet.id}: shell block not marked '<!-- snippet: run -->' (mark it if it is cheap)")
    data = request.getfixturevalue("math_data_dir") if snippet.has("needs-math") else workdir / "data"
    for earlier in snippets(snippet.page):
        if earlier.line >= snippet.line:
            break
        if earlier.file:
            (workdir / earlier.file).write_text(earlier.code)
    if snippet.lang == "python":
        script = workdir / ("_snippet.py" if not snippet.file else snippet.file)
        script.write_text(_program(snippet))
        cmd = [sys.executable, script.name]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", snippet.code]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(data), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{snippet.id} failed ({shlex.join(cmd[:2])}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
        "(mark a snippet that cannot run here with '<!-- snippet: skip REASON -->'; see this module's docstring)"
    )
