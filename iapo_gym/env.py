"""The IAPO environment: one step = one deployment decision for one context."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import ArrayLike, NDArray

from iapo_gym.contexts import ContextSet
from iapo_gym.ledger import BudgetLedger
from iapo_gym.sampling import Pulls, _draw, sample_pulls
from iapo_gym.tables.format import OutcomeTable, resplit
from iapo_gym.utility import utility


class IAPOEnv(gym.Env):
    """Inference-aware prompt optimisation as a contextual bandit.

    ## Description

    A deployment receives a context ``c = (w_1..w_K, w_cost)``: preference weights over K task
    objectives and a non-negative cost weight. It answers with an arm ``(p, N)``: a prompt and a
    number of LLM completions that are aggregated by Best-of-N (BoN) or Majority Voting (MV).
    Outcomes come from an :class:`~iapo_gym.tables.format.OutcomeTable` (the paper's released
    tables, synthetic worlds, or tables built with ``iapo-gym build``). Training spends a fixed
    budget of completions; a learned policy is judged by its exact Average Contextual Return on
    the test split (``iapo_gym.oracle``). Mahmud et al., *Inference-Aware Prompt Optimization for
    Aligning Black-Box Large Language Models*, AAAI-26 (arXiv 2508.10030).

    ## Action Space

    ``Discrete(P * N_max)``: flat arm ``a = p * N_max + (N - 1)``
    (:func:`iapo_gym.arms.arm_from_index` decodes it).

    ## Observation Space

    ``Box(low, high, (K + 1,), float32)``: the context weights, the last entry the cost weight.

    ## Rewards

    The utility of the ``N`` completions of prompt ``p`` on a random training query under the
    current context. BoN: ``max_i sum_k w_k o_ik - w_cost * sum_i cost_i``. MV:
    ``w_1 * credit - w_cost * sum_i cost_i`` with ``credit = 1/t`` when the gold answer is among the
    ``t`` most-voted answers.

    ## Episode End

    Every episode is one step: ``terminated=True``, ``truncated=False``. A training run starts at a
    seeded ``reset(seed=...)`` (which clears the ledger) and ends when the budget is spent: a pull that does not fit raises
    :class:`~iapo_gym.ledger.BudgetExceededError` before anything is drawn;
    ``info["action_mask"]`` / :meth:`action_masks` list the affordable arms.

    ## Info

    Same keys and shapes at every reset and step: ``prompt``, ``n``, ``query``, ``context``
    (context index, -1 for a continuous context), ``outcomes`` (``(N_max,)`` int64 answer category or
    outcome index, -1 padding), ``values`` (``(N_max, K)`` float64), ``mask`` (``(N_max,)`` bool),
    ``cost`` (total cost of the pull), ``budget_used``, ``budget_left`` (-1 when unlimited),
    ``action_mask`` (``(P * N_max,)`` bool). At reset the pull fields hold -1 / zeros.

    ## Arguments

    ``gym.make("IAPO-MATH-v0", budget=5000, split_seed=3)``

    * ``task``: task name or env id (see ``iapo_gym.tasks.TASKS``), or an ``OutcomeTable``.
    * ``budget``: completions allowed (``None``: unlimited).
    * ``split_seed``: real tasks re-split the pooled queries ``train_fraction`` / rest from this seed;
      ``None`` keeps the released split.
    * ``world_seed``: synthetic tasks draw their world from this seed (default 0).
    * ``train_fraction``: share of queries used for training when re-splitting (0.8).
    * ``contexts``: ``"finite"`` (the task's context set), ``"continuous"`` (a Dirichlet /
      uniform-cost distribution, :class:`iapo_gym.continuous.ContinuousContexts`), or an explicit
      ``ContextSet`` / ``ContinuousContexts``.
    * ``backend``: a live generation source (``iapo_gym.live``) used instead of the table's
      outcomes for pulls: a ``LiveSource``, an LLM backend object, or ``"vllm"`` / ``"openai"``.
    * ``live``: options for a live backend given by object or name (``record=`` path of the
      generation log, ``model=``, ``base_url=``, ``spec=``, ``dataset_path=``; docs/LIVE.md).

    The batched structural API on ``env.unwrapped`` (:meth:`pull`, :meth:`score`) draws many
    pulls at once, optionally on chosen training queries, and charges the same ledger.

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: str | OutcomeTable = "SynthBernoulli",
        *,
        budget: int | None = None,
        split_seed: int | None = None,
        world_seed: int | None = None,
        train_fraction: float = 0.8,
        contexts: Any = "finite",
        backend: Any = None,
        live: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"IAPOEnv has no render modes; got render_mode={render_mode!r}")
        if isinstance(task, OutcomeTable):
            self.table = task
        else:
            from iapo_gym.tasks import load_task_table

            self.table = load_task_table(task, world_seed=world_seed)
        self.task = self.table.task
        self.strategy = self.table.strategy
        self.n_prompts = self.table.n_prompts
        self.n_max = self.table.n_max
        self.n_arms = self.table.n_arms
        self.n_objectives = self.table.n_objectives
        if backend is not None:  # a backend object or name is wrapped into a live source for this table
            from iapo_gym.live.env_mode import as_env_backend

            backend = as_env_backend(self.table, backend, **(live or {}))
        self.backend = backend

        if split_seed is None:
            self.train_queries, self.test_queries = self.table.train_queries(), self.table.test_queries()
        else:
            self.train_queries, self.test_queries = resplit(self.table.n_queries, split_seed, train_fraction)
        if self.train_queries.size == 0:
            raise ValueError(f"task {self.task} has no training queries; pass split_seed= to re-split the pooled queries")

        self.context_source = self._context_source(contexts)
        self.contexts: ContextSet = self.table.contexts if not isinstance(self.context_source, ContextSet) else self.context_source
        if isinstance(self.context_source, ContextSet):
            low = np.zeros(self.n_objectives + 1, dtype=np.float32)
            high = np.maximum(1.0, self.context_source.weights.max(axis=0)).astype(np.float32)
        else:
            low, high = self.context_source.low, self.context_source.high
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.n_arms)

        self._is_train = np.zeros(self.table.n_queries, dtype=bool)
        self._is_train[self.train_queries] = True
        self.ledger = BudgetLedger(budget)
        self._mask_cache: tuple[int, NDArray[np.bool_]] = (-1, np.zeros(0, dtype=bool))
        self._weights: NDArray[np.float64] | None = None
        self._context_index = -1

    # ------------------------------------------------------------------ construction helpers
    def _context_source(self, contexts: Any) -> Any:
        if isinstance(contexts, str):
            if contexts == "finite":
                return self.table.contexts
            if contexts == "continuous":
                from iapo_gym.continuous import ContinuousContexts

                return ContinuousContexts.for_table(self.table)
            raise ValueError(f"contexts must be 'finite', 'continuous', a ContextSet or a ContinuousContexts; got {contexts!r}")
        if getattr(contexts, "n_objectives", None) != self.n_objectives:
            raise ValueError(f"the contexts weight {getattr(contexts, 'n_objectives', '?')} objectives; task {self.task} has {self.n_objectives}")
        return contexts

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[NDArray[np.float32], dict]:
        """Draw the next context (``options={"context": i}`` or ``{"weights": w}`` fixes it).

        A reset with an explicit ``seed`` starts a new training run: the RNG is re-seeded and the
        budget ledger is cleared, so the same seed replays the same run bit for bit.
        """
        super().reset(seed=seed)
        if seed is not None:
            self.ledger.reset()
        options = options or {}
        if "weights" in options:
            weights = np.asarray(options["weights"], dtype=np.float64)
            if weights.shape != (self.n_objectives + 1,) or not np.all(np.isfinite(weights)) or weights[-1] < 0:
                raise ValueError(f"options['weights'] must be {self.n_objectives + 1} finite weights (the last, the cost weight, >= 0); got {weights!r}")
            self._weights = weights
            self._context_index = -1
        elif isinstance(self.context_source, ContextSet):
            idx = int(options.get("context", self.context_source.sample(self.np_random)))
            if not 0 <= idx < len(self.context_source.weights):
                raise ValueError(f"options['context'] must be a context index in 0..{len(self.context_source.weights) - 1}; got {idx}")
            self._context_index = idx
            self._weights = self.context_source.weights[idx]
        else:
            self._weights = self.context_source.sample(self.np_random, 1)[0]
            self._context_index = -1
        return self._weights.astype(np.float32), self._info(None)

    def step(self, action: int) -> tuple[NDArray[np.float32], float, bool, bool, dict]:
        """Pull arm ``action`` on a random training query under the current context."""
        if self._weights is None:
            raise gym.error.ResetNeeded("call reset() before step(): each episode is one context")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm index in 0..{self.n_arms - 1}; got {action!r}")
        prompt, n = divmod(int(action), self.n_max)  # flat arm a = p * N_max + (N - 1)
        n += 1
        if self.backend is not None:
            pulls = self.pull(np.array([prompt]), np.array([n]), width=self.n_max)
        else:  # the arm is valid and the query is drawn from the training split: skip pull()'s checks
            self.ledger.charge(n)
            query = self.train_queries[self.np_random.integers(0, self.train_queries.size, size=1)]
            pulls = _draw(self.table, np.array([prompt]), query, np.array([n]), self.np_random, self.n_max)
        reward = float(utility(pulls, self._weights[None, :])[0, 0])
        obs = self._weights.astype(np.float32)
        self._weights = None  # the episode is over
        return obs, reward, True, False, self._info(pulls)

    def action_masks(self) -> NDArray[np.bool_]:
        """Arms whose N still fits the budget (``(P * N_max,)`` bool; sb3-contrib's MaskablePPO reads this)."""
        k = self.ledger.affordable_n(self.n_max)
        if self._mask_cache[0] != k:  # the mask only depends on the largest affordable N
            self._mask_cache = (k, np.tile(np.arange(1, self.n_max + 1) <= k, self.n_prompts))
        return self._mask_cache[1].copy()

    # ------------------------------------------------------------------ batched structural API
    def pull(
        self,
        prompt: ArrayLike,
        n: ArrayLike,
        query: ArrayLike | None = None,
        *,
        width: int | None = None,
    ) -> Pulls:
        """Draw ``n[b]`` completions of ``prompt[b]`` for every ``b`` at once, charging ``sum(n)``.

        ``query`` (indices into the table) names each pull's training query — a deployment controls
        which training queries it sends; by default queries are drawn uniformly from the training
        split with the env's RNG. The charge is checked before anything is drawn.
        """
        prompt = np.atleast_1d(np.asarray(prompt, dtype=np.int64))
        n = np.broadcast_to(np.asarray(n, dtype=np.int64), prompt.shape)
        # every check happens before the charge, so a refused pull never spends budget
        if prompt.size and (prompt.min() < 0 or prompt.max() >= self.n_prompts):
            raise ValueError(f"prompt indices must lie in 0..{self.n_prompts - 1}; got {prompt.min()}..{prompt.max()}")
        if n.size and (n.min() < 1 or n.max() > self.n_max):
            raise ValueError(f"N must lie in 1..{self.n_max}; got {n.min()}..{n.max()}")
        if query is not None:
            query = np.broadcast_to(np.asarray(query, dtype=np.int64), prompt.shape)
            inside = (query >= 0) & (query < self._is_train.size)
            if not (inside.all() and self._is_train[query].all()):
                raise ValueError("every named query must belong to the training split (env.unwrapped.train_queries)")
        self.ledger.charge(int(n.sum()))  # raises before any draw (the RNG is untouched) when it does not fit
        if query is None:
            query = self.train_queries[self.np_random.integers(0, self.train_queries.size, size=prompt.size)]
        if self.backend is not None:
            pulls, tokens = self.backend.generate(prompt, n, query, self.np_random, width=width)
            self.ledger.record_tokens(int(tokens[0]), int(tokens[1]))
            return pulls
        return sample_pulls(self.table, prompt, query, n, self.np_random, width=width)

    def score(self, pulls: Pulls, weights: ArrayLike | None = None) -> NDArray[np.float64]:
        """Utilities ``(C, B)`` of ``pulls`` under ``weights`` (default: every context of the task)."""
        return utility(pulls, self.contexts.weights if weights is None else np.atleast_2d(weights))

    # ------------------------------------------------------------------ info
    def _info(self, pulls: Pulls | None) -> dict[str, Any]:
        K, L = self.n_objectives, self.n_max
        if pulls is None:
            prompt = n = query = -1
            outcomes = np.full(L, -1, dtype=np.int64)
            values = np.zeros((L, K))
            mask = np.zeros(L, dtype=bool)
            cost = 0.0
        else:
            prompt, n, query = int(pulls.prompt[0]), int(pulls.n[0]), int(pulls.query[0])
            outcomes, values, mask = pulls.outcome[0], pulls.values[0], pulls.mask[0]
            cost = float(pulls.cost[0].sum())
        left = self.ledger.remaining
        return {
            "prompt": prompt,
            "n": n,
            "query": query,
            "context": self._context_index,
            "outcomes": outcomes,
            "values": values,
            "mask": mask,
            "cost": cost,
            "budget_used": self.ledger.spent,
            "budget_left": -1 if left is None else left,
            "action_mask": self.action_masks(),
        }


def make_vector_env(num_envs: int = 1, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """``gym.make_vec(ID, num_envs=n)``: ``n`` independent envs whose one-step episodes reset in the same step.

    Every step returns the reward of that step's pull and the *next* context as observation
    (``AutoresetMode.SAME_STEP``), so no step is wasted on a reset. Sub-env ``i`` is seeded with
    ``seed + i`` by ``reset(seed=seed)``.
    """
    return gym.vector.SyncVectorEnv(
        [lambda: IAPOEnv(**kwargs) for _ in range(int(num_envs))],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
