"""Resource limits before allocation: hostile pickles, npz bombs, oversized declared sizes, deep manifests."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hostile_tables import (
    build_state_pickle,
    edit_manifest,
    memo_pickle,
    ndarray_call_pickle,
    nested_manifest,
    npz_bomb,
    peak_memory,
)

from iapo_gym.cli import main
from iapo_gym.tables.importer import TableImportError, import_released, restricted_load, scan_pickle
from iapo_gym.tables.io import ARRAYS_FILE, MANIFEST_FILE, load_table, read_manifest, save_table
from iapo_gym.tables.store import import_file, table_path
from iapo_gym.tables.testing import example_table
from iapo_gym.tables.validation import LIMITS, TableError

LINUX = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
#: Growth of the peak resident memory a refused hostile file may cause (a regression costs >= 1 GB).
SMALL_KB = 32 * 1024


# ----------------------------------------------------------------------------- pickles
def test_memo_index_beyond_the_file_is_refused_before_unpickling() -> None:
    data = memo_pickle()
    assert len(data) == 9
    with pytest.raises(TableImportError, match=r"refused memo index 134217728 in a pickle of 4 opcodes"):
        restricted_load(data)
    # genuine pickles pass the scan: numbered memo entries 0, 1, 2, ...
    assert scan_pickle(pickle.dumps([{"a": np.arange(3)}, "x", "x"], protocol=2)) > 0
    assert restricted_load(pickle.dumps([np.arange(3.0)] * 2, protocol=4))[1][2] == 2.0


def test_truncated_length_fields_are_refused_by_the_scan() -> None:
    data = pickle.dumps(b"x" * 300, protocol=4)
    with pytest.raises(TableImportError, match="malformed pickle"):
        restricted_load(data[:100])


@pytest.mark.parametrize("route", ["reduce", "newobj"])
def test_numpy_ndarray_cannot_be_called(route: str) -> None:
    with pytest.raises(TableImportError, match=r"refused call of numpy.ndarray"):
        restricted_load(ndarray_call_pickle(route=route))


def test_array_state_must_describe_its_bytes() -> None:
    with pytest.raises(ValueError, match="buffer size"):  # numpy itself refuses it as well
        pickle.loads(build_state_pickle())
    with pytest.raises(TableImportError, match=r"shape \(300000000,\) x 8 bytes does not match the 8 bytes stored"):
        restricted_load(build_state_pickle())
    # an object array (whose BUILD state is a list) is refused before numpy sees it
    with pytest.raises(TableImportError, match="object|numeric"):
        restricted_load(pickle.dumps(np.array([1, "a"], dtype=object), protocol=4))


@LINUX
@pytest.mark.parametrize(
    "build, refusal",
    [
        (memo_pickle, "refused memo index"),
        (ndarray_call_pickle, "refused call of numpy.ndarray"),
        (build_state_pickle, "refused array state"),
    ],
    ids=["memo", "ndarray call", "BUILD state"],
)
def test_hostile_pickles_allocate_nothing(tmp_path: Path, build, refusal: str) -> None:
    path = tmp_path / "hostile.pkl"
    path.write_bytes(build())
    got = peak_memory("pickle", path)  # a regression shows as a MemoryError under the address-space cap
    assert got["error"] is not None and got["error"].startswith(f"TableImportError: {refusal}"), got
    assert got["after_kb"] - got["before_kb"] < SMALL_KB, got


# ----------------------------------------------------------------------------- npz
@pytest.mark.parametrize("header", ["huge", "small"])
def test_npz_bomb_refused_before_decompression(tmp_path: Path, header: str) -> None:
    directory = npz_bomb(tmp_path / "t", 64 * 2**20, header)
    assert (directory / ARRAYS_FILE).stat().st_size < 2**20  # 64 MiB of zeros in < 1 MiB
    expected = "cost: has shape (8388608,), expected (3, 10)" if header == "huge" else "the zip entry holds 67108992 bytes"
    with pytest.raises(TableError) as info:
        load_table(directory)
    assert expected in str(info.value)


@LINUX
def test_npz_bomb_allocates_nothing(tmp_path: Path) -> None:
    got = peak_memory("table", npz_bomb(tmp_path / "t", 64 * 2**20, "small"))
    assert got["error"] is not None and "zip entry holds" in got["error"]
    assert got["after_kb"] - got["before_kb"] < SMALL_KB, got


def test_header_dtype_and_declared_shape_checked(tmp_path: Path) -> None:
    directory = save_table(example_table("mv"), tmp_path / "t")
    edit_manifest(directory, dtypes={"cost": "<f4", "split": "|i1", "answer_probs": "<f8", "gold": "<i8"})
    with pytest.raises(TableError, match=r"cost: dtype <f8 differs from the manifest's <f4"):
        load_table(directory)


def test_total_size_bounded_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = save_table(example_table("bon"), tmp_path / "t")
    monkeypatch.setitem(LIMITS, "table_bytes", 1000)
    with pytest.raises(TableError, match=r"arrays.npz: the arrays would take \d+ bytes, above the limit of 1000"):
        load_table(directory)


# ----------------------------------------------------------------------------- declared sizes
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_max", 10**12, "n_max: is 1000000000000, above the limit of 1024"),
        ("n_max", 1000, "n_max: 3 prompts x n_max 1000 = 3000 arms"),
        ("n_answers", 20000, "n_answers: is 20000, above the limit of 4096"),
        ("pool_size", 10**9, "pool_size: is 1000000000, above the limit of 65536"),
    ],
)
def test_declared_sizes_have_upper_bounds(tmp_path: Path, monkeypatch, field: str, value: int, message: str) -> None:
    if field == "n_max" and value == 1000:
        monkeypatch.setitem(LIMITS, "arms", 2000)
    directory = save_table(example_table("mv"), tmp_path / "t")
    edit_manifest(directory, **{field: value})
    with pytest.raises(TableError) as info:
        read_manifest(directory)
    assert message in str(info.value) and "; " in str(info.value)


def test_pool_table_with_huge_n_answers_is_refused(tmp_path: Path) -> None:
    table = example_table("mv")
    pool = np.repeat(np.argmax(table.answer_probs, axis=2)[..., None], 4, axis=2)
    from dataclasses import replace

    probs = np.zeros_like(table.answer_probs)
    np.put_along_axis(probs, pool[..., :1], 1.0, axis=2)
    directory = save_table(replace(table, answer_probs=probs), tmp_path / "t", mv_pool=pool)
    load_table(directory)
    edit_manifest(directory, n_answers=20000)
    with pytest.raises(TableError, match="n_answers: is 20000, above the limit"):
        load_table(directory)
    # without n_answers, the largest category decides the size: bounded too
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    del manifest["n_answers"]
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    load_table(directory)
    big = pool.copy()
    big[0, 0, 0] = 10**12
    directory = save_table(example_table("mv"), tmp_path / "t2")
    with np.load(directory / ARRAYS_FILE) as npz:
        arrays = {n: npz[n] for n in npz.files if n != "answer_probs"}
    arrays["pool_answers"] = big
    np.savez(directory / ARRAYS_FILE, **arrays)
    from iapo_gym.tables.io import array_checksum

    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    for key in ("checksums", "shapes", "dtypes"):
        manifest[key].pop("answer_probs")
    manifest["checksums"]["pool_answers"] = array_checksum(big)
    manifest["shapes"]["pool_answers"] = list(big.shape)
    manifest["dtypes"]["pool_answers"] = big.dtype.str
    manifest["pool_size"] = 4
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(TableError, match="pool_answers: category 1000000000000 implies 1000000000001 answer categories"):
        load_table(directory)


def test_cost_and_weights_bounded() -> None:
    from dataclasses import replace

    from iapo_gym.contexts import ContextSet
    from iapo_gym.tables.validation import validate_table

    table = example_table("mv")
    with pytest.raises(TableError, match=r"cost: cost 1e\+307 at prompt 0, query 0 exceeds the limit of 1e\+09"):
        validate_table(replace(table, cost=np.full_like(table.cost, 1e307)))
    w = table.contexts.weights.copy()
    w[0, -1] = 1e300
    with pytest.raises(TableError, match=r"contexts: weight 1e\+300 of context 0 exceeds the limit"):
        validate_table(replace(table, contexts=ContextSet(table.contexts.names, w, table.contexts.probs)))


@pytest.fixture
def authors_mv(monkeypatch: pytest.MonkeyPatch) -> type:
    mod = types.ModuleType("Envs.catMV.catMV")

    class CategoricalMVEnv:
        pass

    CategoricalMVEnv.__module__, CategoricalMVEnv.__qualname__ = mod.__name__, "CategoricalMVEnv"
    mod.CategoricalMVEnv = CategoricalMVEnv
    for name in ("Envs", "Envs.catMV"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return CategoricalMVEnv


def _mv_env(cls: type, **over) -> object:
    rng = np.random.default_rng(0)
    env = cls()
    env.__dict__.update(
        cat_probs=rng.dirichlet(np.ones(3), size=(2, 5)), answers=rng.integers(0, 3, 5),
        cat_probs_te=rng.dirichlet(np.ones(3), size=(2, 2)), answers_te=rng.integers(0, 3, 2),
        cost_per_prompt=np.array([0.1, 0.2]), cost_coeffs={"low": 0.0, "mid": 0.2, "high": 1.0},
        context_distribution=np.array([0.2, 0.3, 0.5]), N_max=4,
    )
    env.__dict__.update(over)
    return env


@pytest.mark.parametrize(
    "over, message",
    [
        ({"N_max": 10**12}, "n_max: is 1000000000000, above the limit of 1024"),
        ({"cost_per_prompt": np.array([1e307, 0.1])}, "cost: cost 1e+307 at prompt 0"),
        ({"cost_coeffs": {"low": 0.0, "mid": 0.2, "high": 1e300}}, "contexts: weight 1e+300 of context 2"),
    ],
)
def test_released_pickle_with_oversized_values_refused(authors_mv: type, tmp_path: Path, over, message) -> None:
    path = tmp_path / "Toy_final.pkl"
    path.write_bytes(pickle.dumps(_mv_env(authors_mv, **over), protocol=4))
    with pytest.raises(TableImportError) as info:
        import_released(path, allow_modified=True)
    assert message in str(info.value)


# ----------------------------------------------------------------------------- names and manifests
@pytest.mark.parametrize("name", ["MATH\n", "MATH\r", "a\x00b", "tab\tname", "x" * 200, "-x", ".x", "a b"])
def test_table_names_with_control_characters_refused(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IAPO_GYM_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="invalid table name"):
        table_path(name)
    src = save_table(example_table("mv"), tmp_path / "src")
    with pytest.raises(ValueError, match="invalid table name"):
        import_file(src, name=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_deep_manifest_is_reported_and_the_rest_listed(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("IAPO_GYM_DATA", str(tmp_path))
    save_table(example_table("mv"), tmp_path / "good")
    save_table(example_table("bon"), tmp_path / "zz-good")
    nested_manifest(tmp_path / "deep", depth=10**6)
    with pytest.raises(TableError, match=r"manifest.json: JSON nested 1000000 levels deep"):
        read_manifest(tmp_path / "deep")
    (tmp_path / "bad\nname").mkdir()
    (tmp_path / "bad\nname" / MANIFEST_FILE).write_text("{}")
    assert main(["data", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert next(r for r in rows if r.startswith("deep ")).split()[1:4] == ["invalid:", "manifest.json:", "JSON"]
    assert next(r for r in rows if r.startswith("good ")).split()[1] == "Example-mv"
    assert next(r for r in rows if r.startswith("zz-good ")).split()[1] == "Example-bon"
    assert any(r.startswith("'bad\\nname'") and "invalid table name" in r for r in rows)
    assert rows[-1].startswith("2 invalid table(s)")


def test_json_depth_ignores_brackets_inside_strings(tmp_path: Path) -> None:
    table = example_table("mv")
    from dataclasses import replace

    directory = save_table(replace(table, prompts=("[[[[" * 100, *table.prompts[1:])), tmp_path / "t")
    assert read_manifest(directory)["prompts"][0].startswith("[[[[")
    text = (directory / MANIFEST_FILE).read_text()
    (directory / MANIFEST_FILE).write_text('{"a": ' + "[" * 65 + "1" + "]" * 65 + "}")
    with pytest.raises(TableError, match="nested 66 levels deep"):
        read_manifest(directory)
    (directory / MANIFEST_FILE).write_text(text)
