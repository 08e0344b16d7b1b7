"""``iapo-gym build`` end to end against the local test server: dry run (with a checkpoint and a
probe), token cap, quarantine and exclusion through the command line, and one-line errors.
"""

from __future__ import annotations

import json

import pytest

from iapo_gym.cli import main
from iapo_gym.live.testserver import FakeChatServer, Fault


def _build(srv, tmp_path, *extra):
    return main(["build", "smolarith", "--backend", "openai", "--base-url", srv.base_url, "--served-model-name", "m",
                 "--queries", "4", "--prompts", "2", "--pool", "3", "--out", str(tmp_path / "t"), "--no-progress",
                 "--retries", "0", *extra])


def test_dry_run_counts_what_is_left_and_prices_it(tmp_path, capsys):
    with FakeChatServer(tokens_per_completion=10) as srv:
        assert _build(srv, tmp_path, "--dry-run", "--price-in", "1", "--price-out", "2") == 0
        out = capsys.readouterr().out
        assert "4 queries x 2 prompts = 8 (0 in the checkpoint, 0 quarantined, 8 to generate)" in out
        assert "completions 24 to generate (pool 3)" in out and "requests   8" in out
        assert "<= 960 (max_tokens per completion)" in out  # 24 x 40
        assert len(srv.requests) == 0  # a dry run sends nothing
        assert _build(srv, tmp_path, "--max-tokens-total", "100", "--concurrency", "1") == 0  # stops after a few units
        assert "stopped at --max-tokens-total 100" in capsys.readouterr().out
        done = len(srv.requests)
        assert 2 <= done < 8
        assert _build(srv, tmp_path, "--dry-run", "--probe", "2", "--price-out", "1000000") == 0
        out = capsys.readouterr().out
        left = 8 - done
        assert f"({done} in the checkpoint, 0 quarantined, {left} to generate)" in out
        assert f"completion tokens  ~{30 * left:,}" in out and "probe mean 10.0 per completion over 2" in out
        assert f"expected cost: ~${30 * left:,.2f}" in out and len(srv.requests) == done + 2


def test_quarantine_through_the_command_line(tmp_path, capsys):
    from iapo_gym.live.specs import arithmetic_queries

    bad = arithmetic_queries(4)[1].text
    with FakeChatServer(faults=[Fault("status", match=bad, status=400, body="context too long", times=None)]) as srv:
        assert _build(srv, tmp_path) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "2 unit(s) were refused" in err and "context too long" in err
        assert _build(srv, tmp_path, "--exclude-failed") == 0
        assert "excluded 1 queries with 2 refused units" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["provenance"]["excluded_queries"][0]["query_id"] == arithmetic_queries(4)[1].id


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--header", "no-colon"], "--header 'no-colon': expected 'NAME: VALUE'"),
        (["--extra-body", "{bad"], "--extra-body is not JSON"),
        (["--extra-body", "[1]"], "--extra-body must be a JSON object"),
        (["--pool", "0"], "--pool must be >= 1"),
    ],
)
def test_bad_arguments_get_one_clear_line(tmp_path, capsys, extra, message):
    with FakeChatServer() as srv:
        assert _build(srv, tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_repair_checkpoint_from_the_command_line(tmp_path, capsys):
    from iapo_gym.live.checkpoint import read_units, scan

    with FakeChatServer() as srv:
        assert _build(srv, tmp_path) == 0
    ckpt = tmp_path / "t.checkpoint.jsonl"
    lines = ckpt.read_text().splitlines()
    lines[2] = lines[2].replace("answer", "ANSWER")
    ckpt.write_text("\n".join(lines) + "\n")
    assert len(scan(ckpt).damaged) == 1
    assert main(["build", "smolarith", "--out", str(tmp_path / "t"), "--repair-checkpoint"]) == 0
    assert "damaged lines in t.checkpoint.jsonl.damaged-" in capsys.readouterr().out
    assert scan(ckpt).damaged == [] and len(read_units(ckpt)) == 7
    assert sorted(p.name.split(".")[-1].split("-")[0] for p in tmp_path.glob("t.checkpoint.jsonl.*")) == ["damaged", "orig"]
