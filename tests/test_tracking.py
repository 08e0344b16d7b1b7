"""``train.py --tracker wandb|mlflow``: the trackers get the TensorBoard run's scalars, read back from their files."""

from __future__ import annotations

import importlib
import importlib.util
import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tensorboardX", reason="the train extra (tensorboardX) is not installed")

from iapo_gym.experiments import tracking, train  # noqa: E402

ENV = "IAPO-SynthBernoulli-v0"
BASE = ["--env", ENV, "--agents", "psst", "--runs", "3", "--no-plots", "--no-progress"]


def _tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every mirrored scalar series of one TensorBoard run, read back with TensorBoard's own reader.

    The per-seed scalars (``seeds/...``) stay TensorBoard-only (checked to be there and not mirrored).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert any(t.startswith("seeds/regret/") for t in tags)
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in tags if not tag.startswith("seeds/")}


def _same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """Same steps, same values up to TensorBoard's float32 storage."""
    got, want = sorted(got), sorted(want)
    return [s for s, _ in got] == [s for s, _ in want] and [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def _tb_run(out: Path) -> Path:
    runs = [p for p in (out / "tb").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


NO_MLFLOW = importlib.util.find_spec("mlflow") is None
NO_WANDB = importlib.util.find_spec("wandb") is None


@pytest.mark.skipif(NO_MLFLOW, reason="mlflow is not installed (pip install 'iapo-gym[mlflow]')")
def test_mlflow_run_mirrors_every_tensorboard_scalar_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3.x wants an opt-in for the file store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "iapo-test")
    out = tmp_path / "out"
    assert train.main([*BASE, "--budgets", "500,1k", "--out", str(out), "--tracker", "mlflow"]) == 0
    run_dir = _tb_run(out)
    client = MlflowClient()
    exp = client.get_experiment_by_name("iapo-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # one MLflow run per configuration
    run = runs[0]
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["env"] == ENV and run.data.params["agent"] == "psst" and run.data.params["runs"] == "3"
    tb = _tb_scalars(run_dir)
    assert {"charts/acr", "charts/regret", "hparam/acr"} <= set(tb) and any(t.startswith("policy/n/") for t in tb)
    assert set(run.data.metrics) == set(tb)  # every scalar, no extra
    for tag, series in tb.items():
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)]
        assert _same(got, series), (tag, got, series)
    assert [s for s, _ in tb["charts/acr"]] == [500, 1000]

    # resuming with a larger budget continues the same MLflow run (its id is kept beside the event files)
    assert train.main([*BASE, "--budgets", "500,1k,2k", "--out", str(out), "--tracker", "mlflow"]) == 0
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run.info.run_id]
    acr = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "charts/acr"))
    new = [p for p in _tb_scalars(run_dir)["charts/acr"] if p[0] == 2000]  # the new event file's point
    assert _same(acr, tb["charts/acr"] + new)
    assert [s for s, _ in acr] == [500, 1000, 2000]


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline ``run-<id>.wandb`` file.

    wandb's transaction log is LevelDB's log format (32 KiB blocks of crc32 / length / kind framed
    chunks) after a 7-byte ``:W&B`` header; wandb >= 0.19 ships no Python reader for it any more.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _wandb_records_when_written(path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of ``path`` once its writer has flushed them through the ``exit`` record.

    ``run.finish()`` hands the log to wandb's service process, which may still be writing the file
    when it returns (seen on a loaded machine: the file held its header only); poll, bounded in time.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        recs = _wandb_records(path) if path.stat().st_size >= 7 else []
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.skipif(NO_WANDB, reason="wandb is not installed (pip install 'iapo-gym[wandb]')")
def test_wandb_offline_run_per_configuration_holds_the_tensorboard_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true", "WANDB_PROJECT": "iapo-test"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    # BASE with other agents (an option is given once: a repeat is refused)
    argv = ["psst,uniform" if prev == "--agents" else tok for prev, tok in zip(["", *BASE[:-1]], BASE, strict=True)]
    assert train.main([*argv, "--budgets", "500,1k", "--out", str(out), "--tracker", "wandb"]) == 0
    tb_runs = sorted(p for p in (out / "tb").iterdir() if p.is_dir())
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == len(tb_runs) == 2  # one wandb run per configuration
    by_name = {}
    for f in files:
        recs = _wandb_records_when_written(f)
        (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        config = {_key(i): json.loads(i.value_json) for i in run.config.update}
        history = [
            {_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in recs
            if r.WhichOneof("record_type") == "history"
        ]
        by_name[run.display_name] = (run.run_id, config, history)
    assert set(by_name) == {p.name for p in tb_runs}
    for run_dir in tb_runs:
        run_id, config, history = by_name[run_dir.name]
        assert json.loads((run_dir / "trackers.json").read_text())["wandb"] == run_id
        assert config["env"] == ENV and config["agent"] == run_dir.name.split("__")[1] and config["runs"] == 3
        tb = _tb_scalars(run_dir)
        got: dict[str, list[tuple[int, float]]] = {}
        for row in history:
            for tag, v in row.items():
                if not tag.startswith("_") and tag != "budget":
                    got.setdefault(tag, []).append((int(row["budget"]), v))
        assert set(got) == set(tb)
        for tag, series in tb.items():
            assert _same(got[tag], series), (tag, got[tag], series)


def test_missing_tracker_library_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def no_wandb(name: str, *a: Any, **kw: Any) -> Any:
        if name.split(".")[0] == "wandb":
            raise ModuleNotFoundError("No module named 'wandb'")
        return real(name, *a, **kw)

    monkeypatch.setattr(tracking.importlib, "import_module", no_wandb)
    out = tmp_path / "out"
    assert train.main([*BASE, "--budgets", "500", "--out", str(out), "--tracker", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tracker wandb" in err[0] and "pip install 'iapo-gym[wandb]'" in err[0], err
    assert not (out / "results.csv").exists()  # stopped before anything ran


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--tracker", "neptune"], "unknown tracker(s) neptune; available: wandb, mlflow"),
     (["--tracker", "mlflow", "--no-track"], "drop --no-track")],
)
def test_bad_tracker_option_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert train.main([*BASE, "--budgets", "500", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_parse_trackers_keeps_order_and_drops_duplicates() -> None:
    assert tracking.parse_trackers(" MLflow,wandb,mlflow ") == ("mlflow", "wandb")
    assert tracking.parse_trackers("") == ()
