"""The importer of the paper's released pickles: real MATH file, synthetic BoN, malicious pickles."""

from __future__ import annotations

import builtins
import collections
import hashlib
import os
import pickle
import pickletools
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from iapo_gym.tables.importer import (
    TableImportError,
    git_blob_id,
    import_released,
    import_released_all,
    restricted_load,
)

MATH_SHA256 = "1979a97ee6dc9cb35e3071651c40be42b281c215081195ef0d8b1ef9b334d7d9"
MATH_BLOB = "50a3f35a26c689c611f92a32248624c7e9bcc302"


# ----------------------------------------------------------------------------- real MATH table
def test_import_math_release(math_pickle: Path) -> None:
    t = import_released(math_pickle)
    assert (t.task, t.strategy, t.n_prompts, t.n_queries, t.n_outcomes, t.n_max) == ("MATH", "mv", 25, 316, 5, 32)
    assert (t.split == 0).sum() == 252 and (t.split == 1).sum() == 64
    assert np.all(t.split[:252] == 0) and np.all(t.split[252:] == 1)
    assert t.query_ids[0] == "train-0" and t.query_ids[252] == "test-0"
    assert t.prompts[:2] == ("prompt-0", "prompt-1")
    np.testing.assert_array_equal(t.answer_probs.sum(-1), 1.0)
    assert np.all(t.answer_probs * 128 == np.round(t.answer_probs * 128))  # multiples of 1/128
    assert t.cost.shape == (25, 316)
    assert 0.00488 <= t.cost.min() < 0.00489 and t.cost.max() == pytest.approx(0.0100)
    np.testing.assert_array_equal(t.cost[:, 0], t.cost[:, -1])  # per-prompt constant
    assert t.contexts.names == ("low", "mid", "high")
    np.testing.assert_allclose(t.contexts.weights, [[1, 0.0], [1, 0.2], [1, 1.0]])
    np.testing.assert_allclose(t.contexts.probs, 1 / 3)
    assert t.objectives == ("correct",)
    np.testing.assert_array_equal(t.objective_ranges, [[0.0, 1.0]])
    assert t.gold.min() >= 0 and t.gold.max() < 5
    # the reference value published with the release: best single-sample accuracy over all 316 queries
    acc = np.take_along_axis(t.answer_probs, np.broadcast_to(t.gold[None, :, None], (25, 316, 1)), 2)[..., 0]
    assert acc.mean(1).max() == pytest.approx(0.7747, abs=5e-5)
    prov = t.provenance
    assert prov["source_file"] == "MATH_final.pkl"
    assert prov["source_sha256"] == MATH_SHA256 and prov["source_git_blob"] == MATH_BLOB
    assert "ba274e4bed9283476c7efe52481e6d9bdf2d2947" in prov["release"]
    assert prov["source_class"] == "Envs.catMV.catMV.CategoricalMVEnv"


def test_git_blob_id_matches_git_hash_object(math_pickle: Path) -> None:
    assert git_blob_id(math_pickle.read_bytes()) == MATH_BLOB
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


def test_import_released_all_on_single_file(math_pickle: Path) -> None:
    tables = import_released_all(math_pickle, task="MyMath")
    assert len(tables) == 1 and tables[0].task == "MyMath"


# ----------------------------------------------------------------------------- synthetic BoN
@pytest.fixture
def authors_bon_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Stand-ins for the authors' ``Envs.catBoN.catBoN`` module, registered under their path."""
    mod = types.ModuleType("Envs.catBoN.catBoN")

    class Context:
        def __init__(self, weights):
            self.weights = tuple(weights)

    class CategoricalBoNEnv:
        pass

    for cls in (Context, CategoricalBoNEnv):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    for name in ("Envs", "Envs.catBoN"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def _bon_env(mod: types.ModuleType, seed: int, p: int = 3, q_tr: int = 6, q_te: int = 2, m: int = 4, k: int = 2):
    rng = np.random.default_rng(seed)
    env = mod.CategoricalBoNEnv()
    probs = rng.dirichlet(np.ones(m), size=(p, q_tr + q_te))
    weights = [(0.3, 0.7, -0.5), (0.9, 0.1, 0.0)]
    env.__dict__.update(
        rng=np.random.default_rng(seed),
        N_max=8,
        _contexts=[mod.Context(w) for w in weights],
        weights=weights,
        context_distribution=np.array([0.25, 0.75]),
        outcome_vectors_train=rng.uniform(-1, 2, size=(p, q_tr, m, k)),
        outcome_probs_train=probs[:, :q_tr],
        outcome_vectors_test=rng.uniform(-1, 2, size=(p, q_te, m, k)),
        outcome_probs_test=probs[:, q_tr:],
        cost_per_prompt=rng.uniform(0.1, 1.0, size=p),
        prompts=list(range(p)),
    )
    return env


def test_import_synthetic_bon_list(authors_bon_module: types.ModuleType, tmp_path: Path) -> None:
    envs = [_bon_env(authors_bon_module, s) for s in (1, 2)]
    path = tmp_path / "HH_final.pkl"
    path.write_bytes(pickle.dumps(envs, protocol=4))
    tables = import_released_all(path, allow_modified=True)
    assert len(tables) == 2
    for env, t in zip(envs, tables, strict=True):
        assert (t.task, t.strategy, t.n_prompts, t.n_queries, t.n_outcomes, t.n_objectives, t.n_max) == (
            "HelpfulHarmless", "bon", 3, 8, 4, 2, 8,
        )
        np.testing.assert_array_equal(t.outcome_values[:, :6], env.outcome_vectors_train)
        np.testing.assert_array_equal(t.outcome_values[:, 6:], env.outcome_vectors_test)
        np.testing.assert_array_equal(t.outcome_probs[:, 6:], env.outcome_probs_test)
        np.testing.assert_array_equal(t.split, [0] * 6 + [1] * 2)
        np.testing.assert_array_equal(t.cost, np.broadcast_to(env.cost_per_prompt[:, None], (3, 8)))
        # the cost weight becomes a magnitude
        np.testing.assert_allclose(t.contexts.weights, [[0.3, 0.7, 0.5], [0.9, 0.1, 0.0]])
        np.testing.assert_allclose(t.contexts.probs, [0.25, 0.75])
        vals = np.concatenate([env.outcome_vectors_train, env.outcome_vectors_test], axis=1)
        np.testing.assert_allclose(t.objective_ranges[:, 0], vals.min(axis=(0, 1, 2)))
        np.testing.assert_allclose(t.objective_ranges[:, 1], vals.max(axis=(0, 1, 2)))
    assert tables[0].objectives == ("helpful", "harmless")
    assert tables[0].contexts.names == ("helpful=0.3,harmless=0.7,cost=0.5", "helpful=0.9,harmless=0.1,cost=0")
    assert tables[1].provenance["source_index"] == 1 and tables[1].provenance["source_count"] == 2
    with pytest.raises(TableImportError, match="holds 2 envs; pass index"):
        import_released(path, allow_modified=True)
    assert import_released(path, index=1, allow_modified=True).provenance["source_index"] == 1


def test_bon_declared_range(authors_bon_module: types.ModuleType, tmp_path: Path) -> None:
    env = _bon_env(authors_bon_module, 5)
    env.outcome_vectors_train = np.clip(env.outcome_vectors_train, 0.0, 1.0)
    env.outcome_vectors_test = np.clip(env.outcome_vectors_test, -0.5, 1.0)
    path = tmp_path / "Summarization_final.pkl"
    path.write_bytes(pickle.dumps(env))
    t = import_released(path, allow_modified=True)
    assert t.task == "Summarization" and t.objectives == ("objective-0", "objective-1")
    np.testing.assert_array_equal(t.objective_ranges, [[-1.0, 1.0], [-1.0, 1.0]])
    assert t.provenance["objective_ranges"].startswith("[-1, 1]")


def test_bon_positive_cost_weight_refused(authors_bon_module: types.ModuleType, tmp_path: Path) -> None:
    env = _bon_env(authors_bon_module, 3)
    env.weights = [(0.5, 0.5, 0.2), (0.5, 0.5, 0.0)]
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(env))
    with pytest.raises(TableImportError, match="cost weights"):
        import_released(path, allow_modified=True)


def test_unknown_layout_and_garbage_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TableImportError, match="expected one of the authors' envs"):
        import_released(path, allow_modified=True)
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(TableImportError, match="could not unpickle"):
        import_released(path, allow_modified=True)


# ----------------------------------------------------------------------------- malicious pickles
def _reduce_pickle(func, args) -> bytes:
    class Payload:
        def __reduce__(self):
            return func, args

    return pickle.dumps(Payload(), protocol=2)


def _trap_marker(marker: Path) -> None:
    """A test-module callable that would leave the marker if it ever ran."""
    marker.write_text("ran")


class Trap:
    """A test-module class whose construction would leave the marker."""

    def __init__(self, marker: str) -> None:
        Path(marker).write_text("ran")


MALICIOUS = {
    "os.system (protocol 0 opcodes)": (
        lambda m: b"cos\nsystem\n(S'touch " + str(m).encode() + b"'\ntR.",
        "os.system",
    ),
    "os.system via __reduce__": (lambda m: _reduce_pickle(os.system, (f"touch {m}",)), f"{os.system.__module__}.system"),
    "builtins.exec": (lambda m: _reduce_pickle(builtins.exec, (f"open({str(m)!r}, 'w').close()",)), "builtins.exec"),
    "builtins.eval (protocol 4)": (
        lambda m: pickle.dumps(_EvalPayload(f"open({str(m)!r}, 'w')"), protocol=4),
        "builtins.eval",
    ),
    "subprocess.Popen": (lambda m: _reduce_pickle(subprocess.Popen, (["touch", str(m)],)), "subprocess.Popen"),
    "test-module function": (lambda m: _reduce_pickle(_trap_marker, (m,)), f"{__name__}._trap_marker"),
    "test-module class": (lambda m: _reduce_pickle(Trap, (str(m),)), f"{__name__}.Trap"),
    "collections.OrderedDict": (
        lambda m: pickle.dumps(collections.OrderedDict(a=1), protocol=4),
        "collections.OrderedDict",
    ),
    "non-listed name in the authors' module": (
        lambda m: b"\x80\x04cEnvs.catMV.catMV\nos_system\n(S'touch " + str(m).encode() + b"'\ntR.",
        "Envs.catMV.catMV.os_system",
    ),
}


class _EvalPayload:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return builtins.eval, (self.code,)


@pytest.mark.parametrize("label", list(MALICIOUS))
def test_malicious_pickle_refused_before_it_runs(label: str, tmp_path: Path) -> None:
    make, global_name = MALICIOUS[label]
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(make(marker))
    with pytest.raises(TableImportError, match=f"refused global {global_name.replace('.', '[.]')}"):
        import_released(path, allow_modified=True)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # also an UnpicklingError for generic callers
        restricted_load(path.read_bytes())
    assert not marker.exists()


def test_payload_hidden_inside_a_released_table_refused(math_pickle: Path, tmp_path: Path) -> None:
    """A real MATH file whose env dict gains one extra entry REDUCE-ing os.system."""
    data = math_pickle.read_bytes()
    marker = tmp_path / "marker"
    assert data.endswith(b"uba.")  # SETITEMS (env __dict__), BUILD, APPEND (to the list), STOP
    cmd = f"touch {marker}".encode()
    evil = b"\x8c\x04evil" + b"cos\nsystem\n" + b"\x8c" + bytes([len(cmd)]) + cmd + b"\x85R"
    # one more (key, value) pair in the env's __dict__, just before its final SETITEMS
    tampered = bytearray(data[:-4] + evil + data[-4:])
    last_frame = [pos for op, _, pos in pickletools.genops(data) if op.name == "FRAME"][-1]
    size = int.from_bytes(data[last_frame + 1 : last_frame + 9], "little")
    tampered[last_frame + 1 : last_frame + 9] = (size + len(evil)).to_bytes(8, "little")
    path = tmp_path / "MATH_final.pkl"
    path.write_bytes(tampered)
    with pytest.raises(TableImportError, match="refused global os[.]system"):
        import_released(path, allow_modified=True)
    assert not marker.exists()


def test_real_authors_module_is_never_imported_or_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Even when a module named like the authors' is importable, its code never runs."""
    marker = tmp_path / "marker"
    mod = types.ModuleType("Envs.catMV.catMV")

    class CategoricalMVEnv:
        def __setstate__(self, state):
            marker.write_text("setstate ran")

    CategoricalMVEnv.__module__ = mod.__name__
    CategoricalMVEnv.__qualname__ = "CategoricalMVEnv"
    mod.CategoricalMVEnv = CategoricalMVEnv
    for name in ("Envs", "Envs.catMV"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    env = CategoricalMVEnv()
    env.__dict__["N_max"] = 4
    data = pickle.dumps(env, protocol=4)
    obj = restricted_load(data)
    assert type(obj) is not CategoricalMVEnv and obj.N_max == 4
    assert not marker.exists()
    digest = hashlib.sha256(data).hexdigest()
    assert len(digest) == 64


def test_import_synthetic_bernoulli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mod = types.ModuleType("Envs.synthBernoulli.synthBernoulli")

    class SyntheticBernoulliEnv:
        pass

    SyntheticBernoulliEnv.__module__, SyntheticBernoulliEnv.__qualname__ = mod.__name__, "SyntheticBernoulliEnv"
    mod.SyntheticBernoulliEnv = SyntheticBernoulliEnv
    for name in ("Envs", "Envs.synthBernoulli"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    rng = np.random.default_rng(0)
    env = SyntheticBernoulliEnv()
    env.__dict__.update(
        success_probs={t: rng.uniform(size=(4, n)) for t, n in (("easy", 3), ("medium", 2), ("hard", 1))},
        success_probs_test={t: rng.uniform(size=(4, 1)) for t in ("easy", "medium", "hard")},
        tier_distribution=np.array([0.5, 1 / 3, 1 / 6]),
        cost_per_prompt=np.linspace(0.1, 0.4, 4),
        cost_coeffs={"low": 0.0, "mid": 0.5, "high": 1.0},
        context_distribution=np.full(3, 1 / 3),
        N_max=16,
        rng=np.random.default_rng(1),
    )
    path = tmp_path / "SB_final.pkl"
    path.write_bytes(pickle.dumps([env, env], protocol=4))
    tables = import_released_all(path, allow_modified=True)
    t = tables[0]
    assert len(tables) == 2 and (t.task, t.strategy, t.n_outcomes, t.n_queries, t.n_max) == ("SynthBernoulli", "mv", 2, 9, 16)
    assert t.query_ids[:4] == ("train-easy-0", "train-easy-1", "train-easy-2", "train-medium-0")
    np.testing.assert_array_equal(t.split, [0] * 6 + [1] * 3)
    np.testing.assert_array_equal(t.gold, 1)
    np.testing.assert_allclose(t.answer_probs[:, 3, 1], env.success_probs["medium"][:, 0])
    np.testing.assert_allclose(t.answer_probs[:, 8, 0], 1 - env.success_probs_test["hard"][:, 0])
    np.testing.assert_allclose(t.contexts.weights[:, 1], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(t.provenance["tier_distribution"], [0.5, 1 / 3, 1 / 6])


def test_array_reconstruction_is_limited_to_plain_empty_ndarrays(tmp_path: Path) -> None:
    """_reconstruct may only build the empty ndarray numpy's own pickles start from."""
    huge = b"\x80\x04cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a\x3b\x85C\x01b\x87R."
    with pytest.raises(TableImportError, match=r"shape \(1000000000,\)"):
        restricted_load(huge)
    other = b"\x80\x04cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85C\x01b\x87R."
    with pytest.raises(TableImportError, match="only numpy.ndarray is allowed"):
        restricted_load(other)
    arr = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(restricted_load(pickle.dumps(arr, protocol=4)), arr)
    np.testing.assert_array_equal(restricted_load(pickle.dumps(arr, protocol=5)), arr)
    assert restricted_load(pickle.dumps(np.float32(1.5))) == np.float32(1.5)
