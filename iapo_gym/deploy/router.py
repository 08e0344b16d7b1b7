"""The IAPO router: a learnt policy in front of an LLM.

``Router(policy, spec, backend).answer(query, context)`` does what the policy was learnt for:

1. **context** -> weights: a named context of the task (``"low"``), a weight vector
   ``(w_1..w_K, w_cost)``, or any continuous weights (continuous policies act on them directly;
   finite-context policies use their nearest context, as they do in the simulator);
2. **arm** ``(p, N)`` = ``policy(weights)``;
3. **generate**: one request for ``N`` completions of prompt ``p`` applied to the query (the
   spec's chat rendering), sampled as the table was (the spec's sampling), with a per-answer seed;
4. **aggregate**:

   * majority voting (``mv``): each completion's answer is read by the task scorer's
     ``extract`` and grouped into equivalence classes by its ``same`` (the table's clustering:
     completions with no readable answer form one class that votes like any other, and the router
     returns no answer when it wins). The class with most votes wins; **ties are broken uniformly
     at random** with a generator seeded by the answer's seed, so the expected credit is the
     table's ``1/t`` and a given seed always returns the same answer. The returned text is the
     first completion of the winning class;
   * best-of-N (``bon``): every completion is scored by the spec's scorer (reward models), the
     scores are weighted by the context's objective weights, and the first completion with the
     highest weighted score is returned;

5. **account**: prompt and completion tokens as the backend reports them (a request for ``N``
   completions bills the prompt once), and the cost in the table's cost unit: completion tokens
   times the table's cost per token for tables built from tokens, else ``N`` times the table's mean
   cost of one completion of prompt ``p``.

:meth:`Router.answer_many` sends all requests of a batch to the backend at once (the OpenAI
backend keeps its ``concurrency`` requests in flight; the in-process engine batches them).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from iapo_gym.deploy.policy_io import PolicyDocument, deployment_of
from iapo_gym.live.scorers import NO_ANSWER

__all__ = ["Answer", "ContextError", "Router", "majority_vote"]

Context = str | Sequence[float] | NDArray[np.floating] | Mapping[str, Any]


class ContextError(ValueError):
    """A context the router cannot deploy (unknown name, wrong length, negative cost weight ...)."""


@dataclass(frozen=True)
class Answer:
    """What the router returns for one query.

    Attributes:
        text: the aggregated answer: MV, the first completion of the winning answer class; BoN,
            the best-scoring completion.
        answer: MV: the winning answer in the scorer's canonical form (``None`` when completions
            with no readable answer won the vote); BoN: ``None``.
        strategy: ``"mv"`` or ``"bon"``.
        prompt: index of the prompt used; ``n``: completions generated; ``arm``: flat arm.
        context: the weight vector deployed; ``context_name``: the named context it is (or, for a
            finite-context policy, the nearest one), ``None`` for other continuous contexts.
        votes: MV: canonical answer -> votes, in decreasing order (``"<no answer>"`` for completions
            with no readable answer); ``tied``: how many classes shared the top count.
        scores: BoN: each completion's weighted score; ``chosen``: index of the returned completion.
        completions: every completion text, in the backend's order.
        prompt_tokens, completion_tokens: as billed by the backend (the prompt once per request).
        cost: in ``cost_unit``; ``cost_basis``: ``"tokens"`` (measured) or ``"table"`` (the table's
            mean per-completion cost of the prompt times ``N``).
        seed: the sampling seed of the request (the same seed gives the same answer on a
            deterministic backend).
        finish_reason: ``"length"`` when any completion hit the token limit, else ``"stop"``.
    """

    text: str
    answer: str | None
    strategy: str
    prompt: int
    n: int
    arm: int
    context: tuple[float, ...]
    context_name: str | None
    votes: dict[str, int] | None
    tied: int
    scores: tuple[float, ...] | None
    chosen: int
    completions: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cost_unit: str
    cost_basis: str
    seed: int
    finish_reason: str

    def to_json(self, completions: bool = False) -> dict[str, Any]:
        """Plain-JSON form (completion texts only when ``completions``)."""
        out = asdict(self)
        out["context"] = list(self.context)
        out["scores"] = None if self.scores is None else list(self.scores)
        if completions:
            out["completions"] = list(self.completions)
        else:
            out.pop("completions")
        return out


def majority_vote(
    answers: Sequence[str | None], scorer: Any, rng: np.random.Generator
) -> tuple[int, list[str], NDArray[np.int64], NDArray[np.int64], int]:
    """Group extracted answers into equivalence classes and pick the winner.

    Args:
        answers: each completion's extracted answer (``None``: no readable answer).
        scorer: the task's answer scorer (``same(a, b)`` decides equivalence).
        rng: breaks ties uniformly at random.

    Returns:
        ``(winner class, class labels, class of each answer (n,), votes per class, tied)``; the
        class of unreadable answers is labelled :data:`~iapo_gym.live.scorers.NO_ANSWER`.
    """
    keys = [NO_ANSWER if a is None else str(a) for a in answers]
    uniq, first_idx, inverse = np.unique(np.array(keys, dtype=object), return_index=True, return_inverse=True)
    labels: list[str] = []
    cls_of_uniq = np.empty(len(uniq), dtype=np.int64)
    none_cls = -1
    for u in np.argsort(first_idx, kind="stable"):  # one step per distinct answer string, first seen first
        key = str(uniq[u])
        if key == NO_ANSWER:
            if none_cls < 0:
                none_cls = len(labels)
                labels.append(NO_ANSWER)
            cls_of_uniq[u] = none_cls
            continue
        for r, rep in enumerate(labels):
            if r != none_cls and scorer.same(key, rep):
                cls_of_uniq[u] = r
                break
        else:
            cls_of_uniq[u] = len(labels)
            labels.append(key)
    cls = cls_of_uniq[np.asarray(inverse).reshape(-1)]
    votes = np.bincount(cls, minlength=len(labels))
    top = np.flatnonzero(votes == votes.max())
    winner = int(top[rng.integers(top.size)]) if top.size > 1 else int(top[0])
    return winner, labels, cls, votes, int(top.size)


class Router:
    """Deploy ``policy`` for ``spec``'s task with ``backend`` (see the module docstring).

    Args:
        policy: a policy loaded with :func:`iapo_gym.load_policy` (or any zoo policy with ``table``).
        spec: the task spec (a ``TaskSpec``, or a spec name/path): prompts, chat rendering,
            scorer, sampling. Refused unless its task fingerprint and sampling match the policy's.
        backend: an ``iapo_gym.live`` backend (``OpenAIBackend``, ``VLLMBackend``); its sampling
            must be the spec's.
        table: the table (or env) the policy was learnt on, for a policy that was not loaded from
            a document.
        scorer: overrides the scorer the spec names (e.g. reward models already loaded).
        seed: seeds the per-answer sampling seeds of answers asked without one.
    """

    def __init__(self, policy: Any, spec: Any, backend: Any, *, table: Any = None, scorer: Any = None,
                 seed: int = 0) -> None:
        if isinstance(spec, str):
            from iapo_gym.live.specs import load_spec

            spec = load_spec(spec)
        self.policy = policy
        self.spec = spec
        self.backend = backend
        self.deployment: PolicyDocument = deployment_of(policy, table)
        task = self.deployment.task
        task.check_spec(spec)
        if int(policy.n_max) != task.n_max:
            raise ValueError(f"the policy decodes arms with n_max={policy.n_max}; its task has n_max={task.n_max}")
        backend_sampling = getattr(backend, "sampling", None)
        if backend_sampling is not None and backend_sampling.to_json() != spec.sampling.to_json():
            raise ValueError(
                f"the backend samples with {backend_sampling.to_json()}, the spec with {spec.sampling.to_json()}: "
                "build the backend with the spec's sampling (SamplingConfig(**spec.sampling.to_json()))"
            )
        if scorer is None:
            from iapo_gym.live.scorers import make_scorer

            scorer = make_scorer(spec.scorer)
        self.scorer = scorer
        self.seed = int(seed)
        self._counter = 0
        self._lock = threading.Lock()  # policy.act (stochastic policies draw) and the seed counter
        self._score_lock = threading.Lock()  # reward models are not re-entrant

    # ------------------------------------------------------------------ contexts
    @property
    def context_names(self) -> tuple[str, ...]:
        """Names of the task's finite contexts."""
        return self.deployment.task.contexts.names

    def resolve_context(self, context: Context) -> tuple[NDArray[np.float64], str | None]:
        """``(weights (K + 1,), name or None)`` of a named context, a weight vector or ``{"name"|"weights": ...}``."""
        contexts = self.deployment.task.contexts
        if isinstance(context, Mapping):
            if "name" in context:
                context = context["name"]
            elif "weights" in context:
                context = context["weights"]
            else:
                raise ContextError("a context object needs 'name' (e.g. \"low\") or 'weights' (a list of numbers)")
        if isinstance(context, str):
            if context not in contexts.names:
                raise ContextError(f"unknown context {context!r}; this task's contexts are {list(contexts.names)}, "
                                   f"or send weights [w_1..w_K, w_cost] (K={contexts.n_objectives})")
            return contexts.weights[contexts.names.index(context)].copy(), context
        try:
            w = np.asarray(context, dtype=np.float64)
        except (TypeError, ValueError):
            raise ContextError(
                f"context must be a name, or a list of {contexts.n_objectives + 1} numbers; got {context!r}"
            ) from None
        k = contexts.n_objectives
        if w.shape != (k + 1,):
            raise ContextError(f"context weights must be {k + 1} numbers (w_1..w_{k}, w_cost); got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ContextError("context weights must be finite numbers")
        if w[-1] < 0 or np.any(w[:-1] < 0):
            raise ContextError("context weights must be >= 0 (the last one is the cost weight's magnitude)")
        from iapo_gym.agents.base import StochasticPolicy, TablePolicy

        if isinstance(self.policy, TablePolicy | StochasticPolicy):
            own = self.policy.contexts
            return w, own.names[int(own.index_of(w))]
        exact = np.flatnonzero(np.all(np.isclose(contexts.weights, w[None, :], rtol=0, atol=1e-12), axis=1))
        return w, (contexts.names[int(exact[0])] if exact.size else None)

    # ------------------------------------------------------------------ seeds and arms
    def _next_seed(self) -> int:
        with self._lock:
            self._counter += 1
            counter = self._counter
        return int(np.random.SeedSequence([self.seed, counter]).generate_state(1)[0] & 0x7FFFFFFF)

    def choose(self, weights: NDArray[np.float64]) -> tuple[int, int, int]:
        """``(flat arm, prompt, N)`` the policy deploys for one weight vector."""
        with self._lock:
            arm = int(self.policy.act(weights[None, :])[0])
        n_max = self.deployment.task.n_max
        if not 0 <= arm < len(self.spec.prompts) * n_max:
            raise RuntimeError(f"the policy returned arm {arm}, outside 0..{len(self.spec.prompts) * n_max - 1}")
        p, n = divmod(arm, n_max)
        return arm, p, n + 1

    # ------------------------------------------------------------------ answering
    def _request(self, query: Any, context: Context, seed: int | None) -> tuple[Any, dict[str, Any]]:
        from iapo_gym.live.backends import GenerationRequest
        from iapo_gym.live.specs import Query

        if not isinstance(query, Query):
            if not isinstance(query, str):
                raise TypeError(f"query must be a string or a Query; got {type(query).__name__}")
            query = Query("request", query)
        weights, name = self.resolve_context(context)
        arm, p, n = self.choose(weights)
        seed = self._next_seed() if seed is None else int(seed)
        req = GenerationRequest(self.spec.messages(p, query), n, seed)
        return req, {"query": query, "weights": weights, "name": name, "arm": arm, "prompt": p, "n": n, "seed": seed}

    def _aggregate(self, gen: Any, meta: dict[str, Any]) -> Answer:
        task = self.deployment.task
        texts = tuple(gen.texts)
        n, p, w = meta["n"], meta["prompt"], meta["weights"]
        if len(texts) != n:
            raise RuntimeError(f"the backend returned {len(texts)} completions for a request of {n}")
        votes: dict[str, int] | None = None
        scores: tuple[float, ...] | None = None
        tied = 1
        if self.spec.strategy == "mv":
            rng = np.random.default_rng([meta["seed"], 0x1A90])
            answers = [self.scorer.extract(t) for t in texts]
            winner, labels, cls, counts, tied = majority_vote(answers, self.scorer, rng)
            chosen = int(np.flatnonzero(cls == winner)[0])
            answer = None if labels[winner] == NO_ANSWER else labels[winner]
            order = np.lexsort((np.arange(len(labels)), -counts))
            votes = {labels[c]: int(counts[c]) for c in order}
        else:
            with self._score_lock:
                values = np.asarray(self.scorer.score([meta["query"].text] * n, list(texts)), dtype=np.float64)
            weighted = values @ w[:-1]
            chosen = int(np.argmax(weighted))
            scores = tuple(float(x) for x in weighted)
            answer = None
        completion_tokens = int(gen.total_completion_tokens)
        if task.cost_scale_per_token is not None:
            cost, basis = completion_tokens * float(task.cost_scale_per_token), "tokens"
        elif task.cost_per_completion:
            cost, basis = n * float(task.cost_per_completion[p]), "table"
        else:
            cost, basis = float("nan"), "unknown"
        reasons = tuple(gen.finish_reasons or ())
        return Answer(
            text=texts[chosen], answer=answer, strategy=self.spec.strategy, prompt=p, n=n, arm=meta["arm"],
            context=tuple(float(x) for x in w), context_name=meta["name"], votes=votes, tied=tied, scores=scores,
            chosen=chosen, completions=texts, prompt_tokens=int(gen.prompt_tokens), completion_tokens=completion_tokens,
            cost=cost, cost_unit=task.cost_unit, cost_basis=basis, seed=meta["seed"],
            finish_reason="length" if "length" in reasons else "stop",
        )

    def answer(self, query: Any, context: Context, *, seed: int | None = None) -> Answer:
        """Answer one query (a string or a ``Query``) under ``context``.

        Raises:
            ContextError: the context cannot be deployed (the message names the fix).
            iapo_gym.live.backends.BackendError: the LLM failed after the backend's retries.
        """
        req, meta = self._request(query, context, seed)
        return self._aggregate(self.backend.generate([req])[0], meta)

    def answer_many(self, queries: Sequence[Any], contexts: Context | Sequence[Context],
                    *, seeds: Sequence[int] | None = None) -> list[Answer]:
        """Answer many queries in one backend batch; ``contexts`` is one context or one per query."""
        queries = list(queries)
        per_query: list[Any] = ([contexts] * len(queries) if isinstance(contexts, str | Mapping) or _is_vector(contexts)
                                else list(contexts))
        if len(per_query) != len(queries):
            raise ContextError(f"got {len(per_query)} contexts for {len(queries)} queries; give one, or one per query")
        if seeds is not None and len(seeds) != len(queries):
            raise ValueError(f"got {len(seeds)} seeds for {len(queries)} queries")
        built = [self._request(q, c, None if seeds is None else seeds[i])
                 for i, (q, c) in enumerate(zip(queries, per_query, strict=True))]
        gens = self.backend.generate([r for r, _ in built])
        return [self._aggregate(g, meta) for g, (_, meta) in zip(gens, built, strict=True)]


def _is_vector(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 1
    return isinstance(x, Sequence) and len(x) > 0 and all(isinstance(v, int | float) for v in x)
