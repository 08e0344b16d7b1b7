"""Live mode: pulls answered by a real LLM instead of a table, every generation recorded.

:class:`LiveSource` turns a batch of pulls ``(prompt, n, query)`` into one request per pull
(``n`` completions, a seed drawn from the caller's RNG), scores the completions with the task's
scorer and returns the same :class:`~iapo_gym.sampling.Pulls` record a table would, plus the
token counts the ledger charges. The environment (``gym.make(ID, backend=...)``) uses it in
place of its table sampler.

Outcome encoding, as in tables:

* **MV**: answer categories are assigned per query as answers are first seen: category 0 is the
  gold answer, each new (non-equivalent) answer gets the next index, unreadable answers share
  one category. ``values[..., 0] = (outcome == 0)``.
* **BoN**: ``values`` are the scorer's objective vectors; ``outcome`` numbers the completions of
  a (prompt, query) in the order they were generated.
* **Cost** per completion: its completion tokens times ``cost_per_token`` (default: the spec's
  ``cost.per_token``, else ``cost.max_cost / max_tokens``, so a completion that uses all of
  ``max_tokens`` costs ``max_cost``).

Recording: with ``record=PATH`` every pull is appended (one JSON line, fsynced) with its messages
seed, texts, token counts and scores. :class:`ReplayBackend` serves a recording back, so the
same agent with the same seeds reproduces the run exactly with no LLM, and
:func:`recording_to_table` turns a recording into an :class:`OutcomeTable` of the empirical
outcome distributions it observed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym.live.backends import Backend, Generation, GenerationRequest, SamplingConfig
from iapo_gym.live.checkpoint import CheckpointError, read_units, seal
from iapo_gym.live.scorers import NO_ANSWER, cluster_answers, make_scorer
from iapo_gym.live.specs import Query, TaskSpec, load_queries
from iapo_gym.sampling import Pulls
from iapo_gym.tables.format import OutcomeTable


class LivePulls(NamedTuple):
    """What :meth:`LiveSource.pull` returns."""

    pulls: Pulls
    prompt_tokens: NDArray[np.int64]  # (B,)
    completion_tokens: NDArray[np.int64]  # (B,)


class LiveSource:
    """Generates, scores and records live pulls for one task.

    Args:
        spec: the task spec (prompts, scorer, strategy, sampling via the backend).
        backend: the LLM backend.
        queries: the task's queries (default: :func:`load_queries` of the spec).
        record: optional JSONL path that receives every generation.
        cost_per_token: see the module docstring.
        scorer: a scorer instance (default: built from the spec).
    """

    def __init__(
        self,
        spec: TaskSpec,
        backend: Backend,
        queries: Sequence[Query] | None = None,
        *,
        record: str | Path | None = None,
        cost_per_token: float | None = None,
        scorer: Any = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.queries = list(queries) if queries is not None else load_queries(spec)
        self.scorer = scorer or make_scorer(spec.scorer)
        if self.scorer.kind != spec.strategy:
            raise ValueError(f"scorer {self.scorer.name!r} does not fit strategy {spec.strategy!r}")
        if cost_per_token is None:
            cost_per_token = spec.cost.get("per_token") or float(spec.cost["max_cost"]) / backend.sampling.max_tokens
        self.cost_per_token = float(cost_per_token)
        self.record = Path(record) if record is not None else None
        self._labels: dict[int, list[str]] = {}  # MV: per query, canonical answer of each category
        self._counter: dict[tuple[int, int], int] = {}  # BoN: completions generated per (p, q)
        self.pulls_made = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)

    @property
    def strategy(self) -> str:
        """``"mv"`` or ``"bon"``."""
        return self.spec.strategy

    @property
    def n_queries(self) -> int:
        """Number of queries the source can ask."""
        return len(self.queries)

    def _category(self, q: int, answer: str | None) -> int:
        labels = self._labels.setdefault(q, [self.scorer.gold_key(self.queries[q].gold)])
        key = NO_ANSWER if answer is None else answer
        for i, lab in enumerate(labels):
            if lab == key or (answer is not None and lab != NO_ANSWER and self.scorer.same(answer, lab)):
                return i
        labels.append(key)
        return len(labels) - 1

    def pull(self, prompt: ArrayLike, n: ArrayLike, query: ArrayLike, rng: np.random.Generator) -> LivePulls:
        """Generate and score ``B`` pulls at once (one request per pull, seeds drawn from ``rng``).

        Returns:
            :class:`LivePulls`: the :class:`Pulls` record (padded to ``max(n)``) and the ``(B,)``
            prompt and completion tokens of each pull, for the ledger.
        """
        p = np.atleast_1d(np.asarray(prompt, dtype=np.int64))
        k = np.atleast_1d(np.asarray(n, dtype=np.int64))
        q = np.atleast_1d(np.asarray(query, dtype=np.int64))
        if not (p.shape == k.shape == q.shape):
            raise ValueError("prompt, n and query must have the same shape")
        seeds = rng.integers(0, 2**31, size=(p.shape[0],))
        reqs = [
            GenerationRequest(self.spec.messages(int(pi), self.queries[int(qi)]), int(ki), int(si))
            for pi, ki, qi, si in zip(p, k, q, seeds, strict=True)
        ]
        gens = self.backend.generate(reqs)
        B, L = p.shape[0], int(k.max()) if k.size else 0
        K = len(self.spec.objectives)
        outcome = np.full((B, L), -1, dtype=np.int64)
        values = np.zeros((B, L, K))
        ctoks = np.zeros((B, L))
        mask = np.arange(L)[None, :] < k[:, None]
        records = []
        if self.strategy == "bon":
            qs = [self.queries[int(qi)].text for qi, g in zip(q, gens, strict=True) for _ in g.texts]
            flat = np.asarray(self.scorer.score(qs, [t for g in gens for t in g.texts]), dtype=np.float64).reshape(-1, K)
            values[mask] = flat
        for b, g in enumerate(gens):
            ctoks[b, : k[b]] = g.completion_tokens
            rec: dict[str, Any] = {
                "kind": "unit",
                "pull": self.pulls_made + b,
                "p": int(p[b]),
                "q": int(q[b]),
                "query_id": self.queries[int(q[b])].id,
                "n": int(k[b]),
                "seed": int(seeds[b]),
                "texts": list(g.texts),
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": list(g.completion_tokens),
                "exact_counts": g.exact_counts,
            }
            if self.strategy == "mv":
                answers = [self.scorer.extract(t) for t in g.texts]
                outcome[b, : k[b]] = [self._category(int(q[b]), a) for a in answers]
                rec["answers"] = answers
            else:
                start = self._counter.get((int(p[b]), int(q[b])), 0)
                outcome[b, : k[b]] = np.arange(start, start + k[b])
                self._counter[(int(p[b]), int(q[b]))] = start + int(k[b])
                rec["scores"] = values[b, : k[b]].tolist()
            records.append(rec)
        if self.strategy == "mv":
            values[..., 0] = (outcome == 0) & mask
            gold = np.zeros(B, dtype=np.int64)
            n_cat = max([len(v) for v in self._labels.values()] + [2])
        else:
            gold = np.full(B, -1, dtype=np.int64)
            n_cat = max(list(self._counter.values()) + [1])
        cost = ctoks * self.cost_per_token
        ptoks = np.array([g.prompt_tokens for g in gens], dtype=np.int64)
        ctot = np.array([g.total_completion_tokens for g in gens], dtype=np.int64)
        self.pulls_made += B
        self.prompt_tokens += sum(g.prompt_tokens for g in gens)
        self.completion_tokens += sum(g.total_completion_tokens for g in gens)
        if self.record is not None and records:
            data = "".join(json.dumps(seal(r), separators=(",", ":"), allow_nan=False) + "\n" for r in records)
            with open(self.record, "a", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        pulls = Pulls(
            strategy=self.strategy, prompt=p, n=k, query=q, outcome=outcome, values=values, cost=cost,
            gold=gold, mask=mask, n_categories=int(n_cat),
        )
        return LivePulls(pulls, ptoks, ctot)

    def generate(
        self, prompt: ArrayLike, n: ArrayLike, query: ArrayLike, rng: np.random.Generator, width: int | None = None
    ) -> tuple[Pulls, tuple[int, int]]:
        """The environment's live-backend call.

        :meth:`pull`, padded to ``width``, with the batch's ``(prompt tokens, completion tokens)``
        for the ledger.
        """
        live = self.pull(prompt, n, query, rng)
        pulls = live.pulls if width is None else pad_pulls(live.pulls, int(width))
        return pulls, (int(live.prompt_tokens.sum()), int(live.completion_tokens.sum()))


def pad_pulls(pulls: Pulls, width: int) -> Pulls:
    """``pulls`` padded (masked) to ``width`` completions per row."""
    L = pulls.width
    if width == L:
        return pulls
    if width < L:
        raise ValueError(f"width {width} is smaller than the largest pull ({L})")
    extra = width - L
    return Pulls(
        strategy=pulls.strategy, prompt=pulls.prompt, n=pulls.n, query=pulls.query,
        outcome=np.pad(pulls.outcome, ((0, 0), (0, extra)), constant_values=-1),
        values=np.pad(pulls.values, ((0, 0), (0, extra), (0, 0))),
        cost=np.pad(pulls.cost, ((0, 0), (0, extra))),
        gold=pulls.gold, mask=np.pad(pulls.mask, ((0, 0), (0, extra))), n_categories=pulls.n_categories,
    )


class ReplayBackend:
    """Serves a live recording back.

    The request with the same messages, ``n`` and seed gets the recorded texts and token counts. A
    request that was never recorded raises ``KeyError``.
    """

    def __init__(self, recording: str | Path, spec: TaskSpec, queries: Sequence[Query], model: str = "replay",
                 sampling: SamplingConfig | None = None, on_damage: str = "raise") -> None:
        self.model = model
        self.sampling = sampling or spec.sampling
        self._table: dict[tuple[str, int, int], Generation] = {}
        for r in read_units(recording, on_damage=on_damage):
            msgs = spec.messages(int(r["p"]), queries[int(r["q"])])
            key = (json.dumps(msgs), int(r.get("n", len(r["texts"]))), int(r["seed"]))
            self._table[key] = Generation(
                tuple(r["texts"]),
                int(r["prompt_tokens"]),
                tuple(r["completion_tokens"]),
                exact_counts=bool(r.get("exact_counts", True)),
            )

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Generation]]:
        """Yield the recorded generation of each request."""
        for i, r in enumerate(requests):
            key = (json.dumps(list(r.messages)), r.n, r.seed)
            if key not in self._table:
                raise KeyError(f"request {i} (n={r.n}, seed={r.seed}) is not in the recording")
            yield i, self._table[key]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Recorded generations in request order."""
        return [g for _, g in self.stream(requests)]

    def close(self) -> None:
        """Nothing to release."""


def recording_to_table(recording: str | Path, spec: TaskSpec, queries: Sequence[Query],
                       cost_per_token: float | None = None, on_damage: str = "raise") -> OutcomeTable:
    """An :class:`OutcomeTable` of the empirical outcome distributions in a live recording.

    Only queries on which every prompt was pulled at least once are kept (a table needs every
    (prompt, query) cell). MV cells are answer frequencies (categories clustered per query as in
    the builder, gold = 0); BoN cells put equal mass on the completions observed (padded with
    zero-probability outcomes to the largest cell). Costs are mean completion tokens times
    ``cost_per_token`` (the live source's default when ``None``).

    A recording with damaged lines (a crash mid-write, an edited or corrupted record) is refused
    with the line numbers; ``on_damage="skip"`` uses every valid record (also those after a bad
    line) and names the skipped lines in the table's provenance.

    Raises:
        ValueError: no query was pulled under every prompt.
        CheckpointError: the recording has damaged lines and ``on_damage="raise"``.
    """
    from iapo_gym.live.checkpoint import scan

    s = scan(recording, keyed=False, with_header=False)
    if s.damaged and on_damage == "raise":
        raise CheckpointError(s.report() + "; pass on_damage='skip' to build from the valid records")
    units = [r for r in s.records if r.get("kind") == "unit"]
    for r in units:
        if not (0 <= int(r["p"]) < len(spec.prompts) and 0 <= int(r["q"]) < len(queries)):
            raise ValueError(f"{recording}: a record names prompt {r['p']} / query {r['q']}, outside this spec's "
                             f"{len(spec.prompts)} prompts and {len(queries)} queries: is it the right spec?")
    P = len(spec.prompts)
    cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in units:
        cells.setdefault((int(r["p"]), int(r["q"])), []).append(r)
    keep = sorted({q for (_, q) in cells if all((p, q) in cells for p in range(P))})
    if not keep:
        raise ValueError(f"{recording}: no query was pulled under all {P} prompts; pull more or build a table")
    if cost_per_token is None:
        cost_per_token = spec.cost.get("per_token") or float(spec.cost["max_cost"]) / spec.sampling.max_tokens

    def gather(p: int, q: int, field: str) -> list:
        return [x for r in cells[(p, q)] for x in r[field]]

    tokens = np.array([[np.mean(gather(p, q, "completion_tokens")) for q in keep] for p in range(P)])
    counts = np.array([[len(gather(p, q, "texts")) for q in keep] for p in range(P)])
    common: dict[str, Any] = dict(
        task=spec.task, strategy=spec.strategy, prompts=spec.prompt_labels(),
        query_ids=tuple(queries[q].id for q in keep), objectives=spec.objectives,
        objective_ranges=np.array(spec.objective_ranges, dtype=np.float64), contexts=spec.context_set(),
        n_max=spec.n_max, cost=tokens * cost_per_token, split=np.zeros(len(keep), dtype=np.int8),
        cost_unit=f"tokens*{cost_per_token:.6g}",
        provenance={"source": "live recording", "recording": Path(recording).name, "completions_per_cell": counts.tolist(),
                    "damaged_lines_skipped": [list(d) for d in s.damaged]},
    )
    M = int(counts.max())
    if spec.strategy == "mv":
        scorer = make_scorer(spec.scorer)
        cats_pq: dict[tuple[int, int], np.ndarray] = {}
        for j, q in enumerate(keep):
            answers = [a for p in range(P) for a in gather(p, q, "answers")]
            cats, _ = cluster_answers(answers, scorer.gold_key(queries[q].gold), scorer, spec.max_categories)
            bounds = np.concatenate([[0], np.cumsum(counts[:, j])])
            for p in range(P):
                cats_pq[(p, j)] = cats[bounds[p] : bounds[p + 1]]
        A = max(2, max(int(c.max()) + 1 for c in cats_pq.values()))
        probs = np.zeros((P, len(keep), A))
        for (p, j), c in cats_pq.items():
            probs[p, j] = np.bincount(c, minlength=A) / len(c)
        return OutcomeTable(**common, answer_probs=probs, gold=np.zeros(len(keep), dtype=np.int64))
    K = len(spec.objectives)
    values = np.zeros((P, len(keep), M, K))
    probs = np.zeros((P, len(keep), M))
    for p in range(P):
        for j, q in enumerate(keep):
            sc = np.asarray(gather(p, q, "scores"), dtype=np.float64).reshape(-1, K)
            values[p, j, : len(sc)] = sc
            probs[p, j, : len(sc)] = 1.0 / len(sc)
    return OutcomeTable(**common, outcome_values=values, outcome_probs=probs)
