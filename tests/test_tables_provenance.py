"""Provenance you can trust: corrupted or tampered release files, spoofed pickle state, MODIFIED marks."""

from __future__ import annotations

import pickle
import pickletools
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from iapo_gym.cli import main
from iapo_gym.tables.importer import (
    ReleaseMismatchError,
    TableImportError,
    import_released,
    import_released_bytes,
    is_modified,
    release_match,
    release_status,
)
from iapo_gym.tables.store import import_file, load_named


def _corrupt(data: bytes, pos: int, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    out[pos] = (out[pos] + int(rng.integers(1, 256))) % 256  # always a different byte
    return bytes(out)


def test_single_byte_corruptions_are_refused(math_pickle: Path) -> None:
    """Every single-byte corruption of MATH_final.pkl is refused; with allow_modified, each one is
    either refused with one clear error or imported and marked modified, never taken for the release."""
    data = math_pickle.read_bytes()
    assert release_match(data) == "MATH_final.pkl"
    rng = np.random.default_rng(12)
    positions = rng.choice(len(data), size=60, replace=False)
    imported = refused = 0
    for pos in positions:
        bad = _corrupt(data, int(pos), rng)
        assert release_match(bad) is None
        with pytest.raises(ReleaseMismatchError, match="MATH_final.pkl: not a file of the IAPO paper's release"):
            import_released_bytes(bad, "MATH_final.pkl")
        try:
            tables = import_released_bytes(bad, "MATH_final.pkl", allow_modified=True)
        except TableImportError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        imported += 1
        prov = tables[0].provenance
        assert prov["modified"] is True and prov["matches_release"] is False and prov["release_file"] is None
        assert release_status(prov) == "MODIFIED"
    assert imported + refused == 60 and imported > 0  # most bytes are array payload: they still parse


def _tamper(data: bytes) -> bytes:
    """Change 50 gold answers and reverse the per-prompt costs, keeping the pickle well formed."""
    out = bytearray(data)
    for op, arg, pos in pickletools.genops(data):
        if op.name == "BINBYTES" and len(arg) == 252 * 8:  # answers (train gold), int64
            start = pos + 5
            gold = np.frombuffer(arg, dtype="<i8").copy()
            gold[:50] = (gold[:50] + 1) % 5
            out[start : start + len(arg)] = gold.tobytes()
        if op.name == "SHORT_BINBYTES" and len(arg) == 25 * 8:  # cost_per_prompt, float64
            start = pos + 2
            out[start : start + len(arg)] = np.frombuffer(arg, dtype="<f8")[::-1].tobytes()
    return bytes(out)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("IAPO_GYM_DATA", str(root))
    return root


def test_hand_tampered_release_is_refused_then_marked(math_pickle: Path, data: Path, tmp_path: Path, capsys) -> None:
    original = import_released(math_pickle)
    tampered = tmp_path / "MATH_final.pkl"
    tampered.write_bytes(_tamper(math_pickle.read_bytes()))
    assert main(["data", "import", str(tampered)]) == 2
    err = capsys.readouterr().err
    assert "not a file of the IAPO paper's release" in err and "--allow-modified" in err
    assert not data.exists() or not any(data.iterdir())  # nothing written
    # a modified table may not take the release name
    assert main(["data", "import", str(tampered), "--allow-modified", "--name", "MATH"]) == 2
    assert "reserved for the verified release" in capsys.readouterr().err
    assert main(["data", "import", str(tampered), "--allow-modified"]) == 0
    assert "MATH-modified  (MODIFIED" in capsys.readouterr().out
    table = load_named("MATH-modified")
    assert (table.gold[:50] != original.gold[:50]).all() and (table.gold[50:] == original.gold[50:]).all()
    np.testing.assert_array_equal(table.cost[:, 0], original.cost[::-1, 0])
    assert is_modified(table.provenance) and table.provenance["source_class"] == "Envs.catMV.catMV.CategoricalMVEnv"
    import_file(math_pickle)
    assert main(["data", "list"]) == 0
    rows = {r.split()[0]: r.split() for r in capsys.readouterr().out.splitlines()[2:]}
    assert rows["MATH"][-1] == "release" and rows["MATH-modified"][-1] == "MODIFIED"
    # a copy of the modified table directory keeps its mark and still cannot take the release name
    with pytest.raises(ValueError, match="reserved"):
        import_file(data / "MATH-modified", name="MATH", overwrite=True)
    assert is_modified(load_named(import_file(data / "MATH-modified", name="copy")[0].name).provenance)


def test_renamed_release_is_recognised(math_pickle: Path, data: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "downloaded.pkl"
    renamed.write_bytes(math_pickle.read_bytes())
    assert import_file(renamed) == [data / "MATH"]
    prov = load_named("MATH").provenance
    assert prov["release_file"] == "MATH_final.pkl" and prov["modified"] is False and release_status(prov) == "release"


def test_pickle_state_cannot_spoof_provenance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mod = types.ModuleType("Envs.catMV.catMV")

    class CategoricalMVEnv:
        pass

    CategoricalMVEnv.__module__, CategoricalMVEnv.__qualname__ = mod.__name__, "CategoricalMVEnv"
    mod.CategoricalMVEnv = CategoricalMVEnv
    for name in ("Envs", "Envs.catMV"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    rng = np.random.default_rng(0)
    env = CategoricalMVEnv()
    env.__dict__.update(
        cat_probs=rng.dirichlet(np.ones(3), size=(2, 5)), answers=rng.integers(0, 3, 5),
        cat_probs_te=rng.dirichlet(np.ones(3), size=(2, 2)), answers_te=rng.integers(0, 3, 2),
        cost_per_prompt=np.array([0.1, 0.2]), cost_coeffs={"low": 0.0, "mid": 0.2, "high": 1.0},
        context_distribution=np.array([0.2, 0.3, 0.5]), N_max=4,
        _pickled_global="Envs.official.VerifiedRelease", pickled_state={"N_max": 99}, __class__="x",
    )
    path = tmp_path / "MATH_final.pkl"
    path.write_bytes(pickle.dumps(env, protocol=4))
    table = import_released(path, allow_modified=True)
    assert table.provenance["source_class"] == "Envs.catMV.catMV.CategoricalMVEnv"
    assert table.n_max == 4 and table.provenance["modified"] is True


def test_provenance_fields_of_a_verified_release(math_pickle: Path) -> None:
    prov = import_released(math_pickle).provenance
    assert (prov["matches_release"], prov["modified"], prov["release_file"]) == (True, False, "MATH_final.pkl")
    assert release_status({}) == "-" and release_status({"matches_release": False}) == "MODIFIED"


def test_train_log_names_a_modified_table(tmp_path: Path) -> None:
    """The runner's log says when a task's table is not the pinned release."""
    from dataclasses import replace

    import gymnasium as gym

    from iapo_gym.experiments import train
    from iapo_gym.tables.testing import example_table

    table = example_table("mv", seed=3, n_prompts=3, n_queries=20, n_max=4)
    table = replace(table, provenance={"modified": True, "matches_release": False, "source_file": "MATH_final.pkl",
                                       "source_sha256": "ab" * 32})
    env_id = "IAPO-TestModifiedTable-v0"
    gym.register(env_id, entry_point="iapo_gym.env:IAPOEnv", kwargs={"task": table})
    lines: list[str] = []
    try:
        args = train.Args(env=env_id, agents="random", budgets="8", runs=1, out=str(tmp_path / "out"), progress=False)
        train.run_experiment(args, log=lines.append)
    finally:
        gym.registry.pop(env_id, None)
    flagged = [line for line in lines if "MODIFIED" in line]
    assert len(flagged) == 1 and flagged[0].startswith(f"{env_id}: table Example-mv is MODIFIED (from MATH_final.pkl")


def test_edited_release_table_directory_is_marked_modified(math_pickle: Path, data: Path, capsys) -> None:
    """A table directory that claims to be the release but holds other arrays shows as MODIFIED."""
    import json

    from iapo_gym.tables.io import ARRAYS_FILE, MANIFEST_FILE, array_checksum

    import_file(math_pickle)
    assert load_named("MATH").provenance["modified"] is False
    directory = data / "MATH"
    with np.load(directory / ARRAYS_FILE) as npz:
        arrays = {n: npz[n] for n in npz.files}
    arrays["gold"] = (arrays["gold"] + 1) % 5  # every gold answer changed, checksums made consistent
    np.savez_compressed(directory / ARRAYS_FILE, **arrays)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["checksums"]["gold"] = array_checksum(arrays["gold"])
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    table = load_named("MATH")
    assert table.provenance["modified"] is True and "differ from the pinned release" in table.provenance["modified_reason"]
    assert main(["data", "list"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("MATH "))
    assert row.split()[-1] == "MODIFIED"
    with pytest.raises(ValueError, match="reserved"):
        import_file(directory, name="MATH", overwrite=True)
