"""The IAPO environment: one step = one deployment decision for one context."""

from __future__ import annotations

import threading
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import ArrayLike, NDArray

from iapo_gym._checks import finite_weights, whole_array, whole_number
from iapo_gym.contexts import ContextSet
from iapo_gym.ledger import BudgetLedger
from iapo_gym.sampling import Pulls, _draw
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

    Every episode is one step: ``terminated=True``, ``truncated=False``. A seeded ``reset(seed=...)``
    starts a new training run: it re-seeds the env and clears the env's own ledger (a shared ledger
    passed as ``budget=`` is left to its owner); the unseeded resets of the following episodes never
    touch the ledger. The run ends when the budget is spent.
    By default (``on_exhausted="raise"``) a pull that does not fit raises
    :class:`~iapo_gym.ledger.BudgetExceededError` before anything is drawn;
    ``info["action_mask"]`` / :meth:`action_masks` list the affordable arms. With
    ``on_exhausted="truncate"`` (for unmodified RL training loops) a step never raises for the
    budget: an ``N`` larger than what is left is clipped to what is left (``info["n"]`` says how
    many completions were drawn, ``info["clipped"]`` is True), and a step with nothing left draws
    nothing and returns ``reward=0.0``, ``terminated=False``, ``truncated=True``.

    ## Info

    Same keys and shapes at every reset and step: ``prompt``, ``n``, ``query``, ``context``
    (context index, -1 for a continuous context), ``outcomes`` (``(N_max,)`` int64 answer category or
    outcome index, -1 padding), ``values`` (``(N_max, K)`` float64), ``mask`` (``(N_max,)`` bool),
    ``cost`` (total cost of the pull), ``budget_used``, ``budget_left`` (-1 when unlimited; both
    count the whole ledger, so sub-envs sharing one ledger report the run's total),
    ``clipped`` (True when ``on_exhausted="truncate"`` drew fewer completions than the arm's N),
    ``action_mask`` (``(P * N_max,)`` bool). At reset the pull fields hold -1 / zeros.

    ## Arguments

    ``gym.make("IAPO-MATH-v0", budget=5000, split_seed=3)``

    * ``task``: task name or env id (see ``iapo_gym.tasks.TASKS``), or an ``OutcomeTable``.
    * ``budget``: completions allowed (``None``: unlimited), or a
      :class:`~iapo_gym.ledger.BudgetLedger` to share one budget between several envs of one run
      (the envs then never clear it; its owner calls ``ledger.reset()``).
    * ``on_exhausted``: ``"raise"`` (default) or ``"truncate"`` (see Episode End).
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

    * ``render_mode``: the env draws nothing (``metadata["render_modes"] == []``). Any mode is
      accepted so that callers that always pass one (SB3's ``make_vec_env`` passes
      ``"rgb_array"``) work; as Gymnasium expects of an env without render modes,
      ``env.render_mode`` stays ``None`` and :meth:`render` returns ``None`` (``gym.make`` warns
      that the mode is not supported).

    The batched structural API on ``env.unwrapped`` (:meth:`pull`, :meth:`score`) draws many
    pulls at once, optionally on chosen training queries, and charges the same ledger.

    Threads: ``step``, ``reset`` and ``pull`` of one env are serialised by a lock, and the ledger
    checks and charges atomically, so threads sharing envs or a ledger never overspend and never
    leave a charged pull without its result.

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": []}
    # The two attributes a batch agent reads from every run's env (Random's fit_many reads nothing
    # else) live in the object itself rather than in its attribute dict: on a batch of new envs
    # that is one memory access less per run.
    __slots__ = ("table", "contexts")

    def __init__(
        self,
        task: str | OutcomeTable = "SynthBernoulli",
        *,
        budget: int | BudgetLedger | None = None,
        split_seed: int | None = None,
        world_seed: int | None = None,
        train_fraction: float = 0.8,
        contexts: Any = "finite",
        backend: Any = None,
        live: dict[str, Any] | None = None,
        render_mode: str | None = None,
        on_exhausted: Literal["raise", "truncate"] = "raise",
    ) -> None:
        # every argument is checked before anything is loaded, allocated or charged
        if render_mode is not None and not isinstance(render_mode, str):
            raise TypeError(f"render_mode must be a string or None; got {render_mode!r}")
        # No render modes (metadata["render_modes"] == []): as Gymnasium's checker expects, render_mode
        # stays None whatever is asked (SB3's make_vec_env asks for "rgb_array"; gym.make warns about it).
        self.render_mode = None
        if on_exhausted not in ("raise", "truncate"):
            raise ValueError(f"on_exhausted must be 'raise' or 'truncate'; got {on_exhausted!r}")
        self.on_exhausted = on_exhausted
        if isinstance(budget, BudgetLedger):
            ledger, self._owns_ledger = budget, False
        else:
            ledger, self._owns_ledger = BudgetLedger.owned(budget), True
        if world_seed is not None:
            world_seed = whole_number(world_seed, "world_seed", minimum=0)
        if split_seed is not None:
            split_seed = whole_number(split_seed, "split_seed", minimum=0)
        numeric = isinstance(train_fraction, (int, float, np.floating)) and not isinstance(train_fraction, bool)
        if not (numeric and 0.0 < float(train_fraction) < 1.0):
            raise ValueError(f"train_fraction must be a number strictly between 0 and 1; got {train_fraction!r}")
        _check_backend(backend)
        if isinstance(task, OutcomeTable):
            self.table = task
        elif isinstance(task, str):
            from iapo_gym.tasks import load_task_table

            self.table = load_task_table(task, world_seed=world_seed)
        else:
            raise TypeError(
                f"task must be a task name or env id (e.g. 'MATH', 'IAPO-MATH-v0') or an OutcomeTable; got {task!r} "
                f"({type(task).__name__})"
            )
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
        finite = isinstance(self.context_source, ContextSet)
        self.contexts: ContextSet = self.context_source if finite else self.table.contexts
        if isinstance(self.context_source, ContextSet):
            low = np.zeros(self.n_objectives + 1, dtype=np.float32)
            high = np.maximum(1.0, self.context_source.weights.max(axis=0)).astype(np.float32)
        else:
            low, high = self.context_source.low, self.context_source.high
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.n_arms)

        self._is_train = np.zeros(self.table.n_queries, dtype=bool)
        self._is_train[self.train_queries] = True
        self.ledger = ledger
        self._lock = threading.RLock()
        self._prepaid: int | None = None  # completions a vector env charged for this env's next step
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
            raise ValueError(
                f"contexts must be 'finite', 'continuous', a ContextSet or a ContinuousContexts; got {contexts!r}"
            )
        from iapo_gym.continuous import ContinuousContexts

        if not isinstance(contexts, (ContextSet, ContinuousContexts)):
            raise TypeError(
                f"contexts must be 'finite', 'continuous', a ContextSet or a ContinuousContexts; got {contexts!r} "
                f"({type(contexts).__name__})"
            )
        if contexts.n_objectives != self.n_objectives:
            raise ValueError(
                f"the contexts weight {contexts.n_objectives} objectives but task {self.task} has {self.n_objectives}; "
                "pass contexts with that many objective weights"
            )
        return contexts

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[NDArray[np.float32], dict]:
        """Draw the next context (``options={"context": i}`` or ``{"weights": w}`` fixes it).

        A reset with an explicit ``seed`` starts a new training run: the RNG is re-seeded and the
        env's own budget ledger is cleared (a ledger passed as ``budget=`` is shared and left to
        its owner), so the same seed replays the same run bit for bit.
        """
        if seed is not None:
            seed = whole_number(seed, "seed", minimum=0)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None; got {type(options).__name__}")
        options = options or {}
        with self._lock:
            weights, idx = self._next_context(options, seeded=seed)
            self._weights, self._context_index = weights, idx
            return weights.astype(np.float32), self._info(None)

    def _begin_run(self, seed: int, rng: np.random.Generator | None = None) -> None:
        """``reset(seed=seed)`` without building the observation and info (a batch of runs reads neither).

        Leaves the env exactly as :meth:`reset` does: the RNG re-seeded, the env's own ledger
        cleared and the first context drawn. ``seed`` must be a Python int ``>= 0``. ``rng``, when
        given, must be a fresh ``Generator(PCG64(SeedSequence(seed)))`` -- what gymnasium's
        ``Env.reset(seed=seed)`` builds (``gymnasium.utils.seeding.np_random``), as
        :func:`iapo_gym._seeding.generators` builds many at once -- and becomes the env's RNG, with
        ``np_random_seed`` the seed, as gymnasium sets them.
        """
        with self._lock:
            if rng is None:
                self._weights, self._context_index = self._next_context({}, seeded=seed)
                return
            self._np_random, self._np_random_seed = rng, seed
            if self._owns_ledger:
                self.ledger.reset()
            self._weights, self._context_index = self._first_context()

    def _next_context(self, options: dict[str, Any], seeded: int | None) -> tuple[NDArray[np.float64], int]:
        """Check ``options`` (before the RNG or the ledger change), then seed and draw the context."""
        if "weights" in options:
            w = options["weights"]
            try:
                weights = finite_weights(w, self.n_objectives, "options['weights']")
                if np.ndim(w) != 1:
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(
                    f"options['weights'] must be {self.n_objectives + 1} finite weights "
                    f"(the last, the cost weight, >= 0); got {w!r}"
                ) from None
            weights, idx = weights[0], -1
        elif "context" in options:
            if not isinstance(self.context_source, ContextSet):
                raise ValueError(
                    "options['context'] needs a finite context set; pass options={'weights': w} for continuous contexts"
                )
            last = len(self.context_source.weights) - 1
            try:
                idx = whole_number(options["context"], "options['context']", minimum=0, maximum=last)
            except (TypeError, ValueError):
                got = options["context"]
                raise ValueError(f"options['context'] must be a context index in 0..{last}; got {got!r}") from None
            weights = self.context_source.weights[idx]
        else:
            weights = None
        super().reset(seed=seeded)
        if seeded is not None and self._owns_ledger:
            self.ledger.reset()
        if weights is not None:
            return weights, idx
        return self._first_context()

    def _first_context(self) -> tuple[NDArray[np.float64], int]:
        """A context drawn from :attr:`context_source` with the env's RNG: ``(weights, index)`` (index -1: continuous)."""
        if isinstance(self.context_source, ContextSet):
            idx = int(self.context_source.sample(self.np_random))
            return self.context_source.weights[idx], idx
        return self.context_source.sample(self.np_random, 1)[0], -1

    def _arm(self, action: Any) -> tuple[int, int]:
        """``(prompt, N)`` of a flat arm, refusing bools, fractions and out-of-range indices."""
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action[()]
        try:
            a = whole_number(action, "action")
        except (TypeError, ValueError):
            raise ValueError(f"action must be an arm index (an int) in 0..{self.n_arms - 1}; got {action!r}") from None
        if not 0 <= a < self.n_arms:
            raise ValueError(f"action must be an arm index (an int) in 0..{self.n_arms - 1}; got {action!r}")
        prompt, n = divmod(a, self.n_max)  # flat arm a = p * N_max + (N - 1)
        return prompt, n + 1

    def step(self, action: int) -> tuple[NDArray[np.float32], float, bool, bool, dict]:
        """Pull arm ``action`` on a random training query under the current context."""
        with self._lock:
            if self._weights is None:
                raise gym.error.ResetNeeded("call reset() before step(): each episode is one context")
            prompt, n = self._arm(action)
            prepaid, self._prepaid = self._prepaid, None
            if prepaid is not None:
                charged = prepaid
            elif self.on_exhausted == "truncate":
                charged = self.ledger.charge_at_most(n)
            else:
                self.ledger.charge(n)  # raises before anything is drawn when it does not fit
                charged = n
            return self._step_charged(prompt, n, charged)

    def _step_charged(self, prompt: int, n: int, charged: int) -> tuple[NDArray[np.float32], float, bool, bool, dict]:
        """Draw ``charged`` (already charged, ``<= n``) completions of ``prompt`` and end the episode."""
        weights = self._weights
        assert weights is not None
        obs = weights.astype(np.float32)
        if charged == 0 and n > 0:  # on_exhausted="truncate" with nothing left: nothing drawn, nothing charged
            self._weights = None
            info = self._info(None)
            info["clipped"] = True
            return obs, 0.0, False, True, info
        pulls = self._draw_charged(np.array([prompt]), np.array([charged]), None, self.n_max)
        reward = float(utility(pulls, weights[None, :])[0, 0])
        self._weights = None  # the episode is over
        info = self._info(pulls)
        info["clipped"] = charged < n
        return obs, reward, True, False, info

    def _draw_charged(
        self, prompt: NDArray[np.int64], n: NDArray[np.int64], query: NDArray[np.int64] | None, width: int
    ) -> Pulls:
        """Draw pulls whose ``sum(n)`` is already charged; on any failure the charge is refunded."""
        try:
            if query is None:
                query = self.train_queries[self.np_random.integers(0, self.train_queries.size, size=prompt.size)]
            if self.backend is not None:
                pulls, tokens = self.backend.generate(prompt, n, query, self.np_random, width=width)
                self.ledger.record_tokens(int(tokens[0]), int(tokens[1]))
                return pulls
            return _draw(self.table, prompt, query, n, self.np_random, width)
        except BaseException:
            self.ledger._refund(int(n.sum()))  # no result was returned: the completions were not delivered
            raise

    def render(self) -> None:
        """The env draws nothing: returns ``None`` for every ``render_mode``."""
        return None

    def action_masks(self) -> NDArray[np.bool_]:
        """Arms whose N still fits the budget (``(P * N_max,)`` bool; sb3-contrib's MaskablePPO reads this)."""
        k = self.ledger.affordable_n(self.n_max)
        cache = self._mask_cache
        if cache[0] != k:  # the mask only depends on the largest affordable N
            cache = (k, np.tile(np.arange(1, self.n_max + 1) <= k, self.n_prompts))
            self._mask_cache = cache
        return cache[1].copy()

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
        split with the env's RNG. ``width`` pads the result to ``max(n) <= width <= n_max``
        (default ``max(n)``). Every argument is checked before the charge, and the charge before
        anything is drawn: a refused pull spends nothing and leaves the RNG untouched.
        """
        prompt, n, query, width = self._check_pull(prompt, n, query, width)
        with self._lock:
            self.ledger.charge(int(n.sum()))  # raises before any draw when it does not fit
            return self._draw_charged(prompt, n, query, width)

    def _check_pull(
        self, prompt: ArrayLike, n: ArrayLike, query: ArrayLike | None, width: Any
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64] | None, int]:
        prompt = whole_array(prompt, "prompt")
        if prompt.ndim > 1:
            raise ValueError(f"prompt must be a 1-D array of prompt indices (one per pull); got shape {prompt.shape}")
        prompt = np.atleast_1d(prompt)
        n = whole_array(n, "n")
        if n.ndim > 1 or (n.ndim == 1 and n.shape != prompt.shape):
            raise ValueError(f"n must be one whole number or one per pull (shape {prompt.shape}); got shape {n.shape}")
        n = np.broadcast_to(n, prompt.shape)
        if prompt.size and (prompt.min() < 0 or prompt.max() >= self.n_prompts):
            raise ValueError(f"prompt indices must lie in 0..{self.n_prompts - 1}; got {prompt.min()}..{prompt.max()}")
        if n.size and (n.min() < 1 or n.max() > self.n_max):
            raise ValueError(f"N must lie in 1..{self.n_max}; got {n.min()}..{n.max()}")
        if query is not None:
            query = whole_array(query, "query")
            if query.ndim > 1 or (query.ndim == 1 and query.shape != prompt.shape):
                raise ValueError(f"query must be one index or one per pull (shape {prompt.shape}); got shape {query.shape}")
            query = np.broadcast_to(query, prompt.shape)
            inside = (query >= 0) & (query < self._is_train.size)
            if not (inside.all() and self._is_train[np.where(inside, query, 0)].all()):
                raise ValueError("every named query must belong to the training split (env.unwrapped.train_queries)")
        top = int(n.max(initial=0))
        if width is None:
            width = top
        else:
            width = whole_number(width, "width", minimum=max(top, 1), maximum=self.n_max)
        return prompt, n.copy(), None if query is None else query.copy(), width

    def score(self, pulls: Pulls, weights: ArrayLike | None = None) -> NDArray[np.float64]:
        """Utilities ``(C, B)`` of ``pulls`` under ``weights`` (default: every context of the task).

        ``weights`` must be finite, ``(C, K + 1)`` or ``(K + 1,)``, with a cost weight ``>= 0``.
        """
        if not isinstance(pulls, Pulls):
            raise TypeError(f"pulls must be the Pulls returned by env.pull; got {type(pulls).__name__}")
        if weights is None:
            return utility(pulls, self.contexts.weights)
        return utility(pulls, finite_weights(weights, self.n_objectives))

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
            "clipped": False,
            "action_mask": self.action_masks(),
        }


#: Backend names ``IAPOEnv(backend=...)`` understands.
BACKEND_NAMES = ("vllm", "openai")


def _check_backend(backend: Any) -> None:
    """Refuse a ``backend`` that is neither a known name nor a generation object (before anything is loaded)."""
    if backend is None:
        return
    if isinstance(backend, str):
        if backend not in BACKEND_NAMES:
            names = ", ".join(repr(b) for b in BACKEND_NAMES)
            raise ValueError(f"backend must be one of {names}, a backend object or None; got {backend!r}")
        return
    if not (callable(getattr(backend, "generate", None)) or callable(getattr(backend, "stream", None))):
        raise TypeError(
            f"backend must be 'vllm', 'openai', an iapo_gym.live backend (with stream()) or a LiveSource "
            f"(with generate()); got {backend!r} ({type(backend).__name__})"
        )


def make_vector_env(num_envs: int = 1, **kwargs: Any) -> gym.vector.VectorEnv:
    """``gym.make_vec(ID, num_envs=n, budget=T)``: ``n`` envs sharing ONE budget ledger of ``T``.

    See :func:`iapo_gym.vector.make_vector_env`.
    """
    from iapo_gym.vector import make_vector_env as make

    return make(num_envs, **kwargs)
