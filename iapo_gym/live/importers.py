"""Tables from generations users already have: lm-evaluation-harness samples, OpenAI Batch output.

Both importers turn existing completions into the builder's assembly records (``texts``,
``completion_tokens``, ``prompt_tokens``, and ``answers`` for MV or ``scores`` for BoN, scored by
the spec's scorer) and assemble an :class:`~iapo_gym.tables.format.OutcomeTable` exactly as a
build would, so nothing is generated again.

* :func:`from_lm_eval`: ``lm_eval ... --log_samples`` writes one JSON line per document
  (``doc_id``, ``doc``, ``target``, ``resps``, ``filtered_resps``, ...). With ``repeats: k`` in
  the task (self-consistency tasks), ``resps[0]`` holds the ``k`` sampled completions. One samples
  file per prompt (one task variant per prompt), in the spec's prompt order. The harness does not
  log token counts: they are counted with a tokenizer when one is given, else estimated as
  characters / 4 (named in the provenance).
* :func:`from_openai_batch`: the Batch API's input file (``custom_id`` + request ``body``) and
  output file (``custom_id`` + ``response.body``, a chat completion with exact ``usage``). Each
  request is matched to its (prompt, query) cell by its messages, rendered from the spec; several
  requests per cell (``n = 1`` each) are concatenated. Failed requests are listed; cells that are
  incomplete are refused with the list unless ``exclude_incomplete`` drops their queries (named in
  the provenance). :func:`write_openai_batch` writes the input file for a spec.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.live.specs import Query, TaskSpec
from iapo_gym.tables.format import OutcomeTable


class GenerationImportError(ValueError):
    """The generations cannot make a complete table (the message says what is missing)."""


def _jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GenerationImportError(f"{path} line {no} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise GenerationImportError(f"{path} line {no} is not a JSON object")
            rows.append(row)
    return rows


def _counter(tokenizer: Any) -> tuple[Callable[[str], int], str]:
    if tokenizer is None:
        return (lambda t: max(1, round(len(t) / 4)) if t else 0), "estimated (characters / 4)"
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        name = tokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    else:
        name = type(tokenizer).__name__
    return (lambda t: len(tokenizer.encode(t, add_special_tokens=False))), f"counted with tokenizer {name}"


def _score(spec: TaskSpec, scorer: Any, queries: Sequence[Query], units: dict[tuple[int, int], dict[str, Any]]) -> None:
    if spec.strategy == "mv":
        for u in units.values():
            u["answers"] = [scorer.extract(t) for t in u["texts"]]
        return
    keys = list(units)
    qs = [queries[q].text for (_, q) in keys for _ in units[(_, q)]["texts"]]
    ts = [t for k in keys for t in units[k]["texts"]]
    flat = np.asarray(scorer.score(qs, ts), dtype=np.float64).reshape(len(ts), -1)
    s = 0
    for k in keys:
        n = len(units[k]["texts"])
        units[k]["scores"] = flat[s : s + n].tolist()
        s += n


def _finish(spec: TaskSpec, queries: list[Query], units: dict[tuple[int, int], dict[str, Any]], prov: dict[str, Any],
            scorer: Any, exclude_incomplete: bool, problems: list[str]) -> OutcomeTable:
    from iapo_gym.live.builder import assemble_table
    from iapo_gym.live.scorers import make_scorer

    P, M = len(spec.prompts), spec.pool
    short = sorted({q for q in range(len(queries)) for p in range(P) if len(units.get((p, q), {}).get("texts", ())) < M})
    if short:
        msg = (f"{len(short)} queries lack {M} completions under every prompt (first: "
               f"{[queries[q].id for q in short[:5]]}){'; ' + '; '.join(problems[:3]) if problems else ''}")
        if not exclude_incomplete or len(short) == len(queries):
            raise GenerationImportError(msg + "; pass exclude_incomplete=True (--exclude-failed) to build without them")
        prov["excluded_queries"] = [queries[q].id for q in short]
        keep = [q for q in range(len(queries)) if q not in set(short)]
        units = {(p, keep.index(q)): u for (p, q), u in units.items() if q in keep}
        queries = [queries[q] for q in keep]
    for u in units.values():  # the first `pool` completions of each cell
        for f in ("texts", "completion_tokens"):
            u[f] = u[f][:M]
    scorer = scorer or make_scorer(spec.scorer)
    _score(spec, scorer, queries, units)
    table, _ = assemble_table(spec, queries, units, prov, scorer=scorer)
    return table


def _prompt_of(row: dict[str, Any]) -> str:
    """The prompt text the harness sent (``arguments[0][0]`` or ``arguments["gen_args_0"]["arg_0"]``)."""
    args: Any = row.get("arguments")
    try:
        if isinstance(args, dict):
            return str(next(iter(args.values()))["arg_0"])
        return str(args[0][0])
    except (TypeError, KeyError, IndexError, StopIteration):
        return ""


def from_lm_eval(
    spec: TaskSpec,
    samples: Sequence[str | Path],
    *,
    tokenizer: Any = None,
    scorer: Any = None,
    exclude_incomplete: bool = False,
    question_field: str | None = None,
) -> OutcomeTable:
    """A table from lm-evaluation-harness ``--log_samples`` files, one per prompt.

    Args:
        spec: the task spec (its ``pool`` completions per cell are used; its prompts only count).
        samples: one ``samples_*.jsonl`` per prompt of the spec, in prompt order.
        tokenizer: a tokenizer or Hugging Face name to count completion and prompt tokens (else
            characters / 4).
        scorer: the scorer (default: the spec's); MV answers are extracted from the raw
            completions so every prompt is clustered the same way.
        exclude_incomplete: drop documents with fewer than ``pool`` samples under some prompt.
        question_field: the ``doc`` field holding the question (default: the first of
            ``question``, ``problem``, ``query``, ``input``).

    Raises:
        GenerationImportError: wrong number of files, documents missing under a prompt, too few samples.
    """
    if len(samples) != len(spec.prompts):
        raise GenerationImportError(
            f"{len(samples)} samples files for {len(spec.prompts)} prompts; give one per prompt, in order"
        )
    count, how = _counter(tokenizer)
    per_prompt = []
    for path in samples:
        docs: dict[str, dict[str, Any]] = {}
        for row in _jsonl(path):
            resps = row.get("resps")
            if not isinstance(resps, list) or not resps or not isinstance(resps[0], list):
                raise GenerationImportError(f"{path}: doc {row.get('doc_id')} has no 'resps' list of sampled completions")
            texts = [r if isinstance(r, str) else (r[0] if isinstance(r, list) and r else "") for r in resps[0]]
            docs[str(row.get("doc_id"))] = {"texts": texts, "doc": row.get("doc", {}), "target": row.get("target"),
                                            "prompt": _prompt_of(row)}
        per_prompt.append(docs)
    ids = list(per_prompt[0])
    queries = []
    for d in ids:
        doc = per_prompt[0][d]
        fields = [question_field] if question_field else ["question", "problem", "query", "input"]
        text = next((str(doc["doc"][f]) for f in fields if isinstance(doc["doc"], dict) and f in doc["doc"]), d)
        target = doc["target"]
        queries.append(Query(d, text, None if target is None else str(target)))
    units: dict[tuple[int, int], dict[str, Any]] = {}
    problems = []
    for p, docs in enumerate(per_prompt):
        missing = [d for d in ids if d not in docs]
        if missing:
            problems.append(f"prompt {p} lacks docs {missing[:5]}")
        for q, d in enumerate(ids):
            if d in docs:
                texts = docs[d]["texts"]
                prompt_text = docs[d]["prompt"] if isinstance(docs[d]["prompt"], str) else ""
                units[(p, q)] = {"texts": list(texts), "completion_tokens": [count(t) for t in texts],
                                 "prompt_tokens": count(prompt_text)}
    prov = {"source": "lm-evaluation-harness --log_samples", "samples_files": [Path(s).name for s in samples],
            "token_counts": how, "pool": spec.pool}
    return _finish(spec, queries, units, prov, scorer, exclude_incomplete, problems)


def write_openai_batch(spec: TaskSpec, queries: Sequence[Query], path: str | Path, model: str, *, seed: int = 0,
                       n_per_request: int | None = None) -> int:
    """Write the Batch API input file of a build; returns the number of requests.

    One ``/v1/chat/completions`` request per cell (``n = pool``), or ``pool`` requests of ``n = 1``
    with ``n_per_request=1``; seeds as the builder's (:func:`~iapo_gym.live.builder.unit_seed`).
    """
    from iapo_gym.live.backends import derive_seed
    from iapo_gym.live.builder import prompt_id, unit_seed

    s = spec.sampling
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for q, query in enumerate(queries):
            for p in range(len(spec.prompts)):
                useed = unit_seed(seed, prompt_id(spec.prompts[p]), query.id)
                parts = [(i, 1) for i in range(spec.pool)] if n_per_request == 1 else [(0, spec.pool)]
                for start, k in parts:
                    body = {"model": model, "messages": list(spec.messages(p, query)), "n": k,
                            "seed": derive_seed(useed, start), "temperature": s.temperature, "top_p": s.top_p,
                            "max_tokens": s.max_tokens}
                    f.write(json.dumps({"custom_id": f"p{p}-q{q}-s{start}", "method": "POST",
                                        "url": "/v1/chat/completions", "body": body}) + "\n")
                    n += 1
    return n


def from_openai_batch(
    spec: TaskSpec,
    queries: Sequence[Query],
    input_file: str | Path,
    output_file: str | Path,
    *,
    scorer: Any = None,
    exclude_incomplete: bool = False,
) -> OutcomeTable:
    """A table from an OpenAI Batch API input file and its output file.

    Args:
        spec: the task spec (prompts, pool, scorer).
        queries: the queries the batch was written for.
        input_file: the ``.jsonl`` uploaded to the Batch API (requests with ``custom_id``).
        output_file: the ``.jsonl`` the Batch API returned (``custom_id`` + ``response``).
        scorer: the scorer (default: the spec's).
        exclude_incomplete: drop queries whose cells lack ``pool`` completions (failed requests).

    Raises:
        GenerationImportError: a request that matches no (prompt, query) of the spec, or incomplete cells.
    """
    from iapo_gym.live.backends import _parse_completion, _Transient

    index = {json.dumps(list(spec.messages(p, q)), sort_keys=True): (p, i)
             for i, q in enumerate(queries) for p in range(len(spec.prompts))}
    requests: dict[str, tuple[int, int]] = {}
    for row in _jsonl(input_file):
        body = row.get("body") or {}
        key = json.dumps(body.get("messages"), sort_keys=True)
        if key not in index:
            raise GenerationImportError(
                f"{input_file}: request {row.get('custom_id')!r} matches no prompt x query of this spec "
                "(other prompts, queries or templates?)"
            )
        requests[str(row.get("custom_id"))] = index[key]
    units: dict[tuple[int, int], dict[str, Any]] = {}
    problems: list[str] = []
    for row in sorted(_jsonl(output_file), key=lambda r: str(r.get("custom_id"))):
        cid = str(row.get("custom_id"))
        if cid not in requests:
            raise GenerationImportError(f"{output_file}: custom_id {cid!r} is not in the input file {input_file}")
        resp = row.get("response") or {}
        if row.get("error") or resp.get("status_code") != 200:
            problems.append(f"{cid}: {row.get('error') or resp.get('status_code')}")
            continue
        raw = json.dumps(resp.get("body")).encode()
        try:
            body = _parse_completion(raw, 1, 200)
        except _Transient as exc:
            problems.append(f"{cid}: {exc}")
            continue
        texts = [c["message"]["content"] for c in body["choices"]]
        total = body["usage"]["completion_tokens"]
        base, extra = divmod(total, len(texts))
        u = units.setdefault(requests[cid], {"texts": [], "completion_tokens": [], "prompt_tokens": 0})
        u["texts"] += texts
        u["completion_tokens"] += [base + (1 if i < extra else 0) for i in range(len(texts))]
        u["prompt_tokens"] = body["usage"]["prompt_tokens"]
    prov = {"source": "OpenAI Batch API", "batch_input": Path(input_file).name, "batch_output": Path(output_file).name,
            "failed_requests": problems[:50], "token_counts": "exact totals per request (usage), spread evenly"}
    return _finish(spec, list(queries), units, prov, scorer, exclude_incomplete, problems)
