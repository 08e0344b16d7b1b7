"""Checkpoints and recordings lose nothing: damaged headers and lines are kept and reported, valid
units after a bad line survive, checksums catch rewritten records, incomplete units are rejected
when read, and a second process is refused. Regression tests for the defects found in review.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from iapo_gym.live.builder import build_table
from iapo_gym.live.checkpoint import CheckpointError, CheckpointLog, read_units, repair, scan, seal
from iapo_gym.live.source import recording_to_table
from iapo_gym.live.specs import arithmetic_queries, load_spec


def _unit(i: int, n: int = 2, **kw):
    return {"kind": "unit", "key": f"k{i}", "start": 0, "n": n, "seed": i, "texts": [f"t{i}"] * n,
            "prompt_tokens": 3, "completion_tokens": [1] * n, "answers": [str(i)] * n, **kw}


def _log(path, k=14):
    log = CheckpointLog.open(path, {"task": "t"})
    log.add([_unit(i) for i in range(k)])
    log.close()
    return path.read_bytes()


def test_damaged_header_is_refused_and_left_intact(tmp_path):
    path = tmp_path / "c.jsonl"
    data = _log(path)
    for bad in (b"\n" + data, b"X" + data[1:], b"\xff" + data[1:]):
        path.write_bytes(bad)
        with pytest.raises(CheckpointError, match="line 1 is not a checkpoint header.*left untouched"):
            CheckpointLog.open(path, {"task": "t"})
        assert path.read_bytes() == bad  # nothing truncated


def test_bad_line_in_the_middle_keeps_every_valid_unit_after_it(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = _log(path).split(b"\n")
    lines[7] = lines[7][:20] + b"#" + lines[7][21:]  # one flipped byte in unit 6
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    log = CheckpointLog.open(path, {"task": "t"})
    assert sorted(k for k, _ in log.units) == sorted(f"k{i}" for i in range(14) if i != 6)  # 13 of 14 kept
    assert [n for n, _ in log.damaged] == [8]
    log.add([_unit(6)])  # regenerated unit appended; the damaged line stays in place
    log.close()
    assert path.read_bytes().startswith(before)
    with pytest.raises(CheckpointError, match="line 8"):
        read_units(path)  # refuses to use the file silently
    with pytest.warns(UserWarning, match="line 8"):
        assert len(read_units(path, on_damage="skip")) == 14


def test_checksum_catches_a_rewritten_answer(tmp_path):
    path = tmp_path / "c.jsonl"
    text = _log(path, 3).decode()
    path.write_text(text.replace('"answers":["1","1"]', '"answers":["7","1"]'))
    s = scan(path)
    assert [(n, why) for n, why in s.damaged] == [(3, "checksum mismatch (the record was altered)")]
    assert {r["key"] for r in s.records if r["kind"] == "unit"} == {"k0", "k2"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b"{\"kind\": \"unit\"}", "no checksum"),
        (b"\x80\x81binary", "not UTF-8"),
        (json.dumps(seal({**_unit(9), "texts": ["only one"]})).encode(), "holds 1 completions, expected n=2"),
        (json.dumps(seal({**_unit(9), "completion_tokens": [-1, 2]})).encode(), "completion_tokens"),
        (json.dumps(seal({k: v for k, v in _unit(9).items() if k != "key"})).encode(), "'key'"),
        (json.dumps(seal({**_unit(9), "answers": ["1"]})).encode(), "'answers' must be n"),
    ],
)
def test_invalid_records_are_reported_not_crashes(tmp_path, line, why):
    path = tmp_path / "c.jsonl"
    _log(path, 2)
    with open(path, "ab") as f:
        f.write(line + b"\n")
    with open(path, "a") as f:
        f.write(json.dumps(seal(_unit(5))) + "\n")
    log = CheckpointLog.open(path, {"task": "t"})
    assert len(log.damaged) == 1 and why in log.damaged[0][1] and log.damaged[0][0] == 4
    assert ("k5", 0) in log.units  # the unit after the bad line is kept
    log.close()


def test_torn_tail_is_kept_and_reported_never_truncated(tmp_path):
    path = tmp_path / "c.jsonl"
    _log(path, 2)
    with open(path, "a") as f:
        f.write('{"kind":"unit","key":"k9","te')  # a crash mid-write
    torn = path.read_bytes()
    log = CheckpointLog.open(path, {"task": "t"})
    assert len(log.units) == 2 and log.damaged == [(4, "a write cut short (no newline)")]
    log.add([_unit(9)])
    log.close()
    assert path.read_bytes().startswith(torn)  # the torn bytes are still there
    log = CheckpointLog.open(path, {"task": "t"})
    assert ("k9", 0) in log.units and [n for n, _ in log.damaged] == [4]
    log.close()
    orig, bad = repair(path)
    assert orig.read_bytes().startswith(torn) and bad.read_bytes() == b'{"kind":"unit","key":"k9","te\n'
    assert scan(path).damaged == [] and len(read_units(path)) == 3


def test_second_process_and_other_task_are_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    log = CheckpointLog.open(path, {"task": "t"})
    with pytest.raises(CheckpointError, match="in use by another build"):
        CheckpointLog.open(path, {"task": "t"})
    log.close()
    with pytest.raises(CheckpointError, match="belongs to task 't'"):
        CheckpointLog.open(path, {"task": "other"})
    path2 = tmp_path / "old.jsonl"
    path2.write_text(json.dumps({"kind": "header", "task": "t"}) + "\n")
    with pytest.raises(CheckpointError, match="older iapo-gym"):
        CheckpointLog.open(path2, {"task": "t"})


def test_recording_to_table_refuses_or_reports_a_partial_file(tmp_path):
    spec = load_spec("smolarith").with_overrides(prompts=load_spec("smolarith").prompts[:2], pool=2)
    queries = arithmetic_queries(5)
    rec = tmp_path / "run.jsonl"
    with open(rec, "w") as f:
        for q in range(5):
            for p in range(2):
                r = {"kind": "unit", "p": p, "q": q, "n": 2, "seed": 0, "texts": [queries[q].gold, "x"],
                     "prompt_tokens": 1, "completion_tokens": [2, 2], "answers": [queries[q].gold, None]}
                line = json.dumps(seal(r))
                if (p, q) == (1, 1):
                    line = line.replace('"n": 2', '"n": 3')  # damaged: checksum fails
                f.write(line + "\n")
    with pytest.raises(CheckpointError, match="line 4"):
        recording_to_table(rec, spec, queries)
    t = recording_to_table(rec, spec, queries, on_damage="skip")
    # all 5 queries were pulled; query 1 lost a cell, so 4 remain: 0, 2, 3, 4 (not a prefix of 1)
    assert t.query_ids == tuple(queries[q].id for q in (0, 2, 3, 4))
    assert t.provenance["damaged_lines_skipped"][0][0] == 4
    np.testing.assert_allclose(t.answer_probs[:, :, 0], 0.5)


def test_build_after_damage_regenerates_only_the_damaged_unit(tmp_path):
    from iapo_gym.live.testserver import FakeChatServer

    spec = load_spec("smolarith").with_overrides(prompts=load_spec("smolarith").prompts[:2], pool=2)
    queries = arithmetic_queries(4)
    from iapo_gym.live.backends import OpenAIBackend

    with FakeChatServer() as srv:
        be = OpenAIBackend("m", srv.base_url, spec.sampling, concurrency=2)
        _, s1 = build_table(spec, be, queries, tmp_path / "t", progress=False)
        ckpt = tmp_path / "t.checkpoint.jsonl"
        lines = ckpt.read_text().split("\n")
        lines[3] = lines[3].replace("The answer", "The Answer")  # rewritten text in the third unit
        ckpt.write_text("\n".join(lines))
        n0 = len(srv.requests)
        with pytest.warns(UserWarning, match="1 damaged line"):
            _, s2 = build_table(spec, be, queries, tmp_path / "t2", checkpoint=ckpt, progress=False)
        be.close()
    assert s1.units_generated == 8 and s2.units_generated == 1 and len(srv.requests) - n0 == 1
