"""``iapo-gym build --dry-run``: what a build will send, and what it may cost, before sending it.

:func:`plan_build` counts the units, completions and requests still to generate (a checkpoint
that already holds some is taken into account, through the same content keys the build uses) and
estimates tokens: prompt tokens from the rendered messages (about 4 characters per token, or the
mean a probe measured), completion tokens as an upper bound (``max_tokens`` per completion) and,
with a probe, an expected value from the probe's mean. Prices are per million tokens, as
providers quote them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapo_gym.live.specs import Query, TaskSpec

CHARS_PER_TOKEN = 4.0


@dataclass
class BuildPlan:
    """Counts and estimates of a build (see the module docstring)."""

    task: str
    model: str
    n_prompts: int
    n_queries: int
    pool: int
    units_total: int
    units_done: int
    units_failed: int
    units_todo: int
    completions_todo: int
    requests_todo: int
    prompt_tokens_est: float
    completion_tokens_max: float
    completion_tokens_est: float | None
    price_in: float | None
    price_out: float | None
    probe: dict[str, Any] | None = None

    def cost(self, completion_tokens: float) -> float | None:
        """Dollars for the prompt estimate plus ``completion_tokens``, or ``None`` without prices."""
        if self.price_in is None and self.price_out is None:
            return None
        return (self.prompt_tokens_est * (self.price_in or 0.0) + completion_tokens * (self.price_out or 0.0)) / 1e6

    def render(self) -> str:
        """The human-readable summary ``--dry-run`` prints."""
        lines = [
            f"dry run: {self.task}, model {self.model}",
            f"  units      {self.n_queries:,} queries x {self.n_prompts} prompts = {self.units_total:,} "
            f"({self.units_done:,} in the checkpoint, {self.units_failed:,} quarantined, {self.units_todo:,} to generate)",
            f"  completions {self.completions_todo:,} to generate (pool {self.pool})",
            f"  requests   {self.requests_todo:,}",
            f"  prompt tokens      ~{self.prompt_tokens_est:,.0f} "
            + ("(probe mean)" if self.probe else f"(rendered characters / {CHARS_PER_TOKEN:g}; counted once per request)"),
            f"  completion tokens  <= {self.completion_tokens_max:,.0f} (max_tokens per completion)",
        ]
        if self.completion_tokens_est is not None and self.probe is not None:
            lines.append(f"  completion tokens  ~{self.completion_tokens_est:,.0f} (probe mean "
                         f"{self.probe['mean_completion_tokens']:.1f} per completion over {self.probe['completions']})")
        upper = self.cost(self.completion_tokens_max)
        if upper is not None:
            prices = f"${self.price_in or 0:g}/M input, ${self.price_out or 0:g}/M output"
            lines.append(f"  cost at {prices}: <= ${upper:,.2f}")
            if self.completion_tokens_est is not None:
                lines.append(f"  expected cost: ~${self.cost(self.completion_tokens_est):,.2f}")
        else:
            lines.append("  cost: pass --price-in/--price-out (dollars per million tokens) for an estimate")
        return "\n".join(lines)


def plan_build(
    spec: TaskSpec,
    backend: Any,
    queries: Sequence[Query],
    *,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    retry_failed: bool = False,
    price_in: float | None = None,
    price_out: float | None = None,
    probe: int = 0,
) -> BuildPlan:
    """Count and estimate a build without generating anything (unless ``probe`` > 0).

    Args:
        spec: the task spec.
        backend: the backend the build would use (only its ``model``, sampling and options are read,
            unless ``probe`` > 0).
        queries: the queries of the build.
        checkpoint: an existing checkpoint to take into account (read only; not locked or created).
        seed: the build seed.
        retry_failed: count quarantined units as to generate.
        price_in: dollars per million prompt tokens.
        price_out: dollars per million completion tokens.
        probe: send this many real requests of ``n = 1`` (the first units) to measure mean prompt
            and completion tokens.
    """
    from iapo_gym.live.builder import Builder
    from iapo_gym.live.checkpoint import CheckpointLog, scan

    b = Builder(spec, backend, list(queries), Path(checkpoint or "unused.jsonl"), seed=seed, progress=False)
    log = None
    if checkpoint is not None and Path(checkpoint).is_file() and Path(checkpoint).stat().st_size:
        s = scan(checkpoint)
        log = CheckpointLog(Path(checkpoint), s.header or {})
        for rec in s.records:
            log._index(rec)
    cells = b.cells(log)
    M = spec.pool
    done = sum(c.have >= M for c in cells)
    failed = {(c.key, c.have) for c in cells if c.have < M and log is not None and (c.key, c.have) in log.failed}
    todo = [c for c in cells if c.have < M and (retry_failed or (c.key, c.have) not in failed)]
    completions = sum(M - c.have for c in todo)
    single = bool(getattr(backend, "single", False))
    requests = completions if single else len(todo)
    chars = sum(sum(len(m["content"]) for m in spec.messages(c.p, queries[c.q])) for c in todo)
    prompt_est = chars / CHARS_PER_TOKEN * (completions / max(len(todo), 1) if single else 1.0)
    ctoks_max = float(completions * backend.sampling.max_tokens)
    ctoks_est = None
    probe_info = None
    if probe > 0 and todo:
        from iapo_gym.live.backends import GenerationRequest

        sample = todo[:probe]
        gens = backend.generate([GenerationRequest(spec.messages(c.p, queries[c.q]), 1, c.seed) for c in sample])
        mean_c = sum(g.total_completion_tokens for g in gens) / len(gens)
        mean_p = sum(g.prompt_tokens for g in gens) / len(gens)
        probe_info = {"requests": len(gens), "completions": len(gens), "mean_completion_tokens": mean_c,
                      "mean_prompt_tokens": mean_p}
        ctoks_est = mean_c * completions
        prompt_est = mean_p * requests
    return BuildPlan(spec.task, backend.model, len(spec.prompts), len(queries), M, len(cells), done, len(failed),
                     len(todo), completions, requests, prompt_est, ctoks_max, ctoks_est, price_in, price_out, probe_info)
