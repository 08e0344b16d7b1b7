"""The report's robust-statistics section: Holm families, directions and aggregates, checked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from test_train_helpers import make_row

from iapo_gym.experiments import report, robust_report
from iapo_gym.experiments import robust_stats as rs
from iapo_gym.experiments.results import Results


def _results(seed: int = 0, n: int = 40) -> Results:
    """Two tasks; 'good' has lower regret than 'ref' on E1 only, 'bad' higher everywhere."""
    rng = np.random.default_rng(seed)
    rows = []
    for env, gain in (("E1", 0.05), ("E2", 0.0)):
        for b in (100, 1000):
            for s in range(n):
                base = rng.uniform(0.3, 0.6)
                rows.append(make_row(env=env, agent="ref", budget=b, seed=s, acr=base, oracle=0.9))
                rows.append(make_row(env=env, agent="good", budget=b, seed=s, acr=base + gain + rng.normal(0, 0.01),
                                     oracle=0.9))
                rows.append(make_row(env=env, agent="bad", budget=b, seed=s, acr=base - 0.04 + rng.normal(0, 0.01),
                                     oracle=0.9))
    return Results.from_rows(rows)


def test_rows_are_holm_adjusted_per_task_and_directed_by_the_paired_difference() -> None:
    res = _results()
    rows = robust_report.robust_rows(res, reference="ref", n_resamples=300)
    assert {(r.env, r.budget, r.agent) for r in rows} == {
        (e, b, a) for e in ("E1", "E2") for b in (100, 1000) for a in ("good", "bad")
    }
    for env in ("E1", "E2"):
        fam = [r for r in rows if r.env == env]
        raw = []
        for r in fam:
            _, a, ref = res.paired("regret", env, r.budget, r.agent, "ref")
            raw.append(sps.wilcoxon(a, ref).pvalue)
            assert r.p == pytest.approx(raw[-1])
            assert r.iqm == pytest.approx(sps.trim_mean(a, 0.25))
            assert r.iqm_low <= r.iqm <= r.iqm_high
            # P(agent's regret < ref's) by brute force over all pairs
            wins = (a[:, None] < ref[None, :]).mean() + 0.5 * (a[:, None] == ref[None, :]).mean()
            assert r.poi == pytest.approx(wins)
        # the family is the task's comparisons: 4 tests, Holm's step-down by hand
        order = np.argsort(raw)
        by_hand = np.maximum.accumulate(np.minimum(1.0, (4 - np.arange(4)) * np.asarray(raw)[order]))
        assert [fam[i].p_holm for i in order] == pytest.approx(by_hand.tolist())
    verdict = {(r.env, r.agent): r.verdict for r in rows if r.budget == 1000}
    assert verdict == {("E1", "good"): "better", ("E1", "bad"): "worse", ("E2", "good"): "n.s.", ("E2", "bad"): "worse"}


def test_aggregate_improvement_averages_tasks() -> None:
    res = _results(1)
    p, lo, hi, k = robust_report.aggregate_improvement(res, "good", 1000, reference="ref", n_resamples=300)
    per_task = []
    for env in ("E1", "E2"):
        _, a, ref = res.paired("regret", env, 1000, "good", "ref")
        per_task.append(rs.probability_of_improvement(-a, -ref, n_resamples=10)[0])
    assert k == 2 and p == pytest.approx(np.mean(per_task)) and lo <= p <= hi
    # unpaired: E1's 'good' (regret 0.05 lower) wins most random pairs, E2's is a coin flip
    assert per_task[0] > 0.6 and 0.35 < per_task[1] < 0.65


def test_report_has_the_robust_section(tmp_path: Path) -> None:
    res = _results(2, n=12)
    inp = report.ReportInputs(res, ["ref", "good", "bad"], [], {}, {}, {}, "python train.py", reference="ref")
    text = report.render_report(inp, tmp_path / "R.md")
    assert "## Robust statistics (the rliable protocol)" in text
    assert "family: the 4 comparisons against ref on this task" in text
    assert "### All tasks — probability of improvement over ref" in text
    assert text.count("▼") >= 2  # 'bad' is significantly worse on both tasks at both budgets after Holm
