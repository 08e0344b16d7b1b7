"""Builder, checkpoint, specs and live-source machinery, offline (no LLM).

The LLM is replaced by :class:`~iapo_gym.live.source.ReplayBackend` serving a recording written
here, the same component that replays a live run; the real-engine tests are in
test_live_engine.py and test_live_server.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from iapo_gym.live.builder import assemble_table, build_table, prompt_id, unit_seed
from iapo_gym.live.checkpoint import read_units, seal
from iapo_gym.live.source import LiveSource, ReplayBackend, recording_to_table
from iapo_gym.live.specs import ENVS_DATA, arithmetic_queries, load_queries, load_spec, spec_from_dict
from iapo_gym.tables.io import load_table

SPEC_NAMES = ("math", "commonsenseqa", "helpful_harmless", "summarization", "smolarith")


@pytest.fixture
def spec():
    return load_spec("smolarith").with_overrides(prompts=load_spec("smolarith").prompts[:3], pool=4)


@pytest.fixture
def queries():
    return arithmetic_queries(5, seed=0)


def _answer_texts(p: int, q: int, gold: str, n: int) -> list[str]:
    """Deterministic fake completions: prompt p gets the answer right on (p + q) % 3 of 4 tries."""
    right = (p + q) % 3
    return [f"The answer is {gold}." if i < right else f"It is {int(gold) + 1 + i % 2}" for i in range(n)]


def _write_recording(path, spec, queries, seed=0, skip=()):
    with open(path, "w") as f:
        for q, query in enumerate(queries):
            for p in range(len(spec.prompts)):
                if (p, q) in skip:
                    continue
                texts = _answer_texts(p, q, query.gold, spec.pool)
                useed = unit_seed(seed, prompt_id(spec.prompts[p]), query.id)
                rec = {"kind": "unit", "p": p, "q": q, "n": spec.pool, "seed": useed,
                       "texts": texts, "prompt_tokens": 20 + p, "completion_tokens": [5 + p + i for i in range(spec.pool)]}
                f.write(json.dumps(seal(rec)) + "\n")


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_shipped_specs_validate(name):
    s = load_spec(name)
    assert s.path.parent == ENVS_DATA / name
    assert len(s.prompts) >= (6 if name == "smolarith" else 20)
    assert s.env_id and s.env_id.startswith("IAPO-")
    assert len(s.context_set()) == (3 if s.strategy == "mv" else 27)
    if s.strategy == "bon":
        assert load_queries(s, local_path="sample")[0].gold is None  # the shipped sample, only when asked for


def test_real_datasets_load(datasets_dir):
    m = load_queries(load_spec("math"), local_path=datasets_dir / "math500.jsonl", limit=7)
    assert (
        len(m) == 7
        and not m[0].text.startswith("Return your final response")
        and m[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    )
    c = load_queries(load_spec("commonsenseqa"), local_path=datasets_dir / "commonsenseqa_200.jsonl")
    assert len(c) == 200 and c[0].gold == "E" and len({q.id for q in c}) == 200


def test_spec_errors_name_the_fix():
    base = json.loads((ENVS_DATA / "smolarith" / "spec.json").read_text())
    with pytest.raises(ValueError, match="strategy must be"):
        spec_from_dict({**base, "strategy": "best"})
    with pytest.raises(ValueError, match="unknown keys"):
        spec_from_dict({**base, "poool": 3})
    with pytest.raises(ValueError, match="distinct"):
        spec_from_dict({**base, "prompts": ["a", "a"]})
    with pytest.raises(ValueError, match="dataset.format"):
        spec_from_dict({**base, "dataset": {"format": "csv"}})


def test_unit_seed_is_stable_and_distinct():
    assert unit_seed(0, 1, "q7") == unit_seed(0, 1, "q7")
    seeds = {unit_seed(s, p, f"q{q}") for s in range(2) for p in range(4) for q in range(50)}
    assert len(seeds) == 400 and all(0 <= x < 2**31 for x in seeds)


def test_build_resumes_without_lost_or_duplicated_units(tmp_path, spec, queries):
    full = tmp_path / "full.jsonl"
    _write_recording(full, spec, queries)
    ref, ref_stats = build_table(
        spec, ReplayBackend(full, spec, queries), queries, tmp_path / "ref", batch_size=4, progress=False
    )
    assert ref_stats.units_generated == 15 and ref_stats.units_before == 0

    # A backend that dies at unit (1, 2): the units before it in its batch are still checkpointed.
    partial = tmp_path / "partial.jsonl"
    _write_recording(partial, spec, queries, skip={(1, 2)})
    with pytest.raises(KeyError):
        build_table(spec, ReplayBackend(partial, spec, queries), queries, tmp_path / "t", batch_size=4, progress=False)
    ckpt = tmp_path / "t.checkpoint.jsonl"
    before = read_units(ckpt)
    done_before = {(u["p"], u["q"]) for u in before}
    assert (1, 2) not in done_before and len(done_before) == 7  # batches of 4: 4 + [(0,2)] + ... stop
    table, stats = build_table(spec, ReplayBackend(full, spec, queries), queries, tmp_path / "t", batch_size=4, progress=False)
    after = read_units(ckpt)
    assert stats.units_before == 7 and stats.units_generated == 8
    assert len(after) == 15 and len({(u["p"], u["q"]) for u in after}) == 15
    assert after[:7] == before  # checkpointed units were kept, never regenerated
    loaded = load_table(tmp_path / "t")
    for name in ("answer_probs", "gold", "cost", "split"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(ref, name))
    assert loaded.provenance["answer_labels"] == ref.provenance["answer_labels"]
    assert loaded.provenance["build_sessions"] == 2


def test_assembled_mv_table_values(tmp_path, spec, queries):
    full = tmp_path / "full.jsonl"
    _write_recording(full, spec, queries)
    table, _ = build_table(spec, ReplayBackend(full, spec, queries), queries, tmp_path / "t", progress=False)
    # P(correct) of prompt p on query q is ((p + q) % 3) / 4 by construction.
    expect = np.array([[((p + q) % 3) / 4 for q in range(5)] for p in range(3)])
    np.testing.assert_allclose(table.answer_probs[:, :, 0], expect)
    assert np.all(table.gold == 0) and table.pool_size == 4
    tokens = np.array([[5 + p + 1.5] * 5 for p in range(3)])  # mean of 5+p .. 8+p
    np.testing.assert_allclose(table.cost, tokens * 0.01 / tokens.mean(1).max())
    assert table.provenance["cost_scale_per_token"] == pytest.approx(0.01 / 8.5)
    assert load_table(tmp_path / "t").pool_size == 4


def test_assembled_bon_table(tmp_path):
    spec = load_spec("helpful_harmless").with_overrides(
        prompts=load_spec("helpful_harmless").prompts[:2], pool=3, scorer={"name": "lexical_proxy", "target_words": 10}
    )
    qs = load_queries(spec, local_path="sample", limit=2)
    units = {}
    for p in range(2):
        for q in range(2):
            units[(p, q)] = {"texts": ["a"] * 3, "completion_tokens": [1, 2, 3], "prompt_tokens": 9,
                             "scores": [[0.1 * p, 0.2 * q], [0.5, 0.5], [1.0, 0.0]]}
    table, pool = assemble_table(spec, qs, units)
    assert pool is None and table.outcome_values.shape == (2, 2, 3, 2)
    np.testing.assert_allclose(table.outcome_probs, 1 / 3)
    np.testing.assert_allclose(table.outcome_values[1, 1, 0], [0.1, 0.2])
    np.testing.assert_allclose(table.cost, 0.01)  # every unit averages 2 tokens; max_cost 0.01


def test_live_source_records_and_replays(tmp_path, spec, queries):
    full = tmp_path / "full.jsonl"
    # a recording whose seeds are those a LiveSource draws from rng seed 3
    rng = np.random.default_rng(3)
    prompt, n, query = np.array([0, 2, 1, 0]), np.array([4, 2, 3, 1]), np.array([1, 1, 4, 0])
    seeds = rng.integers(0, 2**31, size=4)
    with open(full, "w") as f:
        for b in range(4):
            texts = _answer_texts(int(prompt[b]), int(query[b]), queries[query[b]].gold, 4)[: n[b]]
            f.write(json.dumps(seal({"kind": "unit", "p": int(prompt[b]), "q": int(query[b]), "n": int(n[b]),
                                     "seed": int(seeds[b]),
                                     "texts": texts, "prompt_tokens": 10, "completion_tokens": [3] * int(n[b])})) + "\n")
    rec = tmp_path / "run.jsonl"
    src = LiveSource(spec, ReplayBackend(full, spec, queries), queries, record=rec)
    pulls, ptoks, ctoks = src.pull(prompt, n, query, np.random.default_rng(3))
    assert pulls.width == 4 and pulls.mask.sum() == 10
    assert ptoks.tolist() == [10] * 4 and ctoks.tolist() == [12, 6, 9, 3]
    # prompt 0 on query 1: right on 1 of 4 tries -> first completion gold (0), others wrong
    assert pulls.outcome[0].tolist() == [0, 1, 2, 1]
    np.testing.assert_array_equal(pulls.values[..., 0], (pulls.outcome == 0) & pulls.mask)
    np.testing.assert_allclose(pulls.cost[pulls.mask], 3 * src.cost_per_token)
    assert src.cost_per_token == pytest.approx(0.01 / 40)
    # Replaying the recording reproduces the pulls exactly.
    again = LiveSource(spec, ReplayBackend(rec, spec, queries), queries).pull(prompt, n, query, np.random.default_rng(3)).pulls
    for name in ("outcome", "values", "cost", "mask"):
        np.testing.assert_array_equal(getattr(again, name), getattr(pulls, name))
    with pytest.raises(ValueError, match="no query was pulled under all 3 prompts"):
        recording_to_table(rec, spec, queries)


@pytest.mark.parametrize("name", ["helpful_harmless", "summarization"])
def test_sample_file_is_never_used_silently_instead_of_the_named_dataset(name, monkeypatch):
    import sys

    spec = load_spec(name)
    assert spec.dataset["hf_name"] and spec.dataset["local_path"] is None and spec.dataset["sample_path"]
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(RuntimeError, match="reads the Hugging Face dataset"):
        load_queries(spec)  # the named dataset is wanted, not the 8-10 row sample
    assert 5 <= len(load_queries(spec, local_path="sample")) <= 12
    base = json.loads((ENVS_DATA / name / "spec.json").read_text())
    with pytest.raises(ValueError, match="names both hf_name and local_path"):
        spec_from_dict({**base, "dataset": {**base["dataset"], "local_path": "queries.sample.jsonl"}})


def test_field_mapping_over_local_jsonl_parquet_and_csv(tmp_path):
    import csv

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"uid": f"u{i}", "prob": {"text": f"What is {i} + {i}?"}, "sol": str(2 * i)} for i in range(5)]
    flat = [{"uid": r["uid"], "prob": r["prob"]["text"], "sol": r["sol"]} for r in rows]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uid", "prob", "sol"])
        w.writeheader()
        w.writerows(flat)
    base = json.loads((ENVS_DATA / "smolarith" / "spec.json").read_text())
    nested = {"format": "fields", "question_field": "prob.text", "answer_field": "sol", "id_field": "uid"}
    for fname, ds in (("d.jsonl", nested), ("d.parquet", nested), ("d.csv", {**nested, "question_field": "prob"})):
        spec = spec_from_dict({**base, "dataset": {**ds, "local_path": str(tmp_path / fname)}})
        qs = load_queries(spec, limit=4)
        assert [(q.id, q.text, q.gold) for q in qs] == [(f"u{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(4)]
    bad = spec_from_dict({**base, "dataset": {**nested, "question_field": "problem", "local_path": str(tmp_path / "d.jsonl")}})
    with pytest.raises(ValueError, match="no field 'problem'.*fix question_field"):
        load_queries(bad)
    with pytest.raises(ValueError, match="needs dataset.answer_field"):
        spec_from_dict({**base, "dataset": {"format": "fields", "question_field": "q", "local_path": "x.jsonl"}})


def test_hugging_face_dataset_with_field_mapping_and_pinned_revision(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    # a dataset repository laid out as on the Hub (data/test-*.parquet), loaded by the real `datasets`
    (tmp_path / "repo" / "data").mkdir(parents=True)
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "idx": 100 + i} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "repo" / "data" / "test-00000-of-00001.parquet")
    seen = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: seen.append(kw.get("revision")) or real(*a, **kw))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    base = json.loads((ENVS_DATA / "smolarith" / "spec.json").read_text())
    spec = spec_from_dict({**base, "dataset": {"format": "fields", "hf_name": str(tmp_path / "repo"), "hf_split": "test",
                                                "revision": "main", "question_field": "question", "answer_field": "answer",
                                                "id_field": "idx"}})
    qs = load_queries(spec)
    assert [(q.id, q.text, q.gold) for q in qs] == [(str(100 + i), f"What is {i} + 1?", str(i + 1)) for i in range(3)]
    assert seen == ["main"]  # the pinned revision reaches datasets.load_dataset
