r"""Scorers: from completion texts to table outcomes.

Two families, matching the two strategies:

* **Answer scorers** (majority voting): ``extract(text)`` reads the final answer out of a
  completion (a canonical string, or ``None`` when there is none); ``same(a, b)`` says whether two
  extracted answers are equivalent. :func:`cluster_answers` groups the answers of one query into
  categories with the gold answer's category first (index 0), which is the table's MV encoding.
  - :class:`MathScorer` (MATH): the last ``\boxed{...}``, equivalence by math-verify (sympy).
  - :class:`NumericScorer` (GSM8K, generated arithmetic): the boxed, ``####`` or last number,
    compared as exact fractions.
  - :class:`ChoiceScorer` (CommonsenseQA): the chosen option letter.
* **Objective scorers** (best-of-N): ``score(queries, texts) -> (n, K)`` objective values.
  - :class:`RewardModelScorer`: any Hugging Face sequence-classification model per objective
    (batched; see its docstring for the score normalisation).
  - :class:`LexicalProxyScorer`: an offline, deterministic stand-in (coverage of the query's
    content words, brevity) for tests and for machines without the reward models.

:func:`make_scorer` builds one from a task spec's ``"scorer"`` entry.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

NO_ANSWER = "<no answer>"


# --------------------------------------------------------------------------- text helpers
def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``), braces matched; ``None`` if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        # "\boxed 5" form
        m = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\\displaystyle|\\text\{\s*\}")


def normalise_latex(ans: str) -> str:
    r"""Cheap canonical form of a LaTeX answer (spacing, ``dfrac``, ``\left``, trailing dot)."""
    s = _LATEX_NOISE.sub("", ans)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def parse_number(s: str) -> Fraction | None:
    r"""An exact :class:`~fractions.Fraction` from ``"1,234"``, ``"-3.5"``, ``"7/2"``, ``"\frac{7}{2}"``; else ``None``."""
    s = s.strip().replace("$", "").replace("\\!", "").replace("{,}", "")
    m = re.fullmatch(r"-?\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", s)
    if m:
        sign = -1 if s.startswith("-") else 1
        den = int(m.group(2))
        return None if den == 0 else sign * Fraction(int(m.group(1)), den)
    s = re.sub(r"\\text\{[^}]*\}|\\%|%|\\\$|dollars?|units?", "", s).strip().rstrip(".")
    s = s.replace(",", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _fraction_key(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# --------------------------------------------------------------------------- answer scorers (MV)
@runtime_checkable
class AnswerScorer(Protocol):
    """Majority-voting scorer: answer extraction plus equivalence."""

    kind: str  # "mv"
    name: str

    def extract(self, text: str) -> str | None:
        """The completion's final answer in canonical form, or ``None``."""
        ...

    def gold_key(self, gold: str) -> str:
        """The gold answer (as the dataset writes it) in the same canonical form."""
        ...

    def same(self, a: str, b: str) -> bool:
        """Whether two canonical answers are equivalent."""
        ...


class NumericScorer:
    """Numeric answers (GSM8K, arithmetic), compared exactly as fractions (``0.5`` equals ``1/2``).

    The boxed number, else the number after ``####`` or ``answer is``, else the last number in the text.
    """

    kind = "mv"
    name = "numeric"

    def extract(self, text: str) -> str | None:
        """Canonical number string (``"18"``, ``"7/2"``) or ``None``."""
        candidates: list[str] = []
        boxed = last_boxed(text)
        if boxed is not None:
            candidates.append(boxed)
        m = re.findall(r"(?:####|answer is|answer:|Answer:|Answer is|=)\s*\$?\s*(-?[\d,]*\.?\d+(?:/\d+)?)", text)
        if m:
            candidates.append(m[-1])
        nums = _NUMBER.findall(text)
        if nums:
            candidates.append(nums[-1])
        for c in candidates:
            x = parse_number(c)
            if x is None and c is boxed:
                inner = _NUMBER.findall(c)
                x = parse_number(inner[-1]) if inner else None
            if x is not None:
                return _fraction_key(x)
        return None

    def gold_key(self, gold: str) -> str:
        """Gold number; a GSM8K solution's text after ``####`` is accepted as well."""
        g = gold.split("####")[-1]
        x = parse_number(g)
        if x is None:
            raise ValueError(f"gold answer {gold!r} is not a number")
        return _fraction_key(x)

    def same(self, a: str, b: str) -> bool:
        """Keys are canonical fractions: equal strings."""
        return a == b


class ChoiceScorer:
    r"""Multiple-choice letters (CommonsenseQA).

    ``\boxed{C}``, ``answer is (C)``, ``Answer: C``, else the last standalone option letter such as
    ``(C)`` or ``C.``.
    """

    kind = "mv"
    name = "choice"

    def __init__(self, letters: str = "ABCDE") -> None:
        self.letters = letters
        L = re.escape(letters)
        self._boxed = re.compile(rf"^\(?([{L}])\)?(?:[.:)\s]|$)")
        self._stated = re.compile(rf"(?:answer|Answer|ANSWER|option|Option|choice|Choice)\s*(?:is|:)?\s*:?\s*\**\(?([{L}])\b")
        self._loose = re.compile(rf"(?:^|[\s(*])([{L}])(?:\)|\.|:|\*|$)", re.M)

    def extract(self, text: str) -> str | None:
        """The chosen letter or ``None``."""
        boxed = last_boxed(text)
        if boxed is not None:
            m = self._boxed.match(re.sub(r"\\text\{([^}]*)\}", r"\1", boxed).strip())
            if m:
                return m.group(1)
        stated = self._stated.findall(text)
        if stated:
            return stated[-1]
        loose = self._loose.findall(text)
        return loose[-1] if loose else None

    def gold_key(self, gold: str) -> str:
        """The gold letter."""
        g = gold.strip().upper()
        if g not in self.letters:
            raise ValueError(f"gold answer {gold!r} is not one of the letters {self.letters}")
        return g

    def same(self, a: str, b: str) -> bool:
        """Letters match."""
        return a == b


class MathScorer:
    r"""MATH: the last ``\boxed{}`` answer, equivalence by math-verify (sympy).

    A cheap string normalisation comes first. Needs ``pip install math-verify`` (in the ``live`` extra).
    """

    kind = "mv"
    name = "math"

    def __init__(self) -> None:
        try:
            import math_verify
        except ImportError as exc:
            raise RuntimeError("the MATH scorer needs math-verify: `pip install 'iapo-gym[live]'`") from exc
        self._mv = math_verify
        self._parsed: dict[str, Any] = {}
        self._same: dict[tuple[str, str], bool] = {}

    def extract(self, text: str) -> str | None:
        r"""Normalised content of the last ``\boxed{}``, or ``None``."""
        boxed = last_boxed(text)
        if boxed is None or not boxed.strip():
            return None
        return normalise_latex(boxed)

    def gold_key(self, gold: str) -> str:
        """The dataset's answer string, normalised (a full solution's last box is used if present)."""
        boxed = last_boxed(gold)
        return normalise_latex(boxed if boxed is not None else gold)

    @staticmethod
    def _timeout() -> int | None:
        # math-verify's timeouts use SIGALRM, which only the main thread may set.
        return 5 if threading.current_thread() is threading.main_thread() else None

    def _parse(self, s: str) -> Any:
        if s not in self._parsed:
            try:
                self._parsed[s] = self._mv.parse(f"${s}$", parsing_timeout=self._timeout())
            except Exception:  # math-verify raises on malformed LaTeX: treat as unparseable
                self._parsed[s] = []
        return self._parsed[s]

    def same(self, a: str, b: str) -> bool:
        """Equal strings, else math-verify equivalence (symmetric, cached)."""
        if a == b:
            return True
        key = (a, b) if a < b else (b, a)
        if key not in self._same:
            pa, pb = self._parse(a), self._parse(b)
            ok = False
            if pa and pb:
                try:
                    t = self._timeout()
                    ok = bool(self._mv.verify(pa, pb, timeout_seconds=t)) or bool(self._mv.verify(pb, pa, timeout_seconds=t))
                except Exception:
                    ok = False
            self._same[key] = ok
        return self._same[key]


def cluster_answers(
    answers: Sequence[str | None],
    gold: str,
    scorer: AnswerScorer,
    max_categories: int | None = None,
) -> tuple[NDArray[np.int64], list[str]]:
    """Group one query's extracted answers into MV categories.

    Category 0 is always the gold answer's (present or not); the other categories follow in
    decreasing order of count (ties by first appearance). Completions with no readable answer form
    one category, labelled :data:`NO_ANSWER`, that competes in the vote like any wrong answer (a
    deployment cannot return an answer it cannot read). With ``max_categories`` the rarest wrong
    categories are merged into a last one labelled ``"<other>"`` (this can only make the merged
    bucket win votes it would have split, so leave it ``None`` for exact tables).

    Returns:
        ``(category per answer (n,), labels)``: ``labels[a]`` is the canonical answer of category ``a``.
    """
    keys = [NO_ANSWER if a is None else a for a in answers]
    uniq, inverse, counts = np.unique(np.array(keys, dtype=object), return_inverse=True, return_counts=True)
    first = np.full(len(uniq), len(keys), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(keys)))
    # Representatives of equivalence classes; class 0 is gold.
    reps: list[str] = [gold]
    cls = np.empty(len(uniq), dtype=np.int64)
    for u in np.argsort(first, kind="stable"):  # one loop per distinct answer string
        key = str(uniq[u])
        if key == NO_ANSWER:
            cls[u] = -1
            continue
        for r, rep in enumerate(reps):
            if scorer.same(key, rep):
                cls[u] = r
                break
        else:
            cls[u] = len(reps)
            reps.append(key)
    has_none = bool(np.any(cls == -1))
    if has_none:
        cls[cls == -1] = len(reps)
        reps.append(NO_ANSWER)
    n_cls = len(reps)
    cls_counts = np.bincount(cls, weights=counts, minlength=n_cls)
    cls_first = np.full(n_cls, len(keys), dtype=np.int64)
    np.minimum.at(cls_first, cls, first)
    wrong = np.arange(1, n_cls)
    order = wrong[np.lexsort((cls_first[wrong], -cls_counts[wrong]))]
    rank = np.empty(n_cls, dtype=np.int64)
    rank[0] = 0
    rank[order] = np.arange(1, n_cls)
    labels = [reps[0]] + [reps[c] for c in order]
    if max_categories is not None and n_cls > max_categories:
        if max_categories < 2:
            raise ValueError("max_categories must be >= 2 (gold plus one other)")
        rank = np.minimum(rank, max_categories - 1)
        labels = labels[: max_categories - 1] + ["<other>"]
    return rank[cls[inverse]], labels


# --------------------------------------------------------------------------- objective scorers (BoN)
@runtime_checkable
class ObjectiveScorer(Protocol):
    """Best-of-N scorer: ``K`` objective values per completion."""

    kind: str  # "bon"
    name: str
    objectives: tuple[str, ...]
    ranges: NDArray[np.float64]  # (K, 2)

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> NDArray[np.float64]:
        """``(n, K)`` values of completion ``texts[i]`` answering ``queries[i]``."""
        ...


_WORD = re.compile(r"[A-Za-z][A-Za-z']+")
_STOP = frozenset(
    "the and for that with this from have what your you are was were will would could should about "
    "into there their them they then than when which while where who whom whose how why can not "
    "does did has had its it's been being also just only very more most some such".split()
)


class LexicalProxyScorer:
    """Offline proxy objectives in [0, 1] for tests and machines without reward models.

    * ``coverage``: share of the query's distinct content words (4+ letters, no stop words) that
      the completion repeats (a crude helpfulness / faithfulness proxy);
    * ``brevity``: ``1 - min(1, words / target_words)`` (a concision proxy that trades off against
      coverage, so BoN contexts have something to weigh).
    """

    kind = "bon"
    name = "lexical_proxy"

    def __init__(self, target_words: int = 60, objectives: tuple[str, str] = ("coverage", "brevity")) -> None:
        self.target_words = int(target_words)
        self.objectives = tuple(objectives)
        self.ranges = np.array([[0.0, 1.0], [0.0, 1.0]])

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> NDArray[np.float64]:
        """``(n, 2)`` coverage and brevity."""
        out = np.zeros((len(texts), 2))
        for i, (q, t) in enumerate(zip(queries, texts, strict=True)):
            qw = {w.lower() for w in _WORD.findall(q) if len(w) >= 4 and w.lower() not in _STOP}
            tw = [w.lower() for w in _WORD.findall(t)]
            out[i, 0] = len(qw & set(tw)) / len(qw) if qw else 0.0
            out[i, 1] = len(tw)
        out[:, 1] = 1.0 - np.minimum(1.0, out[:, 1] / self.target_words)
        return out


@dataclass(frozen=True)
class RewardObjective:
    """One reward-model objective.

    Attributes:
        name: objective name, e.g. ``"helpful"``.
        model: a Hugging Face sequence-classification model (name or local folder).
        normalise: ``"sigmoid"`` maps the logit ``r`` to ``1 / (1 + exp(-(r - shift) / scale))`` in
            (0, 1), the range the paper's tables use (o_max = 1); ``"none"`` keeps raw logits
            (range ``(-inf, inf)``, recorded as the observed min/max by the builder).
        shift, scale: the sigmoid's centre and width in logit units.
        template: how (query, response) become the model's input text.
        label: which output logit is the reward (0 for single-output reward models).
    """

    name: str
    model: str
    normalise: str = "sigmoid"
    shift: float = 0.0
    scale: float = 1.0
    template: str = "\n\nHuman: {query} \n\nAssistant: {response}"
    label: int = 0


def _normalise(specs: Sequence[RewardObjective], raw: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.array(raw, dtype=np.float64, copy=True)
    for k, spec in enumerate(specs):
        if spec.normalise == "sigmoid":
            out[:, k] = 1.0 / (1.0 + np.exp(-(out[:, k] - spec.shift) / spec.scale))
    return out


class RewardModelScorer:
    """Reward-model objectives: any Hugging Face ``AutoModelForSequenceClassification`` per objective.

    Inputs are formatted with each objective's ``template``, tokenized with right padding and
    truncation to ``max_length``, and scored in batches of ``batch_size`` under ``torch.no_grad``;
    the reward is the logit ``label`` of the model's head, then normalised (see
    :class:`RewardObjective`). Scoring is not charged to the budget (the paper's convention).
    """

    kind = "bon"
    name = "reward_model"

    def __init__(
        self,
        objectives: Sequence[RewardObjective],
        *,
        batch_size: int = 16,
        max_length: int = 1024,
        device: str = "cpu",
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise RuntimeError("reward-model scoring needs transformers: `pip install 'iapo-gym[live]'`") from exc
        if not objectives:
            raise ValueError("a reward-model scorer needs at least one objective")
        self._torch = torch
        self.specs = tuple(objectives)
        self.objectives = tuple(o.name for o in objectives)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.device = device
        self.ranges = np.array([[0.0, 1.0] if o.normalise == "sigmoid" else [-np.inf, np.inf] for o in objectives])
        self._models = []
        for o in objectives:
            if o.normalise not in ("sigmoid", "none"):
                raise ValueError(f"normalise must be 'sigmoid' or 'none'; got {o.normalise!r}")
            tok = AutoTokenizer.from_pretrained(o.model)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "right"
            model = AutoModelForSequenceClassification.from_pretrained(o.model).to(device).eval()
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tok.pad_token_id
            self._models.append((tok, model))

    def raw_scores(self, queries: Sequence[str], texts: Sequence[str]) -> NDArray[np.float64]:
        """``(n, K)`` logits before normalisation."""
        torch = self._torch
        out = np.zeros((len(texts), len(self.specs)))
        for k, (spec, (tok, model)) in enumerate(zip(self.specs, self._models, strict=True)):
            inputs = [spec.template.format(query=q, response=t) for q, t in zip(queries, texts, strict=True)]
            for s in range(0, len(inputs), self.batch_size):
                enc = tok(
                    inputs[s : s + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                with torch.no_grad():
                    logits = model(**enc).logits
                out[s : s + self.batch_size, k] = logits[:, spec.label].float().cpu().numpy()
        return out

    def normalise(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        """Apply each objective's normalisation to ``(n, K)`` logits."""
        return _normalise(self.specs, raw)

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> NDArray[np.float64]:
        """``(n, K)`` normalised rewards."""
        return self.normalise(self.raw_scores(queries, texts))


class RewardEndpointScorer:
    """Reward models served by vLLM's pooling API.

    ``vllm serve MODEL --runner pooling``, one server per reward model, so scoring runs on the
    serving GPUs and never in the build process.

    Each objective's inputs (its ``template`` over query and response) go in batches of
    ``batch_size`` to ``POST {base_url}/pooling`` (``{"model", "input": [...]}``; the reward is
    element ``label`` of each item's ``data``, the last token's for per-token outputs) or, with
    ``endpoint="classify"``, to ``/classify`` (the reward is ``probs[label]``). Normalisation as in
    :class:`RewardModelScorer`. Requests go through the same whole-request timeout and retry policy
    as generation (:class:`~iapo_gym.live.backends.OpenAIBackend`).

    Args:
        objectives: the objectives (``model`` is the served model name).
        base_url: the server (``http://host:port``; ``/v1`` is not used by these routes), or one
            per objective as ``base_urls``.
        endpoint: ``"pooling"`` or ``"classify"``.
        batch_size: inputs per request.
        timeout, max_retries, api_key_env: as for the OpenAI backend.
    """

    kind = "bon"
    name = "reward_endpoint"

    def __init__(
        self,
        objectives: Sequence[RewardObjective],
        base_url: str | None = None,
        *,
        base_urls: Sequence[str] | None = None,
        endpoint: str = "pooling",
        batch_size: int = 64,
        timeout: float = 300.0,
        max_retries: int = 3,
        api_key_env: str = "OPENAI_API_KEY",
    ) -> None:
        from iapo_gym.live.backends import OpenAIBackend

        if not objectives:
            raise ValueError("a reward-endpoint scorer needs at least one objective")
        if endpoint not in ("pooling", "classify"):
            raise ValueError(f"endpoint must be 'pooling' or 'classify'; got {endpoint!r}")
        urls = list(base_urls) if base_urls is not None else [base_url] * len(objectives)
        if len(urls) != len(objectives) or any(not u for u in urls):
            raise ValueError("give base_url, or one of base_urls per objective")
        self.specs = tuple(objectives)
        self.objectives = tuple(o.name for o in objectives)
        self.endpoint = endpoint
        self.batch_size = int(batch_size)
        self.ranges = np.array([[0.0, 1.0] if o.normalise == "sigmoid" else [-np.inf, np.inf] for o in objectives])
        self._clients = []
        for o, url in zip(objectives, urls, strict=True):
            c = OpenAIBackend(o.model, str(url), concurrency=1, timeout=timeout, max_retries=max_retries,
                              api_key_env=api_key_env)
            c.url = str(url).rstrip("/").removesuffix("/v1") + f"/{endpoint}"
            self._clients.append(c)

    def raw_scores(self, queries: Sequence[str], texts: Sequence[str]) -> NDArray[np.float64]:
        """``(n, K)`` rewards before normalisation."""
        from iapo_gym.live.backends import BackendError

        out = np.zeros((len(texts), len(self.specs)))
        for k, (spec, client) in enumerate(zip(self.specs, self._clients, strict=True)):
            inputs = [spec.template.format(query=q, response=t) for q, t in zip(queries, texts, strict=True)]
            for s in range(0, len(inputs), self.batch_size):
                chunk = inputs[s : s + self.batch_size]
                resp = client._post_raw({"model": spec.model, "input": chunk})
                data = resp.get("data") if isinstance(resp, dict) else None
                if not isinstance(data, list) or len(data) != len(chunk):
                    raise BackendError(f"{client.url}: expected {len(chunk)} items in 'data'; got {str(resp)[:300]}")
                for item in data:
                    idx = item.get("index")
                    val = item.get("probs") if self.endpoint == "classify" else item.get("data")
                    while isinstance(val, list) and val and isinstance(val[-1], list):
                        val = val[-1]  # per-token outputs: the last token's
                    if not isinstance(idx, int) or not isinstance(val, list) or len(val) <= spec.label:
                        raise BackendError(f"{client.url}: malformed item {str(item)[:200]}")
                    out[s + idx, k] = float(val[spec.label])
        return out

    def normalise(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        """Apply each objective's normalisation to ``(n, K)`` rewards."""
        return _normalise(self.specs, raw)

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> NDArray[np.float64]:
        """``(n, K)`` normalised rewards."""
        return self.normalise(self.raw_scores(queries, texts))


Scorer = AnswerScorer | ObjectiveScorer

ANSWER_SCORERS = {"math": MathScorer, "numeric": NumericScorer, "gsm8k": NumericScorer, "choice": ChoiceScorer}


def make_scorer(config: dict[str, Any], device: str | None = None) -> Any:
    """A scorer from a spec entry.

    ``device`` places reward models (``"cuda"``, ``"cuda:1"``, ``"mps"``; default the spec's
    ``device`` or CPU); other scorers ignore it.

    For example ``{"name": "math"}``, ``{"name": "choice", "letters": "ABCDE"}``,
    ``{"name": "lexical_proxy", "target_words": 60}`` or ``{"name": "reward_model", "objectives":
    [{"name": "helpful", "model": "..."}], "batch_size": 16}``.
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name in ("math", "numeric", "gsm8k"):
        return ANSWER_SCORERS[name]()
    if name == "choice":
        return ChoiceScorer(**cfg)
    if name == "lexical_proxy":
        if "objectives" in cfg:
            cfg["objectives"] = tuple(cfg["objectives"])
        return LexicalProxyScorer(**cfg)
    if name == "reward_model":
        objs = [RewardObjective(**o) for o in cfg.pop("objectives", [])]
        if device is not None:
            cfg["device"] = device
        return RewardModelScorer(objs, **cfg)
    if name == "reward_endpoint":
        objs = [RewardObjective(**o) for o in cfg.pop("objectives", [])]
        return RewardEndpointScorer(objs, **cfg)
    raise ValueError(
        f"unknown scorer {name!r}; choose one of math, numeric, gsm8k, choice, lexical_proxy, reward_model, reward_endpoint"
    )
