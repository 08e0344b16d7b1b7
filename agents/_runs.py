"""Many runs (seeds) of one configuration as one vectorised batch.

:class:`Runs` wraps the ``S`` environments of a batch (``make_env(seed)`` for each seed) and draws
pulls for all of them at once:

* real tasks share one :class:`~iapo_gym.tables.format.OutcomeTable` with a per-seed train split;
  synthetic tasks have one table per seed, stacked along the query axis with
  :func:`~iapo_gym.tables.format.concat_queries` so that one
  :func:`~iapo_gym.sampling.sample_pulls` call serves every seed (each pull's query is drawn
  uniformly from its own run's train split and offset into the stacked table);
* each env's budget ledger is charged with exactly the completions its run used, so the ledgers
  stay the single source of truth (and raise if an agent ever overspends).

Every run starts with ``env.reset(seed=seed)`` (the env's convention for a new training run: it
seeds the env's RNG and clears its ledger). A batch of ONE env then uses that env's own ``pull``
(its RNG, its ledger, a live backend if it has one), so ``fit(env, budget, seed)`` works on any
env that implements the batched structural API and is reproducible from ``seed``. Batches of
several envs need table-backed envs.

Seeding: the batch's generator is ``numpy.random.default_rng([seed_0, ..., seed_{S-1}, salt])``
(``salt`` names the agent), so a batch is reproducible from its seed list; run ``s`` of a batch is
the same *in distribution* as ``fit(seed=s)``, not bit-identical (one generator serves all runs).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from iapo_gym.contexts import ContextSet
from iapo_gym.sampling import Pulls
from iapo_gym.tables.format import OutcomeTable


def agent_rng(seeds: Sequence[int], salt: str) -> np.random.Generator:
    """The batch generator for ``seeds`` (order matters) and an agent name ``salt``."""
    return np.random.default_rng([int(s) for s in seeds] + [zlib.crc32(salt.encode())])


def _unwrap(env: Any) -> Any:
    return getattr(env, "unwrapped", env)


def _remaining(env: Any) -> float:
    ledger = getattr(env, "ledger", None)
    if ledger is None:
        return float("inf")
    rem = getattr(ledger, "remaining", None)
    return float("inf") if rem is None else float(rem)


class Runs:
    """``S`` runs of one agent configuration, drawn as one batch.

    Attributes:
        envs: the unwrapped envs, one per run.
        budgets: ``(S,)`` completions each run may spend (``min(budget, ledger.remaining)``).
        spent: ``(S,)`` completions spent so far.
        contexts, strategy, n_prompts, n_max: the task (identical across runs).
        rng: the batch generator.
    """

    def __init__(self, envs: Sequence[Any], budget: int, seeds: Sequence[int], salt: str) -> None:
        if len(envs) == 0:
            raise ValueError("a batch needs at least one env")
        if len(envs) != len(seeds):
            raise ValueError(f"got {len(envs)} envs for {len(seeds)} seeds")
        if int(budget) < 0:
            raise ValueError(f"budget must be >= 0 completions; got {budget}")
        self.envs = [_unwrap(e) for e in envs]
        first = self.envs[0]
        self.contexts: ContextSet = first.contexts
        self.n_prompts = int(first.n_prompts)
        self.n_max = int(first.n_max)
        self.strategy = str(first.strategy)
        for e in self.envs[1:]:
            if (int(e.n_prompts), int(e.n_max), str(e.strategy)) != (self.n_prompts, self.n_max, self.strategy):
                raise ValueError("all envs of a batch must share prompts, n_max and strategy")
            if e.contexts.weights.shape != self.contexts.weights.shape or not np.array_equal(
                e.contexts.weights, self.contexts.weights
            ):
                raise ValueError("all envs of a batch must share the same context set")
        self.n_runs = len(self.envs)
        self.seeds = [int(s) for s in seeds]
        for env, seed in zip(self.envs, self.seeds, strict=True):
            # A training run starts at a seeded reset (IAPOEnv: seeds its RNG, clears the ledger).
            if hasattr(env, "reset"):
                env.reset(seed=seed)
        self.rng = agent_rng(self.seeds, salt)
        self.budgets = np.array([min(int(budget), _remaining(e)) for e in self.envs], dtype=np.int64)
        self.spent = np.zeros(self.n_runs, dtype=np.int64)
        self._own_pull = self.n_runs == 1
        if not self._own_pull:
            self._prepare_table()

    # ------------------------------------------------------------------ batched tables
    def _prepare_table(self) -> None:
        from iapo_gym.tables.format import concat_queries

        tables: list[OutcomeTable] = [t for t in (getattr(e, "table", None) for e in self.envs) if t is not None]
        if len(tables) != len(self.envs):
            raise ValueError(
                "fit_many needs table-backed envs (env.table); for live envs call fit(env, budget, seed) per seed"
            )
        self.table: OutcomeTable
        if all(t is tables[0] for t in tables):
            self.table = tables[0]
            offsets = np.zeros(self.n_runs, dtype=np.int64)
        else:
            self.table = concat_queries(tables)
            offsets = np.asarray(self.table.provenance["world_offsets"][:-1], dtype=np.int64)
        train = [np.asarray(e.train_queries, dtype=np.int64) + off for e, off in zip(self.envs, offsets, strict=True)]
        self.n_train = np.array([t.size for t in train], dtype=np.int64)
        if np.any(self.n_train == 0):
            raise ValueError("every env needs a non-empty train split")
        self.train = np.zeros((self.n_runs, int(self.n_train.max())), dtype=np.int64)
        for s, t in enumerate(train):
            self.train[s, : t.size] = t

    # ------------------------------------------------------------------ pulling
    @property
    def remaining(self) -> NDArray[np.int64]:
        """``(S,)`` completions each run may still spend."""
        return self.budgets - self.spent

    def pull(self, run: NDArray[np.int64], prompt: NDArray[np.int64], n: NDArray[np.int64]) -> Pulls:
        """Draw one pull per row (``run``, ``prompt``, ``n`` are ``(B,)``) and charge each run's ledger."""
        from iapo_gym.sampling import sample_pulls

        run = np.asarray(run, dtype=np.int64)
        prompt = np.asarray(prompt, dtype=np.int64)
        n = np.asarray(n, dtype=np.int64)
        charge = np.bincount(run, weights=n, minlength=self.n_runs).astype(np.int64)
        if np.any(self.spent + charge > self.budgets):
            bad = int(np.flatnonzero(self.spent + charge > self.budgets)[0])
            raise RuntimeError(
                f"internal error: run {bad} would spend {int(self.spent[bad] + charge[bad])} > budget "
                f"{int(self.budgets[bad])}; this is an agent bug, please report it"
            )
        if self._own_pull:
            pulls = self.envs[0].pull(prompt, n)
        else:
            u = self.rng.random(run.size)
            col = np.minimum((u * self.n_train[run]).astype(np.int64), self.n_train[run] - 1)
            query = self.train[run, col]
            pulls = sample_pulls(self.table, prompt, query, n, self.rng)
            for s in np.flatnonzero(charge):
                self.envs[s].ledger.charge(int(charge[s]))
        self.spent += charge
        return pulls

    def pull_grouped(
        self, run: NDArray[np.int64], prompt: NDArray[np.int64], n: NDArray[np.int64], fill: float = 0.7
    ) -> Iterator[tuple[Pulls, NDArray[np.int64]]]:
        """Like :meth:`pull`, in a few batches of similar ``n``; yields ``(pulls, rows)`` per batch.

        ``rows`` indexes the input arrays (so ``run[rows]`` are the batch's runs).

        Sizes are bucketed (largest first) so that every row of a batch has ``n >= fill * width``:
        little padding waste in the nested-block engine, few sampler calls.
        """
        run = np.asarray(run, dtype=np.int64)
        n = np.asarray(n, dtype=np.int64)
        sizes = np.unique(n)[::-1]
        while sizes.size:
            top = sizes[0]
            members = sizes[sizes >= fill * top]
            sizes = sizes[members.size :]
            rows = np.flatnonzero(np.isin(n, members))
            yield self.pull(run[rows], prompt[rows], n[rows]), rows
