"""``iapo-gym data ...`` through the real dispatcher."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from iapo_gym.cli import main
from iapo_gym.tables.io import save_table
from iapo_gym.tables.testing import example_table


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("IAPO_GYM_DATA", str(root))
    return root


def test_path_and_empty_list(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(data)
    assert main(["data", "path", "MATH"]) == 0
    assert capsys.readouterr().out.strip() == str(data / "MATH")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert str(data) in out and "iapo-gym data pull TASK" in out


def test_import_list_check(data: Path, math_pickle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "import", str(math_pickle)]) == 0
    assert capsys.readouterr().out.strip() == f"imported {data / 'MATH'}"
    assert main(["data", "import", str(math_pickle), "--name", "m2"]) == 0
    capsys.readouterr()
    assert main(["data", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    math_row = next(r for r in rows if r.startswith("MATH "))
    assert math_row.split() == ["MATH", "MATH", "mv", "25", "316", "3", "32", "release"]
    assert any(r.startswith("m2 ") for r in rows)
    assert main(["data", "check", "MATH"]) == 0
    assert "ok:" in capsys.readouterr().out
    # importing again without --force fails with a clear message and exit status 2
    assert main(["data", "import", str(math_pickle)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["data", "import", str(math_pickle), "--force"]) == 0


def test_check_directory_and_invalid_list_entry(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_table(example_table("bon"), tmp_path / "mine")
    assert main(["data", "check", str(path)]) == 0
    assert "Example-bon" in capsys.readouterr().out
    broken = save_table(example_table("mv"), data / "broken")
    (broken / "manifest.json").write_text("{")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "invalid: manifest.json: malformed JSON" in out
    assert main(["data", "check", "broken"]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert main(["data", "check", "nothing-here"]) == 2


def test_errors_reach_the_user(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    assert main(["data", "import", str(tmp_path / "missing.pkl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    assert main(["data", "import", str(evil)]) == 2
    assert "evil.pkl: not a file of the IAPO paper's release" in capsys.readouterr().err
    assert main(["data", "import", str(evil), "--allow-modified"]) == 2
    assert "refused global os.system" in capsys.readouterr().err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("IAPO_GYM_RELEASE_URL", f"http://127.0.0.1:{port}")
    assert main(["data", "pull", "MATH", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iapo-gym data: error:") and "iapo-gym data import FILE" in err
