"""Robust statistics (iapo_gym.experiments.robust_stats) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from iapo_gym.experiments import robust_stats as rs


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 runs: drop the 2 lowest and the 2 highest -> mean(3, 4, 5, 6)
    assert rs.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)
    # an outlier does not move it
    assert rs.iqm([1, 2, 3, 4, 5, 6, 7, 1e9]) == pytest.approx(4.5)
    # 10 runs: int(0.25 * 10) = 2 cut from each end -> mean(3..8)
    assert rs.iqm(np.arange(1, 11)) == pytest.approx(5.5)
    with pytest.raises(ValueError):
        rs.iqm([])


def test_iqm_ci_brackets_the_point_and_is_reproducible():
    x = np.random.default_rng(0).normal(size=200)
    point, lo, hi = rs.iqm_ci(x, n_resamples=500, seed=3)
    assert point == pytest.approx(sps.trim_mean(x, 0.25))
    assert lo < point < hi
    # the interval of an IQM of 200 standard normals is about +-0.17 wide
    assert 0.1 < hi - lo < 0.5
    assert rs.iqm_ci(x, n_resamples=500, seed=3) == (point, lo, hi)
    assert rs.iqm_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_iqm_ci_is_stratified():
    # Task A's runs are all 0, task B's all 1 (4 runs each). A stratified bootstrap keeps 4 runs
    # of each task in every resample, so the pooled IQM is always mean(0, 0, 1, 1) = 0.5 and the
    # interval collapses; resampling the pooled runs would give IQMs anywhere in [0, 1].
    point, lo, hi = rs.iqm_ci([np.zeros(4), np.ones(4)], n_resamples=300)
    assert (point, lo, hi) == pytest.approx((0.5, 0.5, 0.5))
    pooled = rs.iqm_ci(np.r_[np.zeros(4), np.ones(4)], n_resamples=300)
    assert pooled[2] - pooled[1] > 0.4


def test_performance_profile():
    s = [0.1, 0.2, 0.3, 0.4]
    assert rs.performance_profile(s, [0.15, 0.35]).tolist() == [0.75, 0.25]
    assert rs.performance_profile(s, [0.15, 0.35], lower_is_better=True).tolist() == [0.25, 0.75]


def test_probability_of_improvement_by_hand():
    # pairs of x=[1,2,3] and y=[2,2]: 2 wins, 2 ties, 2 losses -> 2/6 + (2/6)/2 = 0.5
    p, lo, hi = rs.probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0], n_resamples=300)
    assert p == pytest.approx(0.5)
    assert lo <= p <= hi
    # equals the Mann-Whitney U statistic over n m
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.3, 1, 40), rng.normal(0, 1, 30)
    p, lo, hi = rs.probability_of_improvement(x, y, n_resamples=300)
    assert p == pytest.approx(sps.mannwhitneyu(x, y).statistic / (40 * 30))
    assert lo < p < hi
    # every x above every y: 1 with a degenerate interval
    assert rs.probability_of_improvement([3.0, 4.0], [1.0, 2.0], n_resamples=200) == (1.0, 1.0, 1.0)
    # averaged over tasks: task 1 gives 1, task 2 gives 0
    p, _, _ = rs.probability_of_improvement([[3.0, 4.0], [0.0, 0.5]], [[1.0, 2.0], [1.0, 2.0]], n_resamples=200)
    assert p == pytest.approx(0.5)


def test_ratio_of_means_ci_by_hand():
    # y = 2 x seed by seed: every paired resample has ratio exactly 1/2 and the interval collapses;
    # resampling x and y independently would spread it (x spans 0.1 .. 1)
    x = np.linspace(0.1, 1.0, 50)
    assert rs.ratio_of_means_ci(x, 2 * x, n_resamples=300) == pytest.approx((0.5, 0.5, 0.5))
    # the point is the ratio of the means (not the mean of the ratios: 1/3 here against 0.625)
    assert rs.ratio_of_means_ci([1.0, 0.0], [1.0, 2.0], n_resamples=200)[0] == pytest.approx(1 / 3)
    # large paired samples: the interval's half-width is the delta method's 1.96 s.e. of the ratio,
    # s.e. = sd(x - r y) / (sqrt(n) mean(y)), computed here by hand
    rng = np.random.default_rng(2)
    common = rng.exponential(1.0, 2000)  # a shared seed difficulty
    x, y = common + rng.exponential(0.2, 2000), 1.1 * common + rng.exponential(0.3, 2000)
    r, lo, hi = rs.ratio_of_means_ci(x, y, n_resamples=2000, seed=5)
    assert r == pytest.approx(x.mean() / y.mean())
    se = np.std(x - r * y, ddof=1) / (np.sqrt(x.size) * y.mean())
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert lo < r < hi
    assert rs.ratio_of_means_ci(x, y, n_resamples=2000, seed=5) == (r, lo, hi)
    with pytest.raises(ValueError, match="paired"):
        rs.ratio_of_means_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        rs.ratio_of_means_ci([1.0, 2.0], [0.0, 0.0])


def test_wilcoxon_greater_exact():
    # five positive differences: exact one-sided p = 1 / 2^5
    x = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    y = x - np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert rs.wilcoxon_greater(x, y) == pytest.approx(1 / 32)
    assert rs.wilcoxon_greater(y, x) == pytest.approx(1.0)
    assert rs.wilcoxon_greater(x, x) == 1.0


def test_holm_by_hand():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    adj = rs.holm([0.01, 0.04, 0.03, 0.005])
    assert adj.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, NaN left out of the family
    adj = rs.holm([0.5, np.nan, 0.6])
    assert adj[0] == pytest.approx(1.0) and np.isnan(adj[1]) and adj[2] == pytest.approx(1.0)
