"""The data directory, named tables, import and pull (against a local HTTP server)."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from iapo_gym.tables.io import save_table
from iapo_gym.tables.store import (
    TableNotFoundError,
    data_dir,
    import_file,
    list_tables,
    load_named,
    pull,
    release_url,
    table_path,
)
from iapo_gym.tables.testing import assert_tables_equal, example_table


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("IAPO_GYM_DATA", str(root))
    return root


def test_data_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IAPO_GYM_DATA", str(tmp_path / "x"))
    assert data_dir() == tmp_path / "x"
    assert table_path("MATH") == tmp_path / "x" / "MATH"
    monkeypatch.delenv("IAPO_GYM_DATA")
    import platformdirs

    assert data_dir() == Path(platformdirs.user_cache_dir("iapo-gym"))
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="invalid table name"):
            table_path(bad)


def test_missing_table_names_both_commands(data: Path) -> None:
    assert list_tables() == []
    with pytest.raises(TableNotFoundError) as info:
        load_named("MATH")
    msg = str(info.value)
    assert "iapo-gym data pull MATH" in msg and "iapo-gym data import FILE" in msg and str(data) in msg
    assert isinstance(info.value, FileNotFoundError)


def test_import_release_file(data: Path, math_pickle: Path) -> None:
    paths = import_file(math_pickle)
    assert paths == [data / "MATH"]
    assert list_tables() == ["MATH"]
    table = load_named("MATH")
    assert (table.n_prompts, table.n_queries) == (25, 316)
    assert table.provenance["matches_release"] is True
    with pytest.raises(FileExistsError, match="--force"):
        import_file(math_pickle)
    import_file(math_pickle, name="math-copy")
    assert list_tables() == ["MATH", "math-copy"]


def test_import_table_directory(data: Path, tmp_path: Path) -> None:
    table = example_table("bon", seed=2)
    src = save_table(table, tmp_path / "mine")
    assert import_file(src) == [data / "mine"]
    assert_tables_equal(table, load_named("mine"))


def test_multi_env_file_naming(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A released file with several envs becomes <name>, <name>-1, ..."""
    import pickle
    import sys
    import types

    mod = types.ModuleType("Envs.catMV.catMV")

    class CategoricalMVEnv:
        pass

    CategoricalMVEnv.__module__, CategoricalMVEnv.__qualname__ = mod.__name__, "CategoricalMVEnv"
    mod.CategoricalMVEnv = CategoricalMVEnv
    for name in ("Envs", "Envs.catMV"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    envs = []
    for s in range(3):
        rng = np.random.default_rng(s)
        env = CategoricalMVEnv()
        env.__dict__.update(
            cat_probs=rng.dirichlet(np.ones(3), size=(2, 5)),
            answers=rng.integers(0, 3, 5),
            cat_probs_te=rng.dirichlet(np.ones(3), size=(2, 2)),
            answers_te=rng.integers(0, 3, 2),
            cost_per_prompt=np.array([0.1, 0.2 + s]),
            cost_coeffs={"low": 0.0, "mid": 0.2, "high": 1.0},
            context_distribution=np.array([0.2, 0.3, 0.5]),
            N_max=4,
        )
        envs.append(env)
    path = tmp_path / "Toy_final.pkl"
    path.write_bytes(pickle.dumps(envs))
    assert import_file(path, allow_modified=True) == [data / "Toy-modified", data / "Toy-modified-1", data / "Toy-modified-2"]
    assert load_named("Toy-modified-2").cost[1, 0] == pytest.approx(2.2)
    np.testing.assert_allclose(load_named("Toy-modified").contexts.probs, [0.2, 0.3, 0.5])
    assert import_file(path, name="Toy", allow_modified=True, overwrite=True) == [data / "Toy", data / "Toy-1", data / "Toy-2"]
    assert load_named("Toy-1").provenance["modified"] is True


# ----------------------------------------------------------------------------- pull
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def serve():
    """Serve a directory on 127.0.0.1; yields a function dir -> base URL."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_pull_verifies_and_imports(data: Path, math_pickle: Path, tmp_path: Path, serve, monkeypatch) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "MATH_final.pkl").write_bytes(math_pickle.read_bytes())
    monkeypatch.setenv("IAPO_GYM_RELEASE_URL", serve(srv) + "/")
    assert release_url().startswith("http://127.0.0.1:") and not release_url().endswith("/")
    assert pull("math") == [data / "MATH"]
    table = load_named("MATH")
    assert table.provenance["source_git_blob"] == "50a3f35a26c689c611f92a32248624c7e9bcc302"
    assert (table.n_prompts, table.n_queries, table.n_outcomes) == (25, 316, 5)
    with pytest.raises(FileExistsError):
        pull("MATH")
    assert pull("MATH", overwrite=True) == [data / "MATH"]


def test_pull_refuses_corrupted_download(data: Path, math_pickle: Path, tmp_path: Path, serve, monkeypatch) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    corrupted = bytearray(math_pickle.read_bytes())
    corrupted[1000] ^= 0xFF  # one flipped byte inside an array
    (srv / "MATH_final.pkl").write_bytes(bytes(corrupted))
    monkeypatch.setenv("IAPO_GYM_RELEASE_URL", serve(srv))
    with pytest.raises(RuntimeError, match="not the released MATH_final.pkl: git blob id .* nothing was written"):
        pull("MATH")
    assert not data.exists() or os.listdir(data) == []
    with pytest.raises(RuntimeError, match="HTTP 404"):  # a file the server lacks
        pull("CQA")
    assert not data.exists() or os.listdir(data) == []


def test_pull_offline_message(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("IAPO_GYM_RELEASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(RuntimeError) as info:
        pull("HelpfulHarmless", timeout=5)
    msg = str(info.value)
    assert f"127.0.0.1:{port}/HH_final.pkl" in msg
    assert "offline" in msg and "iapo-gym data import FILE" in msg
    assert not data.exists()


def test_pull_unknown_task(data: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'Chess'; pull one of MATH, CommonsenseQA"):
        pull("Chess")
