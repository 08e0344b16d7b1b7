"""Task specs: everything a build or a live run needs to know about a task, in one JSON file.

A spec (``envs_data/<task>/spec.json``) holds::

    {
      "task": "MATH", "strategy": "mv",
      "prompts": ["Solve the problem ... {query}", ...],      # "{query}" marks where the query goes;
                                                              # without it the query follows the prompt
      "dataset": {"format": "math500",                        # how rows become queries (see FORMATS)
                  "hf_name": "HuggingFaceH4/MATH-500", "hf_split": "test",   # real use
                  "local_path": "queries.jsonl",              # offline use, relative to the spec
                  "limit": null, "params": {...}},
      "scorer": {"name": "math"},                             # see iapo_gym.live.scorers.make_scorer
      "objectives": ["correct"], "objective_ranges": [[0, 1]],
      "contexts": {"type": "cost", "levels": {"low": 0.0, "mid": 0.2, "high": 1.0}},
      "n_max": 32, "pool": 128,
      "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 512},
      "cost": {"max_cost": 0.01},                             # or {"per_token": 1e-5}
      "max_categories": null, "split": {"test_fraction": 0.2, "seed": 0}
    }

:func:`load_spec` validates it and returns a :class:`TaskSpec`; :func:`load_queries` reads the
dataset (the local JSONL when present, else the Hugging Face dataset through ``datasets``) into
:class:`Query` records. ``"format": "arithmetic"`` generates questions with known answers from a
seed, so a task can run with no dataset at all.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.contexts import ContextSet, cost_contexts, preference_contexts
from iapo_gym.envs_data import ROOT as ENVS_DATA
from iapo_gym.live.backends import SamplingConfig


@dataclass(frozen=True)
class Query:
    """One dataset item: ``id``, the ``text`` sent to the model, and the ``gold`` answer (MV)."""

    id: str
    text: str
    gold: str | None = None


Message = dict[str, str]
PromptTemplate = str | tuple[Message, ...]
ROLES = ("system", "user", "assistant", "developer")


def _template(p: Any) -> PromptTemplate:
    if isinstance(p, str):
        return p
    if isinstance(p, list | tuple):
        return tuple(dict(m) if isinstance(m, dict) else m for m in p)
    return p


def check_template(template: Any) -> str | None:
    """Why ``template`` is not a valid prompt, or ``None``.

    A prompt is a string, or a list of chat messages ``{"role": ..., "content": ...}`` (system,
    few-shot user/assistant turns) whose last message is the user turn; ``{query}`` in any
    message's content marks where the query goes (required for message lists).
    """
    if isinstance(template, str):
        return None if template.strip() else "is an empty string"
    if not isinstance(template, tuple) or not template:
        return "must be a string or a non-empty list of chat messages"
    for j, m in enumerate(template):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"message {j} must be an object with exactly 'role' and 'content'"
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            return f"message {j} needs a role in {ROLES} and a string content"
    if template[-1]["role"] != "user":
        return "must end with the user turn"
    if not any("{query}" in m["content"] for m in template):
        return "has no '{query}' placeholder in any message"
    return None


def render(template: PromptTemplate, query: str) -> tuple[Message, ...]:
    """The chat messages of a prompt template applied to ``query``.

    A string becomes one user message: ``{query}`` is replaced by the query, or, without a
    placeholder, the query follows the text after a blank line. In a message list every
    ``{query}`` is replaced; the roles and the other text are kept as they are. Both backends
    (in-process vLLM and OpenAI-compatible servers) send exactly these messages through the
    model's chat template.
    """
    if isinstance(template, str):
        text = template.replace("{query}", query) if "{query}" in template else f"{template}\n\n{query}"
        return ({"role": "user", "content": text},)
    return tuple({"role": m["role"], "content": m["content"].replace("{query}", query)} for m in template)


@dataclass(frozen=True)
class TaskSpec:
    """A validated task spec (see the module docstring for the JSON layout)."""

    task: str
    strategy: str
    prompts: tuple[PromptTemplate, ...]
    dataset: dict[str, Any]
    scorer: dict[str, Any]
    objectives: tuple[str, ...]
    objective_ranges: tuple[tuple[float, float], ...]
    contexts: dict[str, Any]
    n_max: int
    pool: int
    sampling: SamplingConfig
    cost: dict[str, Any] = field(default_factory=lambda: {"max_cost": 0.01})
    max_categories: int | None = None
    split: dict[str, Any] = field(default_factory=lambda: {"test_fraction": 0.2, "seed": 0})
    env_id: str | None = None
    description: str = ""
    path: Path | None = None

    def context_set(self) -> ContextSet:
        """The finite context set the spec describes."""
        c = self.contexts
        if c["type"] == "cost":
            return cost_contexts(c["levels"])
        if c["type"] == "preference":
            steps = tuple(c.get("steps", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)))
            if len(self.objectives) != 2:
                raise ValueError(f"contexts.type 'preference' weighs two objectives; the spec has {len(self.objectives)}")
            first, second = self.objectives
            return preference_contexts((first, second), c["levels"], steps)
        raise ValueError(f"contexts.type must be 'cost' or 'preference'; got {c['type']!r}")

    def messages(self, prompt: int, query: Query) -> tuple[dict[str, str], ...]:
        """The chat conversation of ``prompts[prompt]`` applied to ``query`` (see :func:`render`)."""
        return render(self.prompts[prompt], query.text)

    def prompt_labels(self) -> tuple[str, ...]:
        """One string per prompt (the text, or the JSON of a message list), for tables."""
        return tuple(p if isinstance(p, str) else json.dumps(list(p), ensure_ascii=False) for p in self.prompts)

    def fingerprint(self) -> str:
        """Hash of everything that changes the generated outcomes.

        That is the prompts, dataset, scorer, sampling and pool; recorded in the manifest of every
        built table (a checkpoint's units are matched by content key, not by fingerprint).
        """
        payload = json.dumps(
            {
                "prompts": self.prompts,
                "dataset": self.dataset,
                "scorer": self.scorer,
                "sampling": self.sampling.to_json(),
                "pool": self.pool,
                "strategy": self.strategy,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def with_overrides(self, **changes: Any) -> TaskSpec:
        """A copy with some fields replaced (``pool``, ``sampling``, ``dataset`` ...), re-validated."""
        if "prompts" in changes:
            changes["prompts"] = tuple(_template(p) for p in changes["prompts"])
        data = {**self.__dict__, **changes}
        out = TaskSpec(**data)
        _validate(out)
        return out


def _validate(spec: TaskSpec) -> None:
    where = f"spec {spec.path or spec.task}"
    if spec.strategy not in ("mv", "bon"):
        raise ValueError(f"{where}: strategy must be 'mv' or 'bon'; got {spec.strategy!r}")
    if len(spec.prompts) < 1:
        raise ValueError(f"{where}: prompts must be a non-empty list")
    for i, p in enumerate(spec.prompts):
        why = check_template(p)
        if why:
            raise ValueError(f"{where}: prompts[{i}] {why}")
    labels = spec.prompt_labels()
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: prompts must be distinct")
    if spec.n_max < 1 or spec.pool < 1:
        raise ValueError(f"{where}: n_max and pool must be >= 1")
    if len(spec.objectives) != len(spec.objective_ranges):
        raise ValueError(f"{where}: one objective range per objective")
    if spec.strategy == "mv" and len(spec.objectives) != 1:
        raise ValueError(f"{where}: majority-voting tasks have the one objective 'correct'")
    ds = spec.dataset
    if ds.get("local_path") and ds.get("hf_name"):
        raise ValueError(f"{where}: dataset names both hf_name and local_path; keep one (a small sample file goes under "
                         "sample_path and is used only with --dataset-path sample)")
    if ds.get("format") == "fields" and not isinstance(ds.get("question_field"), str):
        raise ValueError(f"{where}: dataset format 'fields' needs question_field (and answer_field for majority voting)")
    if ds.get("format") == "fields" and spec.strategy == "mv" and not ds.get("answer_field"):
        raise ValueError(f"{where}: a majority-voting task needs dataset.answer_field (the gold answer)")
    if "format" not in spec.dataset:
        raise ValueError(f"{where}: dataset.format is required (one of {sorted(FORMATS)})")
    if spec.dataset["format"] not in FORMATS:
        raise ValueError(f"{where}: unknown dataset.format {spec.dataset['format']!r}; one of {sorted(FORMATS)}")
    if not ({"max_cost", "per_token"} & set(spec.cost)):
        raise ValueError(f"{where}: cost needs 'max_cost' (scale so the costliest prompt costs it) or 'per_token'")
    spec.context_set()


def spec_from_dict(data: dict[str, Any], path: Path | None = None) -> TaskSpec:
    """Build and validate a :class:`TaskSpec` from parsed JSON."""
    data = dict(data)
    known = set(TaskSpec.__dataclass_fields__) - {"path"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"spec {path or ''}: unknown keys {sorted(unknown)}")
    try:
        spec = TaskSpec(
            task=str(data["task"]),
            strategy=str(data["strategy"]),
            prompts=tuple(_template(p) for p in data["prompts"]),
            dataset=dict(data["dataset"]),
            scorer=dict(data["scorer"]),
            objectives=tuple(data.get("objectives", ["correct"])),
            objective_ranges=tuple((float(lo), float(hi)) for lo, hi in data.get("objective_ranges", [[0, 1]])),
            contexts=dict(data["contexts"]),
            n_max=int(data["n_max"]),
            pool=int(data["pool"]),
            sampling=SamplingConfig(**data.get("sampling", {})),
            cost=dict(data.get("cost", {"max_cost": 0.01})),
            max_categories=data.get("max_categories"),
            split=dict(data.get("split", {"test_fraction": 0.2, "seed": 0})),
            env_id=data.get("env_id"),
            description=str(data.get("description", "")),
            path=path,
        )
    except KeyError as exc:
        raise ValueError(f"spec {path or ''}: missing required key {exc}") from None
    _validate(spec)
    return spec


def spec_path(name_or_path: str | Path) -> Path:
    """Resolve a spec: a path to a JSON file or folder, or a task folder name in ``envs_data/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir() and (p / "spec.json").is_file():
        return p / "spec.json"
    for cand in (ENVS_DATA / str(name_or_path) / "spec.json", ENVS_DATA / str(name_or_path).lower() / "spec.json"):
        if cand.is_file():
            return cand
    names = sorted(d.name for d in ENVS_DATA.iterdir() if (d / "spec.json").is_file()) if ENVS_DATA.is_dir() else []
    raise FileNotFoundError(f"no task spec {name_or_path!r}: give a spec.json path or one of {names}")


def load_spec(name_or_path: str | Path) -> TaskSpec:
    """Load and validate a spec (path, folder, or task name under ``envs_data/``)."""
    path = spec_path(name_or_path)
    with open(path, encoding="utf-8") as f:
        return spec_from_dict(json.load(f), path=path.resolve())


# --------------------------------------------------------------------------- datasets
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_MATH_PREFIX = re.compile(r"^Return your final response within \\boxed\{\}\.\s*")


def _math500(row: dict[str, Any], i: int) -> Query:
    return Query(str(row.get("unique_id", i)), _MATH_PREFIX.sub("", row["problem"]).strip(), str(row["answer"]))


def _gsm8k(row: dict[str, Any], i: int) -> Query:
    return Query(str(row.get("id", i)), row["question"].strip(), row["answer"].split("####")[-1].strip())


def _commonsenseqa(row: dict[str, Any], i: int) -> Query:
    q = row["question"]
    if isinstance(q, dict):  # the official JSONL layout
        stem, choices = q["stem"], q["choices"]
        labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
    else:  # the Hugging Face "tau/commonsense_qa" layout
        stem, labels, texts = q, row["choices"]["label"], row["choices"]["text"]
    options = "\n".join(f"{lab}. {t}" for lab, t in zip(labels, texts, strict=True))
    return Query(str(row.get("id", i)), f"{stem.strip()}\n{options}", str(row["answerKey"]))


def _hh(row: dict[str, Any], i: int) -> Query:
    """Anthropic HH-RLHF rows (``chosen`` transcripts): the first human turn; or a ``prompt`` field."""
    if "prompt" in row:
        text = row["prompt"]
    else:
        chosen = row["chosen"]
        text = chosen.split("\n\nHuman:")[1].split("\n\nAssistant:")[0]
    return Query(str(row.get("id", i)), text.strip())


def _summarize(row: dict[str, Any], i: int) -> Query:
    """TL;DR rows (``post`` or ``prompt``/``document`` fields): the post to summarise."""
    text = row.get("post") or row.get("document") or row.get("prompt")
    if text is None:
        raise ValueError(f"summarization row {i} has none of the fields post, document, prompt")
    title = row.get("title")
    return Query(str(row.get("id", i)), (f"Title: {title}\n\n{text}" if title else text).strip())


def _get(row: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(row, dict) and part in row:
            row = row[part]
        elif isinstance(row, list) and part.isdigit() and int(part) < len(row):
            row = row[int(part)]
        else:
            raise KeyError(dotted)
    return row


def _fields(ds: dict[str, Any]) -> Callable[[dict[str, Any], int], Query]:
    """A converter from any dataset's rows to queries, by field names.

    ``question_field`` / ``answer_field`` / ``id_field`` are dotted paths for nested fields
    (e.g. ``"choices.0.text"``).
    """
    qf, af, idf = ds["question_field"], ds.get("answer_field"), ds.get("id_field")

    def convert(row: dict[str, Any], i: int) -> Query:
        try:
            text = _get(row, qf)
            answer = None if af is None else _get(row, af)
            qid = i if idf is None else _get(row, idf)
        except KeyError as exc:
            raise ValueError(f"dataset row {i} has no field {exc.args[0]!r} (fields: {sorted(row)}); "
                             "fix question_field / answer_field / id_field in the spec") from None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"dataset row {i}: field {qf!r} is not a non-empty string")
        return Query(str(qid), text.strip(), None if answer is None else str(answer).strip())

    return convert


def _generic(row: dict[str, Any], i: int) -> Query:
    return Query(str(row.get("id", i)), str(row["question"]), None if row.get("answer") is None else str(row["answer"]))


def arithmetic_queries(n: int, seed: int = 0) -> list[Query]:
    """``n`` generated arithmetic questions with known integer answers, from ``seed``.

    A fixed mix of difficulty: one-digit sums, two-digit sums and differences, one-digit products
    and ``a * b + c`` forms, so a small model gets some right and some wrong, in varied ways.
    """
    rng = np.random.default_rng(seed)
    kinds = ("add1", "add2", "sub2", "mul1", "muladd")
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "add1":
            a, b = rng.integers(1, 10, size=2)
            q, ans = f"What is {a} + {b}?", a + b
        elif kind == "add2":
            a, b = rng.integers(10, 60, size=2)
            q, ans = f"What is {a} + {b}?", a + b
        elif kind == "sub2":
            a, b = np.sort(rng.integers(10, 90, size=2))[::-1]
            q, ans = f"What is {a} - {b}?", a - b
        elif kind == "mul1":
            a, b = rng.integers(2, 10, size=2)
            q, ans = f"What is {a} * {b}?", a * b
        else:
            a, b, c = rng.integers(2, 10), rng.integers(2, 10), rng.integers(1, 20)
            q, ans = f"What is {a} * {b} + {c}?", a * b + c
        out.append(Query(f"arith-{seed}-{i}", q, str(int(ans))))
    return out


FORMATS: dict[str, Callable[[dict[str, Any], int], Query] | None] = {
    "math500": _math500,
    "gsm8k": _gsm8k,
    "commonsenseqa": _commonsenseqa,
    "hh": _hh,
    "summarization": _summarize,
    "jsonl": _generic,
    "fields": None,  # question_field / answer_field / id_field mapping (see _fields)
    "arithmetic": None,
}


def _resolve(spec: TaskSpec, path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and spec.path is not None and not p.exists():
        p = spec.path.parent / p
    return p


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a local dataset file.

    JSON lines (``.jsonl``, also gzipped), a JSON array (``.json``), Parquet (``.parquet``,
    through ``pyarrow``) or CSV (``.csv``, header row).

    Raises:
        ValueError: an unknown extension or a row that is not an object, naming the file.
    """
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        import gzip

        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError(f"{path}: reading Parquet needs pyarrow (`pip install 'iapo-gym[live]'` brings it "
                               "through datasets)") from None
        rows = pq.read_table(path).to_pylist()
    elif suffix == ".csv":
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"dataset file {path}: unknown format {suffix!r}; use .jsonl, .json, .parquet or .csv")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"dataset file {path}: expected one JSON object per row")
    return rows


def _load_rows(spec: TaskSpec, local_path: str | Path | None) -> Iterable[dict[str, Any]]:
    """The dataset's rows.

    From ``local_path`` (``"sample"``: the spec's ``sample_path``) when given, else from the spec's
    ``local_path`` or Hugging Face dataset (exactly one of them is named).
    """
    ds = spec.dataset
    if local_path is not None and str(local_path) == "sample":
        if not ds.get("sample_path"):
            raise FileNotFoundError(f"task {spec.task} ships no sample file (dataset.sample_path); give a file path")
        local_path = ds["sample_path"]
    path = local_path if local_path is not None else ds.get("local_path")
    if path is not None:
        p = _resolve(spec, path)
        if not p.is_file():
            raise FileNotFoundError(f"dataset file {p} not found (task {spec.task})")
        return read_rows(p)
    if ds.get("hf_name"):
        try:
            import datasets
        except ImportError:
            raise RuntimeError(
                f"task {spec.task} reads the Hugging Face dataset {ds['hf_name']!r}: `pip install 'iapo-gym[live]'` "
                "(or `pip install datasets`), or pass a local file with --dataset-path"
            ) from None
        return datasets.load_dataset(ds["hf_name"], ds.get("hf_config"), split=ds.get("hf_split", "test"),
                                     revision=ds.get("revision"))
    hint = " (a sample ships with it: --dataset-path sample)" if ds.get("sample_path") else ""
    raise FileNotFoundError(f"task {spec.task}: the dataset names neither a local_path nor an hf_name{hint}")


def load_queries(spec: TaskSpec, local_path: str | Path | None = None, limit: int | None = None) -> list[Query]:
    """The task's queries, in dataset order (first ``limit`` of them, default ``dataset.limit``).

    Args:
        spec: the task spec whose ``dataset`` entry names the source.
        local_path: a local file (JSONL, JSON, Parquet or CSV) used instead of the spec's dataset;
            ``"sample"`` for the spec's ``sample_path`` (never used otherwise).
        limit: at most this many queries.
    """
    ds = spec.dataset
    limit = limit if limit is not None else ds.get("limit")
    if ds["format"] == "arithmetic":
        params = ds.get("params", {})
        return arithmetic_queries(int(limit or params.get("n", 24)), int(params.get("seed", 0)))
    convert = _fields(ds) if ds["format"] == "fields" else FORMATS[ds["format"]]
    assert convert is not None
    out: list[Query] = []
    for i, row in enumerate(_load_rows(spec, local_path)):
        if limit is not None and len(out) >= limit:
            break
        out.append(convert(dict(row), i))
    if not out:
        raise ValueError(f"task {spec.task}: the dataset yielded no queries")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {spec.task}: query ids are not unique")
    return out
