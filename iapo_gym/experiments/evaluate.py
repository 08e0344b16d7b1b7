"""Exact test-split metrics of fitted policies (no sampling).

For one run's environment, :class:`ExactEvaluator` computes the exact Q-values of every arm on
the test split once, ``q = oracle.q_values(env.table, env.test_queries)`` ``(C, P, N_max)``, and
then scores any policy from its deployment distribution over arms
(:meth:`iapo_gym.agents.base.Policy.arm_probs`; a deterministic policy puts mass 1 on ``act``)
with the project's one exact-ACR computation, :func:`iapo_gym.oracle.acr` /
:func:`iapo_gym.oracle.context_values`:

* ``acr = sum_c probs[c] sum_a pi(a|c) q[c, a]``, ``oracle_acr = sum_c probs[c] max_a q[c, a]``,
  ``regret = oracle_acr - acr`` (per context clipped at 0 against rounding);
* ``optimal[c]`` = policy mass on arms tied with the best (``oracle.TIE_RTOL``);
* per context the modal prompt and N, the expected N, and the oracle's prompt and N.

Where the contexts come from is decided in :func:`evaluation_contexts`:

* ``"finite"``: the env's finite context set with its probabilities (the paper's protocol);
* ``"continuous"``: the fixed held-out evaluation sample of the env's continuous distribution
  (:meth:`iapo_gym.continuous.ContinuousContexts.evaluation_sample`, 2,000 contexts, equal
  weights), with exact Q from :func:`iapo_gym.continuous.exact_q_values` (vectorised over contexts).
  ``acr``, ``oracle_acr``, ``regret`` and ``optimal_frac`` are exact means over the sample. The
  per-context ``policy`` columns would hold 2,000 entries per run, so they are summarised over
  :data:`COST_BINS` equal-count bins of the sampled cost weight (:func:`cost_bins`): per bin the
  modal prompt / N, the mean deployed N, the share of optimal choices and the oracle's modal prompt /
  mean N. TensorBoard's per-context charts and the N-vs-cost figure then read one "context" per bin
  (its mean weight vector, recorded in ``contexts.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from iapo_gym import oracle
from iapo_gym.tables.format import OutcomeTable
from iapo_gym.utility import as_weights

__all__ = [
    "COST_BINS",
    "RunMetrics",
    "ExactEvaluator",
    "cost_bins",
    "evaluation_contexts",
    "query_subtable",
    "train_oracle_regret",
    "train_oracle_regrets",
]

#: Cost-weight bins summarising the per-context policy columns in continuous mode.
COST_BINS = 8
MODES = ("finite", "continuous")

_QUERY_AXIS = {"cost": 1, "split": 0, "answer_probs": 1, "gold": 0, "outcome_values": 1, "outcome_probs": 1}


def query_subtable(table: OutcomeTable, queries: NDArray[np.int64]) -> OutcomeTable:
    """The same task restricted to ``queries`` (a fresh table, so a fresh oracle cache).

    Used for tables evaluated once (a synthetic world per seed): the oracle then works on the test
    queries only and its per-query cache dies with the sub-table.
    """
    idx = np.asarray(queries, dtype=np.int64)
    fields: dict[str, Any] = {"query_ids": tuple(table.query_ids[i] for i in idx.tolist())}
    for name, axis in _QUERY_AXIS.items():
        arr = getattr(table, name)
        if arr is not None:
            fields[name] = np.take(arr, idx, axis=axis)
    return replace(table, **fields)


def train_oracle_regret(env: Any, shared_table: bool = True) -> float:
    """The train-oracle floor of one run: exact test regret of the arm that is best on the exact train-split Q.

    Per context, the arm :func:`iapo_gym.oracle.best_arms` picks on the train queries' exact Q,
    scored on the test queries with :func:`iapo_gym.oracle.regret`. Regret is measured against the
    test split's own best arm, which is partly the noise of its queries, so no agent that learns
    from the train split can be expected to go below this. ``shared_table``: the table serves other
    runs (a real task re-split per seed; see :func:`iapo_gym.experiments.executors.shares_table`),
    so its oracle cache is used; otherwise sub-tables are evaluated (their caches die with them).
    """
    env = getattr(env, "unwrapped", env)
    table, train, test = env.table, np.asarray(env.train_queries), np.asarray(env.test_queries)
    if shared_table:
        q_train, q_test = oracle.q_values(table, train), oracle.q_values(table, test)
    else:
        q_train, q_test = oracle.q_values(query_subtable(table, train)), oracle.q_values(query_subtable(table, test))
    return float(oracle.regret(q_test, oracle.best_arms(q_train), env.contexts.probs))


def train_oracle_regrets(task: str, seeds: Sequence[int]) -> NDArray[np.float64]:
    """Per seed, :func:`train_oracle_regret` of the run of ``task`` (a registered env id) with that seed."""
    from iapo_gym.experiments.executors import shares_table
    from iapo_gym.experiments.train import env_factory  # the runner imports this module: import it lazily

    make, shared = env_factory(task, 1), shares_table(task)
    return np.asarray([train_oracle_regret(make(s), shared) for s in seeds], dtype=np.float64)


def evaluation_contexts(env: Any, mode: str = "finite") -> tuple[NDArray[np.float64], NDArray[np.float64], tuple[str, ...]]:
    """``(weights (C, K+1), probs (C,), names)`` of the contexts a run is evaluated on.

    ``mode="finite"``: the task's finite context set (the paper's protocol).
    ``mode="continuous"``: the held-out evaluation sample of the env's continuous distribution
    (:func:`iapo_gym.continuous.distribution_of`; the same sample for every run of a task), equal weights.
    """
    if mode == "finite":
        ctx = getattr(env, "contexts", None) or env.table.contexts
        return np.asarray(ctx.weights, dtype=np.float64), np.asarray(ctx.probs, dtype=np.float64), tuple(ctx.names)
    if mode == "continuous":
        from iapo_gym.continuous import distribution_of

        w = distribution_of(env).evaluation_sample()
        return w, np.full(w.shape[0], 1.0 / w.shape[0]), tuple(f"e{i}" for i in range(w.shape[0]))
    raise ValueError(f"unknown context mode {mode!r}; use one of {', '.join(MODES)}")


def cost_bins(
    weights: NDArray[np.float64], n_bins: int = COST_BINS
) -> tuple[NDArray[np.int64], NDArray[np.float64], tuple[str, ...]]:
    """Equal-count bins of the cost weight (last column) of ``weights (C, K+1)``.

    Returns ``(bin (C,), mean weight vector of each bin (B, K+1), names (B,))``; contexts are
    ranked by cost weight (stable), so each bin holds ``C / B`` contexts (+-1).
    """
    w = np.asarray(weights, dtype=np.float64)
    n_bins = max(1, min(int(n_bins), w.shape[0]))
    order = np.argsort(w[:, -1], kind="stable")
    rank = np.empty(w.shape[0], dtype=np.int64)
    rank[order] = np.arange(w.shape[0])
    b = (rank * n_bins) // w.shape[0]
    counts = np.bincount(b, minlength=n_bins).astype(np.float64)
    centre = np.stack([np.bincount(b, weights=w[:, j], minlength=n_bins) for j in range(w.shape[1])], axis=1) / counts[:, None]
    lo = np.array([w[b == i, -1].min() for i in range(n_bins)])
    hi = np.array([w[b == i, -1].max() for i in range(n_bins)])
    names = tuple(f"cost_{a:.3g}-{z:.3g}" for a, z in zip(lo, hi, strict=True))
    return b, centre, names


def _modal_per_bin(values: NDArray[np.int64], bins: NDArray[np.int64], n_bins: int, n_values: int) -> list[int]:
    """Most frequent ``values`` within each bin (ties: the smallest value)."""
    counts = np.zeros((n_bins, n_values), dtype=np.int64)
    np.add.at(counts, (bins, values), 1)
    return counts.argmax(axis=1).tolist()


@dataclass(frozen=True)
class RunMetrics:
    """Exact metrics of one policy on one run's test split."""

    acr: float
    oracle_acr: float
    regret: float
    optimal_frac: float
    policy: dict[str, list]

    def row(self) -> dict[str, Any]:
        """The metric columns of a results row."""
        return {
            "acr": self.acr,
            "oracle_acr": self.oracle_acr,
            "regret": self.regret,
            "optimal_frac": self.optimal_frac,
            "policy": self.policy,
        }


class _DenseQ:
    """Exact Q-values ``(C, n_arms)`` held in full (finite contexts, continuous BoN)."""

    def __init__(self, q: NDArray[np.float64]) -> None:
        self.q = q.reshape(q.shape[0], -1)
        self.n_contexts, self.n_arms = self.q.shape

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes)

    def rows(self, start: int, stop: int) -> NDArray[np.float64]:
        return self.q[start:stop]


class _LinearQ:
    """Exact MV Q-values of many contexts, kept as their two context-free factors.

    ``Q(c, p, N) = w_1(c) * credit(p, N) - w_cost(c) * N * cost(p)``, element by element as
    :func:`iapo_gym.oracle.q_values` computes it, so any block of contexts is produced on demand,
    bit for bit the rows of the full array: a run keeps ``P x n_max`` numbers, not ``C x P x n_max``.
    """

    def __init__(self, table: OutcomeTable, weights: NDArray[np.float64], queries: NDArray[np.int64] | None) -> None:
        idx = oracle._query_index(table, queries)
        n = np.arange(1, table.n_max + 1)
        self.weights = as_weights(weights, table.n_objectives)  # as exact_q_values reads them
        self.credit = oracle._table_mv_credit(table)[:, idx].mean(axis=1)  # (P, n_max), as q_values
        self.cost_n = table.cost[:, idx].mean(axis=1)[:, None] * n  # (P, n_max), as q_values
        self.n_contexts, self.n_arms = weights.shape[0], self.credit.size

    @property
    def nbytes(self) -> int:
        return int(self.credit.nbytes + self.cost_n.nbytes)

    def rows(self, start: int, stop: int) -> NDArray[np.float64]:
        w = self.weights[start:stop]
        q = w[:, 0, None, None] * self.credit[None] - w[:, -1, None, None] * self.cost_n[None]
        return q.reshape(q.shape[0], -1)


#: Contexts per block when an evaluator works through its contexts (bounds the temporaries of a
#: continuous run's 2,000 contexts; results do not depend on it, every step is row by row).
CONTEXT_BLOCK = 256


class ExactEvaluator:
    """Exact Q-values of one run's test split, and metrics of any policy on them.

    Memory: a finite-context run keeps its ``(C, n_arms)`` Q-values; a continuous-context run on a
    majority-vote task keeps only the two ``(P, n_max)`` factors of its Q-values and produces them
    :data:`CONTEXT_BLOCK` contexts at a time (about 0.1 MB per run instead of 14-18 MB); on a
    best-of-N task its ``(2000, n_arms)`` Q-values (16 MB for 1,024 arms) have no smaller exact form
    and are kept. :attr:`nbytes` says what a run keeps, so caches can be bounded in bytes.
    """

    def __init__(self, env: Any, contexts: str = "finite", shared_table: bool = True) -> None:
        """Evaluate on ``env``'s test queries.

        ``shared_table``: the env's table serves other runs too (a real task re-split per seed), so
        the oracle's per-table cache pays off; otherwise only the test queries are evaluated.
        ``contexts``: ``"finite"`` or ``"continuous"`` (see :func:`evaluation_contexts`).
        """
        env = getattr(env, "unwrapped", env)
        self.mode = contexts
        self.n_max = int(env.n_max)
        self.weights, self.probs, self.names = evaluation_contexts(env, contexts)
        table, test_queries = env.table, np.asarray(env.test_queries, dtype=np.int64)
        queries: NDArray[np.int64] | None = test_queries
        if not shared_table:
            table, queries = query_subtable(table, test_queries), None
        self._q: _DenseQ | _LinearQ
        if contexts == "continuous":
            from iapo_gym.continuous import exact_q_values

            if table.strategy == "mv":
                self._q = _LinearQ(table, self.weights, queries)  # what exact_q_values computes, in factors
            else:
                self._q = _DenseQ(exact_q_values(table, self.weights, queries))  # vectorised over the 2,000 contexts
            self.bins, self.bin_weights, self.bin_names = cost_bins(self.weights)
        else:
            table_w = table.contexts.weights
            same = table_w.shape == self.weights.shape and np.array_equal(table_w, self.weights)
            # The table's own contexts hit the oracle's per-table cache (shared by every split of a real task).
            self._q = _DenseQ(oracle.q_values(table, queries, weights=None if same else self.weights))
        n_ctx, n_arms = self._q.n_contexts, self._q.n_arms
        self.best_value = np.empty(n_ctx)
        self.best = np.empty(n_ctx, dtype=np.int64)
        for start, q in self._blocks():
            self.best_value[start : start + q.shape[0]] = q.max(axis=1)
            self.best[start : start + q.shape[0]] = oracle.best_arms(q)
        self.oracle_acr = float(self.probs @ self.best_value)
        self._n_of_arm = (np.arange(n_arms) % self.n_max + 1).astype(np.float64)

    def _blocks(self) -> Any:
        """``(start, q rows)`` for consecutive blocks of :data:`CONTEXT_BLOCK` contexts."""
        for start in range(0, self._q.n_contexts, CONTEXT_BLOCK):
            yield start, self._q.rows(start, start + CONTEXT_BLOCK)

    @property
    def q(self) -> NDArray[np.float64]:
        """Exact Q-values ``(C, n_arms)`` of the evaluation contexts (assembled in full on each access)."""
        if isinstance(self._q, _DenseQ):
            return self._q.q
        return np.concatenate([q for _, q in self._blocks()], axis=0)

    @property
    def nbytes(self) -> int:
        """Bytes this evaluator keeps (Q-values or their factors, per-context summaries and contexts)."""
        arrays = [self.weights, self.probs, self.best_value, self.best, self._n_of_arm]
        arrays += [getattr(self, k) for k in ("bins", "bin_weights") if hasattr(self, k)]
        return self._q.nbytes + sum(int(a.nbytes) for a in arrays)

    @property
    def context_names(self) -> tuple[str, ...]:
        """Names of the ``policy`` columns' entries: the contexts (finite) or the cost bins (continuous)."""
        return self.bin_names if self.mode == "continuous" else self.names

    @property
    def context_weights(self) -> NDArray[np.float64]:
        """Weight vectors of the ``policy`` columns' entries (bins: their mean evaluation context)."""
        return self.bin_weights if self.mode == "continuous" else self.weights

    def arm_distribution(self, policy: Any) -> NDArray[np.float64]:
        """``(C, n_arms)`` deployment probabilities of ``policy`` on the evaluation contexts."""
        return oracle.arm_distribution(policy, self.weights, self._q.n_arms)

    def evaluate(self, policy: Any) -> RunMetrics:
        """Exact ACR, oracle ACR, regret, optimality and the per-context choices of ``policy``.

        ``acr`` is :func:`iapo_gym.oracle.acr` of the policy on this run's Q (the per-context values
        come from :func:`iapo_gym.oracle.context_values`, which regret and optimality reuse). The
        policy is deployed on every context in one call (a batched policy sees the same batch as
        always); its values are then taken block by block of contexts, each row as in one piece.
        """
        pi = self.arm_distribution(policy)
        value = np.empty(pi.shape[0])
        optimal = np.empty(pi.shape[0])
        for start, q in self._blocks():
            sl = slice(start, start + q.shape[0])
            value[sl] = oracle.context_values(q, pi[sl])  # (C,): what oracle.acr averages
            top = self.best_value[sl]
            near = q >= (top - oracle.TIE_RTOL * np.maximum(1.0, np.abs(top)))[:, None]
            optimal[sl] = np.clip((pi[sl] * near).sum(axis=1), 0.0, 1.0)
        gap = np.maximum(self.best_value - value, 0.0)
        mode = pi.argmax(axis=1)
        n_max = self.n_max
        n_mean = pi @ self._n_of_arm
        if self.mode == "continuous":
            policy_json = self._binned_policy(mode, n_mean, optimal)
        else:
            policy_json = {
                "prompt": (mode // n_max).tolist(),
                "n": (mode % n_max + 1).tolist(),
                "n_mean": [round(float(x), 6) for x in n_mean],
                "optimal": [round(float(x), 6) for x in optimal],
                "best_prompt": (self.best // n_max).tolist(),
                "best_n": (self.best % n_max + 1).tolist(),
            }
        return RunMetrics(
            acr=float(value @ self.probs),  # = oracle.acr(self.q, pi, self.probs), bit for bit
            oracle_acr=self.oracle_acr,
            regret=float(self.probs @ gap),
            optimal_frac=float(self.probs @ optimal),
            policy=policy_json,
        )

    def _binned_policy(
        self, mode: NDArray[np.int64], n_mean: NDArray[np.float64], optimal: NDArray[np.float64]
    ) -> dict[str, list]:
        """Per cost bin: modal prompt / N, mean N, optimal share; the oracle's modal prompt and mean N."""
        n_max, b = self.n_max, self.bins
        n_bins = len(self.bin_names)
        count = np.bincount(b, minlength=n_bins).astype(np.float64)
        n_prompts = self._q.n_arms // n_max

        def mean(x: NDArray[np.float64]) -> list[float]:
            return [round(float(v), 6) for v in np.bincount(b, weights=x, minlength=n_bins) / count]

        return {
            "prompt": _modal_per_bin(mode // n_max, b, n_bins, n_prompts),
            "n": [v + 1 for v in _modal_per_bin(mode % n_max, b, n_bins, n_max)],
            "n_mean": mean(n_mean),
            "optimal": mean(optimal),
            "best_prompt": _modal_per_bin(self.best // n_max, b, n_bins, n_prompts),
            "best_n": mean((self.best % n_max + 1).astype(np.float64)),
        }
