"""The experiment runner's building blocks: arguments, results.csv, statistics, TensorBoard, claims."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from iapo_gym.experiments import report, stats, train
from iapo_gym.experiments.cliargs import build_parser, field_docs, parse_dataclass
from iapo_gym.experiments.results import COLUMNS, Results, ResultsError, ResultsFile


def make_row(env="E", agent="a", budget=1000, seed=0, acr=0.5, oracle=0.8, n_ctx=3, **kw) -> dict:
    policy = {
        "prompt": [seed % 3] * n_ctx,
        "n": [1 + seed % 4] * n_ctx,
        "n_mean": [1.0 + seed % 4] * n_ctx,
        "optimal": [1.0 if acr >= oracle else 0.0] * n_ctx,
        "best_prompt": [0] * n_ctx,
        "best_n": [2] * n_ctx,
    }
    row = dict(env=env, contexts="finite", agent=agent, budget=budget, seed=seed, acr=acr, oracle_acr=oracle,
               regret=oracle - acr, optimal_frac=float(acr >= oracle), budget_used=budget, wall_s=0.01, policy=policy)
    row.update(kw)
    return row


# --------------------------------------------------------------------------- arguments
@dataclass
class _Demo:
    runs: int = 3
    """independent   runs
    per configuration"""
    name: str = "x"
    """a name"""
    fast: bool = False
    """go fast"""


def test_field_docstrings_become_help_and_flags_parse() -> None:
    assert field_docs(_Demo) == {"runs": "independent runs per configuration", "name": "a name", "fast": "go fast"}
    helptext = build_parser(_Demo).format_help()
    assert "independent runs per configuration (default: 3)" in helptext
    assert parse_dataclass(_Demo, ["--runs", "7", "--fast"]) == _Demo(runs=7, name="x", fast=True)
    assert parse_dataclass(_Demo, []) == _Demo()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--runs", "7", "--runs", "8"], "--runs given more than once"),
        (["--name", "a", "--fast", "--name", "b"], "--name given more than once"),
        (["--fast", "--no-fast"], "--fast / --no-fast given more than once"),
    ],
)
def test_an_option_given_twice_is_refused_not_silently_overridden(argv, named, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_dataclass(_Demo, argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_train_refuses_two_agent_args_instead_of_dropping_the_first(capsys) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--agents", "a=psst,b=psst", "--agent-args", "a:k=1", "--agent-args", "b:k=2"])
    assert "--agent-args given more than once" in capsys.readouterr().err
    joined = train.parse_args(["--agents", "a=psst,b=psst", "--agent-args", "a:k=1;b:k=2"])
    assert joined.agent_args == "a:k=1;b:k=2"


def test_train_args_help_lists_every_field() -> None:
    helptext = build_parser(train.Args).format_help()
    for flag in ("--env", "--agents", "--budgets", "--runs", "--out", "--reference", "--preset", "--no-track"):
        assert flag in helptext
    assert "comma-separated" in helptext


def test_budgets_parse_with_k_suffix_and_reject_nonsense() -> None:
    assert train.parse_budgets("5k, 1000,1k") == [1000, 5000]
    with pytest.raises(train.ArgumentError, match="not a number"):
        train.parse_budgets("1000,lots")
    with pytest.raises(train.ArgumentError, match="positive whole number"):
        train.parse_budgets("0")


def test_unknown_agent_error_lists_the_registered_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from iapo_gym.agents import AGENTS

    assert train.main(["--agents", "psst,nosuchagent", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "unknown agent(s) nosuchagent" in err
    for name in AGENTS:
        assert name in err


def test_preset_fills_only_what_was_not_given() -> None:
    args = train.parse_args(["--preset", "reproduction", "--runs", "3"])
    assert args.runs == 3
    assert args.budgets == "1k,2k,5k,10k,20k,50k"
    assert args.report.endswith("REPRODUCTION.md") and args.skip_missing
    assert "psst_model" in args.agents.split(",")  # the model-based agent is part of the reproduction
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "nope"])


# --------------------------------------------------------------------------- results.csv
def test_results_file_appends_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    store = ResultsFile(path)
    store.append([make_row(seed=0), make_row(seed=1, acr=0.25)])
    store.append([make_row(seed=1, acr=0.99)])  # a duplicate key is not written twice
    again = ResultsFile(path)
    assert [r["seed"] for r in again.rows] == [0, 1]
    assert again.rows[1]["acr"] == 0.25 and again.rows[1]["policy"]["n"] == [2, 2, 2]
    assert again.done(("E", "finite", "a", 1000, 1)) and not again.done(("E", "finite", "a", 1000, 2))
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_torn_last_line_is_dropped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    ResultsFile(path).append([make_row(seed=0), make_row(seed=1)])
    good = path.read_text()
    path.write_text(good + good.splitlines()[-1][:25])  # a crash in the middle of an append
    store = ResultsFile(path)
    assert [r["seed"] for r in store.rows] == [0, 1]
    assert path.read_text() == good
    store.append([make_row(seed=2)])
    assert [r["seed"] for r in ResultsFile(path).rows] == [0, 1, 2]


def test_corrupt_middle_line_and_foreign_header_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    ResultsFile(path).append([make_row(seed=0), make_row(seed=1)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "garbage,row\n" + lines[2])
    with pytest.raises(ResultsError, match="line 2 is corrupt"):
        ResultsFile(path)
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ResultsError, match="another --out"):
        ResultsFile(path)


# --------------------------------------------------------------------------- statistics
def _paired_results(rng: np.random.Generator, n: int = 30) -> Results:
    rows = []
    for b in (100, 1000):
        for s in range(n):
            base = rng.normal(0.5, 0.1)
            rows.append(make_row(agent="ref", budget=b, seed=s, acr=base + 0.05))
            rows.append(make_row(agent="worse", budget=b, seed=s, acr=base + rng.normal(0, 0.02)))
            rows.append(make_row(agent="same", budget=b, seed=s, acr=base + 0.05))
    return Results.from_rows(rows)


def test_wilcoxon_table_equals_scipy_on_the_paired_runs() -> None:
    res = _paired_results(np.random.default_rng(3))
    table = stats.wilcoxon_table(res, reference="ref")
    assert {(r.agent, r.budget) for r in table} == {("worse", 100), ("worse", 1000), ("same", 100), ("same", 1000)}
    for r in table:
        m_a, m_r = res.mask(agent=r.agent, budget=r.budget), res.mask(agent="ref", budget=r.budget)
        a, ref = res.acr[m_a][np.argsort(res.seed[m_a])], res.acr[m_r][np.argsort(res.seed[m_r])]
        if r.agent == "same":  # identical runs: no evidence of a difference
            assert (r.statistic, r.p_value, r.verdict) == (0.0, 1.0, "n.s.")
            continue
        expect = sps.wilcoxon(a, ref, alternative="two-sided")
        assert r.statistic == pytest.approx(expect.statistic) and r.p_value == pytest.approx(expect.pvalue)
        assert r.p_value < 1e-4 and r.verdict == "reference better"
        assert r.mean_diff == pytest.approx(np.mean(a - ref))


def test_mean_ci_is_the_t_interval() -> None:
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mu, h = stats.mean_ci(x)
    assert mu == 3.5
    assert h == pytest.approx(sps.t.ppf(0.975, 3) * x.std(ddof=1) / 2)
    assert stats.mean_ci([2.0]) == (2.0, 0.0)


# --------------------------------------------------------------------------- claims
def test_claims_verdicts_follow_the_numbers() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for b in (1000, 5000, 20000):
        for s in range(25):
            base = rng.normal(0.6, 0.05)
            rows += [
                make_row(env="IAPO-SynthBernoulli-v0", agent="psst", budget=b, seed=s, acr=base + 0.1),
                make_row(env="IAPO-SynthBernoulli-v0", agent="uniform", budget=b, seed=s, acr=base),
                # topk1 only ties with uniform (so half of claim 1's comparisons fail)
                make_row(env="IAPO-SynthBernoulli-v0", agent="topk1", budget=b, seed=s, acr=base + rng.normal(0, 0.01)),
                # seqhalving beats psst significantly: the PSST-vs-halving claim does not hold
                make_row(env="IAPO-SynthBernoulli-v0", agent="seqhalving", budget=b, seed=s, acr=base + 0.2),
            ]
    by_name = {c.claim: c for c in report.check_claims(Results.from_rows(rows))}
    c1 = next(c for n, c in by_name.items() if n.startswith("PSST and Top-K"))
    # psst > uniform everywhere, topk1 ~ uniform: half the comparisons hold
    assert c1.verdict == "partly holds" and "3 of 6" in c1.detail
    c_sh = next(c for n, c in by_name.items() if "Sequential Halving" in n)
    assert c_sh.verdict == "does not hold" and all(x.reversed for x in c_sh.comparisons)
    c_dec = next(c for n, c in by_name.items() if "deceptive" in n)
    assert c_dec.verdict in ("holds", "partly holds") and "T=20000" in c_dec.detail
    c2 = next(c for n, c in by_name.items() if n.startswith("IAPO methods"))
    assert c2.verdict == "holds" and {x.worse for x in c2.comparisons} == {"topk1"}  # psst > topk1 at every budget


def test_report_keeps_the_hand_written_section(tmp_path: Path) -> None:
    res = _paired_results(np.random.default_rng(1), n=8)
    inp = report.ReportInputs(res, ["ref", "worse"], [], {"IAPO-MATH-v0": "missing"}, {}, {}, "python train.py")
    path = tmp_path / "REPRODUCTION.md"
    text = report.render_report(inp, path)
    assert "Not run (outcome table not installed here): MATH" in text
    assert "| worse |" in text and report.HAND_BEGIN in text
    path.write_text(text.replace("_Not written yet", "My reading of the numbers. _Not written yet"))
    report.write_report(inp, path)
    assert "My reading of the numbers." in path.read_text()


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_scalars_read_back_equal_the_rows(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from iapo_gym.experiments.tblog import ConfigLogger

    rows = {b: [make_row(budget=b, seed=s, acr=0.1 * s + b / 1e4) for s in range(4)] for b in (1000, 5000)}
    logger = ConfigLogger(tmp_path, "IAPO-X-v0", "psst", [0, 1, 2, 3], ["low", "mid", "high cost"], {"k": 4, "obj": object()})
    for b, rs in rows.items():
        logger.log_budget(b, rs)
    logger.close()
    assert logger.dir.name == "IAPO-X-v0__psst__0x4__finite"
    ea = EventAccumulator(str(logger.dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    acr = {e.step: e.value for e in ea.Scalars("charts/acr")}
    assert acr == pytest.approx({b: np.mean([r["acr"] for r in rs]) for b, rs in rows.items()}, rel=1e-6)
    n = {e.step: e.value for e in ea.Scalars("policy/n/c2_high_cost")}
    assert n == pytest.approx({b: np.mean([r["policy"]["n_mean"][2] for r in rs]) for b, rs in rows.items()})
    assert "policy/prompt/c0_low" in ea.Tags()["histograms"] and "policy/prompt/c0_low" not in ea.Tags()["scalars"]
    text = {e.step: e.tensor_proto.string_val[0].decode() for e in ea.Tensors("policy/choices/text_summary")}
    assert sorted(text) == [1000, 5000] and "| c2_high_cost | 0 (50%), 1 (25%), 2 (25%) | 2.50 |" in text[5000]
    assert "hparams" in ea.PluginTagToContent("hparams") or ea.PluginTagToContent("hparams")


# --------------------------------------------------------------------------- exact evaluation
@pytest.mark.parametrize("strategy", ["mv", "bon"])
def test_test_query_subtable_gives_the_same_exact_q(strategy: str) -> None:
    from iapo_gym import oracle
    from iapo_gym.experiments.evaluate import query_subtable
    from iapo_gym.tables.testing import example_table

    table = example_table(strategy, seed=5, n_prompts=3, n_queries=25, n_max=5)
    test = np.array([1, 4, 9, 17, 24])
    sub = query_subtable(table, test)
    assert sub.n_queries == 5 and sub.query_ids == tuple(table.query_ids[i] for i in test)
    assert np.array_equal(oracle.q_values(sub), oracle.q_values(table, test))
    assert not oracle.q_values(table, test[:2]).tolist() == oracle.q_values(sub).tolist()  # the subset matters


def test_read_only_access_never_rewrites_a_file_being_appended(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    ResultsFile(path).append([make_row(seed=0)])
    torn = path.read_text() + "E,finite,a,10"
    path.write_text(torn)
    assert len(Results.read(path)) == 1 and path.read_text() == torn


# --------------------------------------------------------------------------- results.csv under damage (issue 12, item 7)
def test_empty_results_file_gets_its_header_on_the_first_append(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("")
    ResultsFile(path).append([make_row(seed=0)])
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)
    assert [r["seed"] for r in ResultsFile(path).rows] == [0]


@pytest.mark.parametrize("damage", ["no line end after the header", "no header"])
def test_damaged_header_is_repaired_losslessly_and_the_original_kept(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "results.csv"
    ResultsFile(path).append([make_row(seed=0), make_row(seed=1)])
    good = path.read_text()
    header, body = good.split("\n", 1)
    bad = header + body if damage == "no line end after the header" else body
    path.write_text(bad)
    store = ResultsFile(path, repair=False)  # a reader repairs in memory only
    assert [r["seed"] for r in store.rows] == [0, 1] and path.read_text() == bad
    store = ResultsFile(path)
    assert [r["seed"] for r in store.rows] == [0, 1] and path.read_text() == good
    kept = list(tmp_path.glob("results.csv.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == bad and kept[0].name in store.repaired


def test_non_finite_metrics_are_refused_on_append_and_on_read(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    store = ResultsFile(path)
    with pytest.raises(ResultsError, match=r"refusing to record acr=nan .*seed=3"):
        store.append([make_row(seed=2), make_row(seed=3, acr=float("nan"))])
    assert not path.exists()  # nothing of the batch was written
    store.append([make_row(seed=0), make_row(seed=1)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1].replace(",0.5,", ",inf,", 1) + lines[2])
    with pytest.raises(ResultsError, match="line 2 is corrupt .*acr is inf"):
        ResultsFile(path)


def test_duplicate_keys_are_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    ResultsFile(path).append([make_row(seed=0, acr=0.1), make_row(seed=1)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[1].replace(",0.1,", ",0.7,", 1), lines[2]]))  # two writers appended
    store = ResultsFile(path)
    assert store.duplicates == 2 and [(r["seed"], r["acr"]) for r in store.rows] == [(0, 0.1), (1, 0.5)]
    assert len(Results.read(path)) == 2


def test_legacy_files_without_agent_config_are_read_and_upgraded(tmp_path: Path) -> None:
    import csv as _csv
    import io

    path = tmp_path / "results.csv"
    ResultsFile(path).append([make_row(seed=0), make_row(seed=1)])
    buf = io.StringIO()
    _csv.writer(buf, lineterminator="\n").writerows(r[:-1] for r in _csv.reader(path.read_text().splitlines()))
    path.write_text(buf.getvalue())  # the columns before agent_config existed
    assert [r["seed"] for r in ResultsFile(path, repair=False).rows] == [0, 1]
    store = ResultsFile(path)
    store.append([make_row(seed=2, agent_config={"agent": "a", "source": "zoo", "config": {}})])
    again = ResultsFile(path)
    assert [r["seed"] for r in again.rows] == [0, 1, 2] and again.rows[2]["agent_config"].startswith('{"agent":"a"')
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_output_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path: Path) -> None:
    import subprocess
    import sys

    from iapo_gym.experiments.results import OutputLock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from iapo_gym.experiments.results import OutputLock; "
         f"OutputLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsError, match=f"another train.py \\(pid {holder.pid}\\) is writing to"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path):  # the kernel dropped the dead holder's lock
        pass


# --------------------------------------------------------------------------- figures
def _captured(monkeypatch: pytest.MonkeyPatch) -> list:
    from iapo_gym.experiments import plots

    figs: list = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=110: figs.append(fig) or Path(path))
    return figs


def test_acr_plot_has_the_oracle_line_with_a_single_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from iapo_gym.experiments.plots import plot_acr_vs_budget

    figs = _captured(monkeypatch)
    res = Results.from_rows([make_row(agent=a, seed=s, acr=0.3 + 0.1 * s, oracle=0.9) for a in ("a", "b") for s in range(4)])
    plot_acr_vs_budget(res, "unused.png")
    ax = figs[0].axes[0]
    oracle = [ln for ln in ax.get_lines() if ln.get_label() == "oracle"]
    assert len(oracle) == 1 and list(oracle[0].get_ydata()) == [0.9, 0.9]  # drawn across the panel
    assert {c.get_label() for c in ax.containers} == {"a", "b"}  # each agent a point with its interval


def test_binned_cost_labels_are_short_and_few(monkeypatch: pytest.MonkeyPatch) -> None:
    from iapo_gym.experiments.plots import plot_n_vs_cost

    figs = _captured(monkeypatch)
    rng = np.random.default_rng(0)
    cw = np.sort(rng.uniform(0, 1, 12))  # twelve bins with long-decimal centres
    rows = [make_row(env="E", seed=s, n_ctx=12) for s in range(3)]
    plot_n_vs_cost(Results.from_rows(rows), "unused.png", {"E": cw.tolist()}, binned=True)
    labels = [t.get_text() for t in figs[0].axes[0].get_xticklabels()]
    assert 1 < len(labels) <= 8 and all(len(t) <= 6 for t in labels)  # two significant digits
    assert all(t.get_rotation() == 45 for t in figs[0].axes[0].get_xticklabels())


def test_regret_difference_panel_is_the_paired_mean_and_marks_significance(monkeypatch: pytest.MonkeyPatch) -> None:
    from iapo_gym.experiments.plots import plot_regret_difference

    figs = _captured(monkeypatch)
    rows = []
    for s in range(20):
        rows.append(make_row(agent="ref", seed=s, acr=0.5 + 0.01 * s, oracle=0.9))
        rows.append(make_row(agent="a", seed=s, acr=0.5 + 0.01 * s - 0.02 - 0.001 * s, oracle=0.9))  # always worse
    plot_regret_difference(Results.from_rows(rows), "unused.png", "ref")
    ax = figs[0].axes[0]
    (bar,) = ax.containers
    y = bar.lines[0].get_ydata()[0]
    assert y == pytest.approx(np.mean([0.02 + 0.001 * s for s in range(20)]))
    from matplotlib.collections import PathCollection

    points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert len(points) == 1 and points[0].get_facecolor()[0][:3].tolist() != [1.0, 1.0, 1.0]  # p < 0.05: filled


def test_synthetic_worlds_are_drawn_once_per_seed_and_the_cache_is_bounded(monkeypatch) -> None:
    from iapo_gym.tasks import load_task_table

    monkeypatch.setattr(train, "_WORLDS", type(train._WORLDS)())
    make_a, make_b = train.env_factory("IAPO-SynthBernoulli-v0", 50), train.env_factory("IAPO-SynthBernoulli-v0", 90)
    a, b, c = make_a(4), make_b(4), make_a(5)
    assert a.table is b.table and a.table is not c.table  # every cell of seed 4 fits the same world object
    assert a.ledger is not b.ledger and (a.ledger.budget, b.ledger.budget) == (50, 90)
    fresh = load_task_table("SynthBernoulli", world_seed=4)
    np.testing.assert_array_equal(a.table.answer_probs, fresh.answer_probs)  # the same world as drawn afresh
    np.testing.assert_array_equal(a.train_queries, train.env_factory("IAPO-SynthBernoulli-v0", 1)(4).train_queries)
    assert train.env_factory("IAPO-MATH-v0", 1) is not None and len(train._WORLDS) == 2  # real tasks: no world
    monkeypatch.setattr(train, "WORLD_CACHE_BYTES", train._table_nbytes(a.table) * 2)
    for seed in range(6, 10):
        make_a(seed)
    assert list(train._WORLDS) == [("SynthBernoulli", 8), ("SynthBernoulli", 9)]  # least recently used out
