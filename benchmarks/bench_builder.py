"""Builder throughput against raw ``LLM.generate`` on the same requests (target ratio >= 0.9).

Both sides run the same vLLM engine (in process, SmolLM2-135M-Instruct by default) on the same
(prompt, query) requests with the same per-unit seeds, so they generate the same tokens; the
builder adds chat templating, scoring, checkpoint appends (fsync per batch) and table assembly.
Prefix caching is off so that neither side profits from the other's cached prompts. Raw runs
and builds alternate (raw, build, raw, build, raw) so drift in the machine's load cancels, and
the time the builder spends outside the engine is reported separately.

    python benchmarks/bench_builder.py --queries 12 --prompts 4 --pool 8 --max-tokens 32

Prints completion tokens per second of each side and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="smolarith")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--queries", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=48, help="builder units per batch / checkpoint")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=2, help="builds, interleaved with repeats + 1 raw runs")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from iapo_gym.live.backends import SamplingConfig, VLLMBackend
    from iapo_gym.live.builder import Builder, build_table
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
        reqs = [helper.request(p, q) for p, q in helper.units()]
        prompts = [{"prompt_token_ids": engine.encode(r.messages)} for r in reqs]
        params = [engine.sampling_params(r) for r in reqs]
        engine.llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up

        def raw() -> tuple[float, int]:
            t = time.perf_counter()
            outs = engine.llm.generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - t, sum(len(c.token_ids) for o in outs for c in o.outputs)

        # Time spent inside the engine during a build, to separate the builder's own overhead
        # (chat templating, scoring, checkpoint appends with fsync, table assembly) from drift in
        # the machine's load, which moves both sides.
        inner = [0.0]
        stream = engine.stream

        def timed_stream(reqs):
            t = time.perf_counter()
            yield from stream(reqs)
            inner[0] += time.perf_counter() - t

        engine.stream = timed_stream  # type: ignore[method-assign]
        raws, builds = [], []
        for rep in range(args.repeats):  # raw, build, raw, build, ..., raw: drift cancels in the mean
            raws.append(raw())
            t = time.perf_counter()
            _, stats = build_table(spec, engine, queries, Path(tmp) / f"table{rep}", seed=0, batch_size=args.batch_size,
                                   progress=False, command="bench_builder")
            builds.append((time.perf_counter() - t, stats.completion_tokens))
        raws.append(raw())
    engine.close()
    raw_tps = sum(n for _, n in raws) / sum(t for t, _ in raws)
    build_s = sum(t for t, _ in builds)
    build_tps = sum(n for _, n in builds) / build_s
    overhead = build_s - inner[0]
    print(
        f"requests: {len(reqs)} units x n={args.pool} ({args.queries} queries x {args.prompts} prompts), "
        f"max_tokens {args.max_tokens}"
    )
    print("raw LLM.generate: " + ", ".join(f"{n} tok in {t:.1f} s" for t, n in raws) + f" -> {raw_tps:.1f} tok/s")
    print("builder         : " + ", ".join(f"{n} tok in {t:.1f} s" for t, n in builds) + f" -> {build_tps:.1f} tok/s")
    print(f"builder overhead outside the engine: {overhead:.2f} s of {build_s:.1f} s ({100 * overhead / build_s:.2f} %)")
    print(f"ratio builder/raw: {build_tps / raw_tps:.3f} (target >= 0.9); "
          f"same tokens: {len({n for _, n in raws + builds}) == 1}")


if __name__ == "__main__":
    main()
