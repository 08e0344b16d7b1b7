"""Importers: lm-evaluation-harness ``--log_samples`` files and OpenAI Batch API files, written
here in those formats, become the same tables a build would make.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from iapo_gym.live.importers import GenerationImportError, from_lm_eval, from_openai_batch, write_openai_batch
from iapo_gym.live.specs import arithmetic_queries, load_spec, render
from iapo_gym.live.testserver import FakeChatServer


def _spec(pool=4):
    s = load_spec("smolarith")
    return s.with_overrides(prompts=s.prompts[:2], pool=pool)


def _lm_eval_file(path, queries, p, k, skip=()):
    """A samples file as lm-eval writes it for a generate_until task with `repeats: k`."""
    with open(path, "w") as f:
        for d, q in enumerate(queries):
            if d in skip:
                continue
            right = (p + d) % (k + 1)  # prompt p answers doc d correctly in `right` of k samples
            resps = [f"... so the answer is {q.gold}." if i < right else f"The answer is {int(q.gold) + 1}." for i in range(k)]
            f.write(json.dumps({
                "doc_id": d, "doc": {"question": q.text, "answer": q.gold}, "target": q.gold,
                "arguments": {"gen_args_0": {"arg_0": f"Q: {q.text}\nA:", "arg_1": {"until": ["\n\n"]}}},
                "resps": [resps], "filtered_resps": [resps[0]], "filter": "take_first", "metrics": ["exact_match"],
                "doc_hash": "x", "prompt_hash": "y", "target_hash": "z", "exact_match": float(right > 0),
            }) + "\n")


def test_lm_eval_samples_become_a_table(tmp_path):
    spec, queries = _spec(4), arithmetic_queries(5)
    files = []
    for p in range(2):
        files.append(tmp_path / f"samples_arith_p{p}.jsonl")
        _lm_eval_file(files[-1], queries, p, k=4)
    table = from_lm_eval(spec, files)
    expect = np.array([[((p + d) % 5) / 4 for d in range(5)] for p in range(2)])
    np.testing.assert_allclose(table.answer_probs[:, :, 0], expect)  # gold = category 0
    assert table.query_ids == tuple(str(d) for d in range(5)) and table.pool_size == 4
    assert table.provenance["token_counts"] == "estimated (characters / 4)"
    assert table.provenance["source"].startswith("lm-evaluation-harness")
    # a prompt whose run lacks a document: refused with the list, or excluded on request
    _lm_eval_file(files[1], queries, 1, k=4, skip={3})
    with pytest.raises(GenerationImportError, match=r"1 queries lack 4 completions.*\['3'\].*prompt 1 lacks docs \['3'\]"):
        from_lm_eval(spec, files)
    t2 = from_lm_eval(spec, files, exclude_incomplete=True)
    assert t2.query_ids == ("0", "1", "2", "4") and t2.provenance["excluded_queries"] == ["3"]
    with pytest.raises(GenerationImportError, match="one per prompt"):
        from_lm_eval(spec, files[:1])


def test_openai_batch_output_becomes_the_table_a_build_makes(tmp_path):
    from iapo_gym.live.backends import OpenAIBackend
    from iapo_gym.live.builder import build_table

    spec, queries = _spec(3), arithmetic_queries(4)
    inp = tmp_path / "batch_input.jsonl"
    assert write_openai_batch(spec, queries, inp, "fake-model", seed=2) == 8
    # the Batch API's output, in its format, answered by the test server request by request
    out = tmp_path / "batch_output.jsonl"
    with FakeChatServer() as srv:
        be = OpenAIBackend("fake-model", srv.base_url, spec.sampling, max_retries=0)
        with open(inp) as f, open(out, "w") as g:
            rows = [json.loads(line) for line in f]
            for i, row in enumerate(reversed(rows)):  # output order is not input order
                body = be._post(row["body"])
                g.write(json.dumps({"id": f"batch_req_{i}", "custom_id": row["custom_id"], "error": None,
                                    "response": {"status_code": 200, "request_id": f"r{i}", "body": body}}) + "\n")
        built, _ = build_table(spec, be, queries, tmp_path / "built", seed=2, progress=False)
        be.close()
    table = from_openai_batch(spec, queries, inp, out)
    np.testing.assert_array_equal(table.answer_probs, built.answer_probs)  # same requests, same seeds, same table
    np.testing.assert_allclose(table.cost, built.cost)
    assert table.provenance["source"] == "OpenAI Batch API" and table.provenance["failed_requests"] == []
    # a failed request leaves its query incomplete
    lines = out.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "response": {"status_code": 400, "body": {"error": "filtered"}}})
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(GenerationImportError, match="1 queries lack 3 completions.*400"):
        from_openai_batch(spec, queries, inp, out)
    assert from_openai_batch(spec, queries, inp, out, exclude_incomplete=True).n_queries == 3


def test_batch_requests_of_n1_are_concatenated_and_foreign_requests_refused(tmp_path):
    spec, queries = _spec(2), arithmetic_queries(2)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    assert write_openai_batch(spec, queries, inp, "m", n_per_request=1) == 8
    rows = [json.loads(line) for line in inp.read_text().splitlines()]
    with open(out, "w") as g:
        for row in rows:
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"The answer is {row['custom_id']}"},
                                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}
            g.write(json.dumps({"custom_id": row["custom_id"], "response": {"status_code": 200, "body": body}}) + "\n")
    t = from_openai_batch(spec, queries, inp, out)
    np.testing.assert_allclose(t.cost, t.cost[0, 0])  # 5 tokens per completion everywhere
    assert t.provenance["mean_prompt_tokens"] == 7
    bad = tmp_path / "bad.jsonl"
    other = {**rows[0], "body": {**rows[0]["body"], "messages": list(render("Something else: {query}", "x"))}}
    bad.write_text(json.dumps(other) + "\n")
    with pytest.raises(GenerationImportError, match="matches no prompt x query"):
        from_openai_batch(spec, queries, bad, out)


def test_command_line_imports(tmp_path, capsys):
    from iapo_gym.cli import main
    from iapo_gym.tables.io import load_table

    queries = arithmetic_queries(5)
    files = []
    for p in range(2):
        files.append(str(tmp_path / f"s{p}.jsonl"))
        _lm_eval_file(files[-1], queries, p, k=4)
    assert main(["build", "smolarith", "--prompts", "2", "--pool", "4", "--from-lm-eval", *files,
                 "--out", str(tmp_path / "t")]) == 0
    assert "2 prompts x 5 queries x pool 4 from existing generations" in capsys.readouterr().out
    assert load_table(tmp_path / "t").provenance["samples_files"] == ["s0.jsonl", "s1.jsonl"]
    assert main(["build", "smolarith", "--prompts", "2", "--pool", "4", "--queries", "3", "--served-model-name", "gpt-x",
                 "--write-openai-batch", str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "u")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["body"]["model"] for r in rows} == {"gpt-x"} and {r["body"]["n"] for r in rows} == {4}
