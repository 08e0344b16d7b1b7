"""Robust aggregate statistics for few-run RL / bandit comparisons (Agarwal et al., 2021, "rliable").

Everything is built on :mod:`scipy.stats` (``trim_mean``, ``bootstrap``, ``wilcoxon``) so that no
extra dependency is needed; ``tests/test_robust_stats.py`` checks each function against a hand
computation.

* :func:`iqm` -- the interquartile mean (the mean of the middle 50 % of the runs,
  ``scipy.stats.trim_mean(x, 0.25)``): robust to outlying runs, less noisy than the median.
* :func:`iqm_ci` -- the IQM with a **stratified** bootstrap 95 % interval: each task's runs are
  resampled independently (``scipy.stats.bootstrap`` with one sample per task,
  ``paired=False``), and the statistic is the IQM of the pooled resample (rliable's protocol for
  aggregates over tasks; with one task it is the ordinary bootstrap of the runs).
* :func:`performance_profile` -- the run-score distribution: for each threshold ``tau`` the share
  of runs scoring at least ``tau`` (for regret, pass ``-regret`` and ``-tau``, or use
  ``lower_is_better=True``).
* :func:`probability_of_improvement` -- ``P(X > Y) + P(X = Y) / 2`` between the runs of two
  algorithms (the Mann-Whitney U statistic over ``n m``), averaged over tasks, with a stratified
  bootstrap interval (each algorithm's runs of each task resampled independently).
* :func:`ratio_of_means_ci` -- ``mean(x) / mean(y)`` of two paired samples (the same seeds) with a
  paired bootstrap interval (each resample draws the same seeds for both): how far a ratio target
  such as "regret at 5k at most PSST's at 50k" is from 1 once the runs' sampling noise is counted.
* :func:`wilcoxon_greater` -- the paired one-sided Wilcoxon signed-rank p-value of ``x > y``.
* :func:`holm` -- Holm's step-down adjustment of a family of p-values (controls the family-wise
  error rate; no independence assumption).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TypeGuard

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

__all__ = [
    "iqm",
    "iqm_ci",
    "performance_profile",
    "probability_of_improvement",
    "ratio_of_means_ci",
    "wilcoxon_greater",
    "holm",
]

#: Bootstrap resamples used by default (rliable uses 50,000 for papers; 2,000 keeps reports fast).
N_RESAMPLES = 2000


def _bootstrap_interval(
    samples: tuple[NDArray[np.float64], ...],
    statistic: Callable[..., NDArray[np.float64]],
    paired: bool,
    level: float,
    n_resamples: int,
    seed: int,
    method: str = "percentile",
    batch: int | None = None,
) -> tuple[float, float]:
    """``(low, high)`` of ``scipy.stats.bootstrap`` for a vectorised ``statistic`` (the one call every interval here makes)."""
    res = sps.bootstrap(
        samples,
        statistic,
        n_resamples=int(n_resamples),
        confidence_level=float(level),
        method=method,
        paired=paired,
        vectorized=True,
        rng=np.random.default_rng(seed),
        batch=batch,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm(x: ArrayLike) -> float:
    """Interquartile mean: ``scipy.stats.trim_mean(x, 0.25)`` (25 % cut from each end)."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("iqm of an empty sample")
    return float(sps.trim_mean(a, 0.25))


def _pooled_iqm(*samples: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return sps.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def iqm_ci(
    samples: Sequence[ArrayLike] | ArrayLike,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float, float]:
    """``(iqm, low, high)``: the IQM of the pooled runs with a stratified bootstrap interval.

    Args:
        samples: one array of run scores per task (strata), or a single array (one task).
        level: confidence level of the interval.
        n_resamples: bootstrap resamples.
        seed: seed of the bootstrap's generator (the interval is reproducible).
        method: ``scipy.stats.bootstrap`` method (rliable: ``"percentile"``).
    """
    groups = samples if _is_ragged(samples) else [samples]
    strata = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    if any(s.size == 0 for s in strata):
        raise ValueError("every stratum needs at least one run")
    point = iqm(np.concatenate(strata))
    if all(s.size < 2 for s in strata) or np.ptp(np.concatenate(strata)) == 0:
        return point, point, point
    return (point, *_bootstrap_interval(tuple(strata), _pooled_iqm, False, level, n_resamples, seed, method))


def performance_profile(
    scores: ArrayLike, taus: ArrayLike, lower_is_better: bool = False
) -> NDArray[np.float64]:
    """Share of runs with ``score >= tau`` for every ``tau`` (``score <= tau`` when ``lower_is_better``)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(taus, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("performance_profile of an empty sample")
    hit = s[None, :] <= t[:, None] if lower_is_better else s[None, :] >= t[:, None]
    return hit.mean(axis=1)


def _prob_improvement(x: NDArray[np.float64], y: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    """``P(X > Y) + P(X = Y) / 2`` over all pairs (vectorised over leading axes).

    Computed from ranks, as the Mann-Whitney U statistic over ``n m``: with average ranks of the
    pooled sample, ``U = sum(ranks of x) - n (n + 1) / 2`` counts wins plus half the ties, in
    O((n + m) log(n + m)) per resample instead of the n x m comparison matrix.
    """
    x = np.moveaxis(np.asarray(x), axis, -1)
    y = np.moveaxis(np.asarray(y), axis, -1)
    n, m = x.shape[-1], y.shape[-1]
    lead = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    pooled = np.concatenate([np.broadcast_to(x, (*lead, n)), np.broadcast_to(y, (*lead, m))], axis=-1)
    ranks = sps.rankdata(pooled, axis=-1)
    u = ranks[..., :n].sum(axis=-1) - n * (n + 1) / 2.0
    return u / (n * m)


def probability_of_improvement(
    x: Sequence[ArrayLike] | ArrayLike,
    y: Sequence[ArrayLike] | ArrayLike,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(P(X > Y), low, high)`` averaged over tasks, with a stratified bootstrap interval.

    ``x`` and ``y`` are run scores (higher is better) of two algorithms: one array each, or one
    array per task (the same number of tasks for both). Ties count one half.
    """
    xs = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (x if _is_ragged(x) else [x])]
    ys = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (y if _is_ragged(y) else [y])]
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} tasks, y has {len(ys)}")
    if any(a.size == 0 for a in xs + ys):
        raise ValueError("every task needs at least one run of each algorithm")
    k = len(xs)
    point = float(np.mean([_prob_improvement(a, b) for a, b in zip(xs, ys, strict=True)]))

    def statistic(*samples: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
        return np.mean([_prob_improvement(samples[i], samples[k + i], axis=axis) for i in range(k)], axis=0)

    if all(a.size < 2 for a in xs + ys):
        return point, point, point
    return (point, *_bootstrap_interval(tuple(xs + ys), statistic, False, level, n_resamples, seed, batch=200))


def _ratio_of_means(x: NDArray[np.float64], y: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return np.mean(x, axis=axis) / np.mean(y, axis=axis)


def ratio_of_means_ci(
    x: ArrayLike, y: ArrayLike, level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean(x) / mean(y), low, high)`` for paired runs, with a paired percentile bootstrap interval.

    ``x[i]`` and ``y[i]`` come from the same seed (the same split or world), so every resample
    draws the same seeds for both (``scipy.stats.bootstrap`` with ``paired=True``): the seeds'
    shared difficulty cancels instead of widening the interval. ``mean(y)`` must be positive.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"x and y must be paired non-empty 1-D samples; got shapes {a.shape} and {b.shape}")
    if not b.mean() > 0:
        raise ValueError(f"the ratio needs a positive mean(y); got {b.mean()}")
    point = float(a.mean() / b.mean())
    if a.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return point, point, point
    return (point, *_bootstrap_interval((a, b), _ratio_of_means, True, level, n_resamples, seed))


def _is_ragged(x: object) -> TypeGuard[Iterable[ArrayLike]]:
    """Whether ``x`` is a sequence of per-task arrays rather than one array of runs."""
    if isinstance(x, np.ndarray):
        return x.dtype == object or x.ndim == 2
    return isinstance(x, (list, tuple)) and len(x) > 0 and np.ndim(x[0]) >= 1


def wilcoxon_greater(x: ArrayLike, y: ArrayLike) -> float:
    """Paired one-sided Wilcoxon signed-rank p-value of ``x > y`` (1.0 when every pair is equal)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be paired 1-D samples; got {a.shape} and {b.shape}")
    if a.size == 0 or np.all(a == b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.wilcoxon(a, b, alternative="greater").pvalue)


def holm(pvalues: ArrayLike) -> NDArray[np.float64]:
    """Holm's step-down adjusted p-values of one family (same order as the input).

    Sort ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``; reject at level alpha
    where ``adj <= alpha``. NaN p-values are left NaN and do not count towards ``m``.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
