"""The builder on the in-process vLLM engine against raw ``LLM.generate`` (target ratio >= 0.9).

All sides run the same vLLM engine (in process, SmolLM2-135M-Instruct by default) on the same
(prompt, query) requests with the same per-unit seeds, so they generate the same tokens:

* **raw**: one ``LLM.generate`` call over every request (vLLM batches continuously inside it;
  the best a hand-written script can do);
* **builder**: :func:`~iapo_gym.live.builder.build_table` with ``--window`` units queued in the
  running engine at a time and each unit collected and checkpointed as it finishes: with many
  more units than the window, every unit enters the engine at a scheduling boundary (chat
  templating, scoring, fsync'd checkpoint appends and table assembly included);
* **chunked** (reference): the builder's old path, ``LLM.generate`` on chunks of ``--window``
  units, each chunk waited for.

Prefix caching is off so that no side profits from another's cached prompts. Runs alternate
(raw, builder, chunked, raw, ...) so drift in the machine's load cancels, and the tokens of every
run are compared.

    python benchmarks/bench_builder.py --queries 12 --prompts 4 --pool 4 --max-tokens 16 --window 16

Prints completion tokens per second of each side and the ratios to raw.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


class Chunked:
    """The old path: ``LLM.generate`` on each chunk the scheduler hands over (no ``submit``)."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.model, self.sampling, self.engine = engine.model, engine.sampling, engine

    def stream(self, requests):  # type: ignore[no-untyped-def]
        """One ``LLM.generate`` call for the chunk."""
        yield from enumerate(self.engine.generate_batch(requests))

    def close(self) -> None:
        """The engine is closed by its owner."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="smolarith")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--queries", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--window", type=int, default=16, help="units in the engine at once (builder) / per chunk (chunked)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from iapo_gym.live.backends import SamplingConfig, VLLMBackend
    from iapo_gym.live.builder import Builder, build_table
    from iapo_gym.live.checkpoint import read_units
    from iapo_gym.live.specs import load_queries, load_spec

    spec = load_spec(args.spec)
    spec = spec.with_overrides(prompts=spec.prompts[: args.prompts], pool=args.pool,
                               sampling=SamplingConfig(spec.sampling.temperature, spec.sampling.top_p, args.max_tokens))
    queries = load_queries(spec, limit=args.queries)
    t0 = time.perf_counter()
    engine = VLLMBackend(args.model, spec.sampling, dtype=args.dtype, max_model_len=1024, enforce_eager=True,
                         enable_prefix_caching=False)
    print(f"engine start: {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        helper = Builder(spec, engine, queries, Path(tmp) / "unused.jsonl", seed=0, progress=False)
        reqs = [helper.request(c) for c in helper.cells()]
        engine.generate_batch(reqs[:2])  # warm-up
        texts: dict[str, list] = {}

        def raw(rep: int) -> tuple[float, int]:
            t = time.perf_counter()
            gens = engine.generate_batch(reqs)
            dt = time.perf_counter() - t
            texts.setdefault("raw", [g.texts for g in gens])
            return dt, sum(g.total_completion_tokens for g in gens)

        def build(rep: int, chunked: bool) -> tuple[float, int]:
            name = f"{'chunked' if chunked else 'builder'}{rep}"
            t = time.perf_counter()
            _, stats = build_table(spec, Chunked(engine) if chunked else engine, queries, Path(tmp) / name, seed=0,
                                   concurrency=args.window, batch_size=args.window, progress=False, command="bench_builder")
            dt = time.perf_counter() - t
            units = {(u["p"], u["q"]): tuple(u["texts"]) for u in read_units(Path(tmp) / f"{name}.checkpoint.jsonl")}
            texts.setdefault(name[:-1], [units[(c.p, c.q)] for c in helper.cells()])
            return dt, stats.completion_tokens

        runs: dict[str, list[tuple[float, int]]] = {"raw": [], "builder": [], "chunked": []}
        for rep in range(args.repeats):
            for name, fn in (("raw", lambda r: raw(r)), ("builder", lambda r: build(r, False)),
                             ("chunked", lambda r: build(r, True))):
                dt, toks = fn(rep)
                runs[name].append((dt, toks))
                print(f"  rep {rep} {name:8s} {dt:7.1f} s  {toks} completion tokens  {toks / dt:6.1f} tok/s", flush=True)
    engine.close()
    tps = {k: sum(n for _, n in v) / sum(t for t, _ in v) for k, v in runs.items()}
    print(f"requests: {len(reqs)} units x n={args.pool} ({args.queries} queries x {args.prompts} prompts), "
          f"max_tokens {args.max_tokens}, window {args.window} units ({len(reqs) / args.window:.0f} windows' worth)")
    for k in runs:
        print(f"{k:8s}: {tps[k]:6.1f} tok/s -> {tps[k] / tps['raw']:.3f} x raw")
    same = texts["raw"] == texts["builder"] == texts["chunked"] and len({n for v in runs.values() for _, n in v}) == 1
    print(f"builder / raw: {tps['builder'] / tps['raw']:.3f} (target >= 0.9); identical completions on all sides: {same}")


if __name__ == "__main__":
    main()
