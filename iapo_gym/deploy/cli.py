"""``iapo-gym serve``: serve a saved policy as an OpenAI-compatible endpoint.

    iapo-gym serve policy.json --upstream http://127.0.0.1:8000 --upstream-model NAME
    iapo-gym serve policy.json --engine vllm --model smollm2 --dtype float32 --enforce-eager

Keys come from environment variables, never from the command line (which other users can read):
clients must send ``Authorization: Bearer <key>`` when ``$IAPO_GYM_API_KEY`` (or ``--api-key-env``)
is set (several keys: comma-separated); the upstream key is read from ``$OPENAI_API_KEY`` (or
``--upstream-api-key-env``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``serve``."""
    p = sub.add_parser("serve", help="serve a saved policy as an OpenAI-compatible router (needs iapo-gym[serve])",
                       description="Serve a saved policy as an OpenAI-compatible endpoint.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("policy", help="policy document (.json) written by policy.save / train.py --save-policies")
    p.add_argument("--spec", default=None,
                   help="task spec (name in envs_data/, folder or spec.json); default: the policy's task")
    p.add_argument("--upstream", default=None, help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    p.add_argument("--upstream-model", default=None, help="model name the upstream serves (default: its only model)")
    p.add_argument("--upstream-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the upstream key")
    p.add_argument("--engine", choices=("vllm",), default=None, help="run the model in process instead of --upstream")
    p.add_argument("--model", default=None, help="model for --engine vllm (smollm2, a folder or a Hugging Face name)")
    p.add_argument("--dtype", default="auto", help="--engine vllm: dtype")
    p.add_argument("--max-model-len", type=int, default=None, help="--engine vllm: context length")
    p.add_argument("--enforce-eager", action="store_true", help="--engine vllm: no CUDA graphs / compilation")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need an API key)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--served-model-name", default=None, help="model name clients send (default iapo-<task>)")
    p.add_argument("--api-key-env", default="IAPO_GYM_API_KEY", help="environment variable with the client key(s)")
    p.add_argument("--max-concurrency", type=int, default=16, help="answers calling the upstream at once (default 16)")
    p.add_argument("--max-pending", type=int, default=1024, help="requests waiting before HTTP 429 (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per upstream request (default 600)")
    p.add_argument("--timeout-keep-alive", type=int, default=None,
                   help="seconds an idle client connection stays open (default 75: above client pools' idle expiry)")
    p.add_argument("--retries", type=int, default=2, help="upstream retries on 429/5xx/connection errors (default 2)")
    p.add_argument("--default-context", default=None, help="context of requests that send none (default: refuse them)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling seeds of requests that send none")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def _upstream_model(base_url: str, key: str, timeout: float) -> str:
    import json
    import urllib.request

    url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") + "/models"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.loads(r.read()).get("data") or []
    if len(data) != 1:
        names = [d.get("id") for d in data]
        raise ValueError(f"--upstream-model is needed: the upstream serves {names}")
    return str(data[0]["id"])


def build_router(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """``(router, backend, upstream key)`` from the command line."""
    from iapo_gym.deploy.policy_io import load_policy, read_document
    from iapo_gym.deploy.router import Router
    from iapo_gym.live.backends import OpenAIBackend, SamplingConfig
    from iapo_gym.live.specs import load_spec

    spec = load_spec(args.spec or read_document(args.policy)["task"]["name"])
    policy = load_policy(args.policy, spec=spec)
    sampling = SamplingConfig(**spec.sampling.to_json())
    key = os.environ.get(args.upstream_api_key_env, "") or "EMPTY"
    if (args.upstream is None) == (args.engine is None):
        raise ValueError("give exactly one of --upstream URL (an OpenAI-compatible server) or --engine vllm")
    if args.upstream is not None:
        model = args.upstream_model or _upstream_model(args.upstream, key, min(args.timeout, 30.0))
        backend: Any = OpenAIBackend(model, args.upstream, sampling, concurrency=args.max_concurrency,
                                     timeout=args.timeout, max_retries=args.retries, api_key=key)
    else:
        if not args.model:
            raise ValueError("--engine vllm needs --model (smollm2, a folder or a Hugging Face name)")
        from iapo_gym.live.backends import VLLMBackend

        backend = VLLMBackend(args.model, sampling, dtype=args.dtype, max_model_len=args.max_model_len,
                              enforce_eager=args.enforce_eager)
    return Router(policy, spec, backend, seed=args.seed), backend, key


def run(args: argparse.Namespace) -> int:
    """Start the server (blocks until SIGINT/SIGTERM)."""
    try:
        import uvicorn

        from iapo_gym.deploy.server import KEEP_ALIVE_S, create_app
    except ImportError as exc:
        raise RuntimeError("iapo-gym serve needs FastAPI and uvicorn: pip install 'iapo-gym[serve]'") from exc
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = [k.strip() for k in os.environ.get(args.api_key_env, "").split(",") if k.strip()]
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print(f"iapo-gym serve: warning: binding {args.host} with no client API key (set ${args.api_key_env})",
              file=sys.stderr)
    keep_alive = KEEP_ALIVE_S if args.timeout_keep_alive is None else args.timeout_keep_alive
    if not keep_alive > 0:
        raise ValueError(f"--timeout-keep-alive must be > 0 seconds; got {args.timeout_keep_alive!r}")
    router, backend, upstream_key = build_router(args)
    app = create_app(router, model_name=args.served_model_name, api_keys=keys, max_concurrency=args.max_concurrency,
                     max_pending=args.max_pending, max_body_bytes=args.max_body_bytes,
                     default_context=args.default_context, secrets=[upstream_key] if upstream_key != "EMPTY" else [],
                     on_shutdown=backend.close)
    task = router.deployment.task
    logging.getLogger("iapo_gym.serve").info(
        "serving %s (task %s, fingerprint %s, %s policy) on http://%s:%d, upstream model %s",
        args.served_model_name or f"iapo-{task.name.lower()}", task.name, task.fingerprint, router.deployment.kind,
        args.host, args.port, backend.model)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                    timeout_keep_alive=keep_alive)
    finally:  # reached when uvicorn returns without a signal (the lifespan closed the backend on a signal)
        backend.close()
    return 0
