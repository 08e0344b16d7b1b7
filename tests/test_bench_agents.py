"""benchmarks/bench_agents.py: which reference each ratio uses, and the worker that times the authors' code."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_agents", REPO / "benchmarks" / "bench_agents.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_prefers_this_runs_measurement_then_file_then_fixed() -> None:
    bench = load_bench()
    timed = {("ucb", 5000): 1.3, ("psst", 5000): 0.7}
    files = {("ucb", 5000): 2.0, ("egreedy", 5000): 1.9}
    assert bench.reference("ucb", 5000, files, timed) == (1.3, "measured")
    assert bench.reference("egreedy", 5000, files, timed) == (1.9, "file")
    assert bench.reference("psst", 50000, files, timed) == (3.8, "fixed")
    # no code of theirs: their PSST, measured in this run when it was, else the fixed number
    assert bench.reference("seqhalving", 5000, files, timed) == (0.7, "PSST-ref")
    assert bench.reference("seqhalving", 50000, files, timed) == (3.8, "PSST-ref")
    assert bench.reference("seqhalving", 1000, {}, {}) == (None, "-")
    # python_floor is compared with their Random only (never with their PSST)
    assert bench.reference("python_floor", 5000, files, {**timed, ("random", 5000): 2.8e-4}) == (2.8e-4, "Random")
    assert bench.reference("python_floor", 5000, files, timed) == (None, "-")


def test_python_floor_calls_make_env_once_per_seed_and_returns_one_object_each() -> None:
    bench = load_bench()
    calls: list[int] = []
    out = bench.python_floor(calls.append, [3, 1, 4, 1])
    assert calls == [3, 1, 4, 1]
    assert [p.seed for p in out] == [3, 1, 4, 1]
    assert len({id(p) for p in out}) == 4  # one new object per run, even for a repeated seed


def test_batches_for_repeats_a_fast_batch_until_the_timing_is_long_enough() -> None:
    bench = load_bench()
    assert bench.batches_for(60e-6, 0.05, 100) == 100  # a no-op batch: capped
    assert bench.batches_for(0.004, 0.05, 100) == 13  # ceil(0.05 / 0.004)
    assert bench.batches_for(0.05, 0.05, 100) == 1
    assert bench.batches_for(2.0, 0.05, 100) == 1  # a slow batch is timed once
    assert bench.batches_for(0.0, 0.05, 7) == 7  # below the clock's resolution


def test_worker_gives_every_repeated_batch_its_own_envs() -> None:
    """A batch repeated within one timing runs on new envs (built before timing), with the same runs."""
    bench = load_bench()
    worker = bench.Worker(REPO)
    try:
        one = worker.ask(task="SynthBernoulli", agent="psst", budget=1000, seeds=3, warmup=True, batches=1)
        three = worker.ask(task="SynthBernoulli", agent="psst", budget=1000, seeds=3, warmup=False, batches=3)
    finally:
        worker.close()
    assert "error" not in three and 900 <= three["used"] <= 1000
    assert (one["envs"], three["envs"]) == (3, 9)  # 3 seeds x 3 batches, no env timed twice
    assert three["used"] == one["used"]  # the same seeds, the same runs
    # per run = per batch / runs per batch
    assert three["cpu"] == pytest.approx(three["batch_cpu"] / 3)


FAKE_AGENT = '''
import json, random
import numpy as np

class PSSTAgent:
    def __init__(self, strategy="mv"):
        self.strategy = strategy

    def train(self, env, budget):
        print("their agent prints its spend")
        with open(env.log, "a") as fh:
            fh.write(json.dumps({"budget": budget, "split": env.split_seed, "py": random.random(),
                                 "np": float(np.random.random()), "strategy": self.strategy}) + "\\n")
'''

FAKE_ENV = '''
class Env:
    def __init__(self, log):
        self.log = log
        self.split_seed = None

    def combine_and_resplit(self, train_frac=0.8, seed=None, shuffle=True):
        assert train_frac == 0.8
        self.split_seed = seed
'''


def test_authors_worker_drives_their_code_like_their_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in checkout: the worker copies the env per run, resplits with the run's seed, seeds their globals."""
    import random

    import numpy as np

    repo = tmp_path / "IAPO-PSST"
    (repo / "Agents").mkdir(parents=True)
    (repo / "Agents" / "PSST.py").write_text(FAKE_AGENT)
    (repo / "fake_env.py").write_text(FAKE_ENV)
    (repo / "data").mkdir()
    log = tmp_path / "calls.jsonl"
    monkeypatch.syspath_prepend(str(repo))
    import fake_env  # type: ignore[import-not-found]

    with open(repo / "data" / "MATH_final.pkl", "wb") as fh:
        pickle.dump([fake_env.Env(str(log))], fh)
    bench = load_bench()
    requests = [
        {"agent": "psst", "budget": 5000, "runs": 3},
        {"agent": "seqhalving", "budget": 5000, "runs": 1},
        # a fast agent: runs are added until the timing lasts min_time (never reached here), up to max_runs
        {"agent": "psst", "budget": 5000, "runs": 2, "min_time": 60.0, "max_runs": 5, "clock": "cpu"},
        {"agent": "psst", "budget": 5000, "runs": 2, "min_time": 1e-12, "max_runs": 5, "clock": "wall"},
    ]
    monkeypatch.setattr(sys, "stdin", [json.dumps(r) + "\n" for r in requests])
    try:
        bench.authors_worker(str(repo), None)
    finally:
        sys.modules.pop("Agents.PSST", None)
        sys.modules.pop("Agents", None)
    out = capsys.readouterr().out.splitlines()  # their own print went elsewhere: only the answers are here
    answers = [json.loads(line) for line in out]
    assert answers[0] == {"ready": True}
    assert set(answers[1]) == {"wall", "cpu", "runs"} and answers[1]["runs"] == 3 and answers[1]["cpu"] >= 0.0
    assert "seqhalving" in answers[2]["error"]
    assert (answers[3]["runs"], answers[4]["runs"]) == (5, 2)  # up to max_runs; at least runs
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # a fresh env per run, resplit with the run's seed
    assert [c["split"] for c in calls] == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    assert {c["budget"] for c in calls} == {5000} and {c["strategy"] for c in calls} == {"mv"}
    for c in calls:  # their global generators seeded with the run's seed
        random.seed(c["split"])
        np.random.seed(c["split"])  # noqa: NPY002
        assert c["py"] == random.random() and c["np"] == float(np.random.random())  # noqa: NPY002


def test_format_row_flags_a_slower_engine_and_scales_the_authors_time() -> None:
    bench = load_bench()
    best = {"old": {"cpu": 1e-3, "used": 4990.0}, "new": {"cpu": 1.25e-3, "used": 4990.0}}
    row = bench.format_row("psst", 5000, best, (0.5, "measured"), "cpu", True)
    # 1000 and 800 runs/s, new/old 0.80 flagged, 800 runs/s x 0.5 s = 400x the authors
    assert row.split() == ["psst", "5000", "1000.0", "800.0", "0.80!", "4990", "400", "measured", "0.5"]
    skipped = bench.format_row("ucb", 5000, {"new": {"error": "no MATH table"}}, (None, "-"), "cpu", False)
    assert skipped.split()[2:] == ["skipped:", "no", "MATH", "table"]


def test_merge_best_keeps_each_engines_fastest_round_and_the_authors_least_time() -> None:
    bench = load_bench()
    first = {"old": {"cpu": 2e-3, "used": 10.0}, "new": {"cpu": 1e-3, "used": 10.0}}
    second = {"old": {"cpu": 1.5e-3, "used": 10.0}, "new": {"cpu": 1.2e-3, "used": 10.0}}
    best, theirs = bench.merge_best({}, None, (first, None), "cpu")
    assert best == first and theirs is None
    best, theirs = bench.merge_best(best, theirs, (second, 0.4), "cpu")
    assert best == {"old": second["old"], "new": first["new"]} and theirs == 0.4
    best, theirs = bench.merge_best(best, theirs, ({"new": {"error": "no data"}}, 0.5), "cpu")
    assert best["new"] == {"error": "no data"} and best["old"] == second["old"] and theirs == 0.4
