"""Builder throughput against raw ``LLM.generate`` on the same requests (target ratio >= 0.9).

Both sides run the same vLLM engine (in process, SmolLM2-135M-Instruct by default) on the same
(prompt, query) requests with the same per-unit seeds, so they generate the same tokens; the
builder adds chat templating, scoring, checkpoint appends (fsync per batch) and table assembly.
Prefix caching is off so that neither side profits from the other's cached prompts. The raw
side runs before and after the builder and its mean is used.

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

        raw1 = raw()
        t = time.perf_counter()
        _, stats = build_table(spec, engine, queries, Path(tmp) / "table", seed=0, batch_size=args.batch_size,
                               progress=False, command="bench_builder")
        built = time.perf_counter() - t, stats.completion_tokens
        raw2 = raw()
    engine.close()
    raw_tps = (raw1[1] + raw2[1]) / (raw1[0] + raw2[0])
    build_tps = built[1] / built[0]
    print(f"requests: {len(reqs)} units x n={args.pool} ({args.queries} queries x {args.prompts} prompts), max_tokens {args.max_tokens}")
    print(f"raw LLM.generate: {raw1[1]} tokens in {raw1[0]:.1f} s / {raw2[1]} tokens in {raw2[0]:.1f} s -> {raw_tps:.1f} tok/s")
    print(f"builder         : {built[1]} tokens in {built[0]:.1f} s (incl. scoring, checkpoints, table) -> {build_tps:.1f} tok/s")
    print(f"ratio builder/raw: {build_tps / raw_tps:.3f} (target >= 0.9); same tokens: {built[1] == raw1[1] == raw2[1]}")


if __name__ == "__main__":
    main()
