"""The real vLLM OpenAI-compatible server (CPU build, SmolLM2): the OpenAI backend, and a build
that survives the server being SIGKILLed mid-way.

What the resumability test proves (the server is deterministic for a given request seed, also
across restarts, which the test relies on and checks through the final equality):

* every (prompt, query) unit checkpointed before the kill is kept byte for byte and never
  requested again (the resumed session generates exactly the missing units);
* the final checkpoint holds each unit exactly once (no duplicated or lost work);
* the final table equals that of an uninterrupted build of the same spec and seed.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from live_support import SERVER_ARGS, require_live_stack

from iapo_gym.live.backends import BackendError, GenerationRequest, OpenAIBackend, SamplingConfig
from iapo_gym.live.builder import build_table
from iapo_gym.live.checkpoint import read_units
from iapo_gym.live.specs import load_queries, load_spec
from iapo_gym.tables.io import load_table

pytestmark = pytest.mark.live
SAMPLING = SamplingConfig(0.8, 0.95, 24)


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory):
    require_live_stack()
    from iapo_gym.live.server import VLLMServer

    started: list[VLLMServer] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def make() -> VLLMServer:
        srv = VLLMServer("smollm2", args=SERVER_ARGS, log=logs / f"server{len(started)}.log")
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def spec():
    s = load_spec("smolarith")
    return s.with_overrides(prompts=s.prompts[:2], pool=4, sampling=SAMPLING)


def _backend(srv, **kw) -> OpenAIBackend:
    return OpenAIBackend(srv.model, srv.base_url, SAMPLING, **kw)


class _KillingBackend(OpenAIBackend):
    """The OpenAI backend that SIGKILLs the real server just before sending its ``at_request``-th request."""

    def __init__(self, srv, *, at_request: int, **kw) -> None:
        super().__init__(srv.model, srv.base_url, SAMPLING, **kw)
        self.srv, self.at_request, self.submitted, self.killed = srv, at_request, 0, False

    def submit(self, request):
        self.submitted += 1
        if self.submitted == self.at_request:
            self.srv.kill()
            self.killed = True
        return super().submit(request)


def test_openai_backend_unreachable_server_fails_after_retries():
    from iapo_gym.live.server import free_port

    b = OpenAIBackend("m", f"http://127.0.0.1:{free_port()}", SAMPLING, max_retries=2, backoff=0.01, timeout=2)
    with pytest.raises(BackendError, match="failed after 3 attempts"):
        b.generate([GenerationRequest(({"role": "user", "content": "hi"},), 2, 0)])
    assert b.requests_sent == 3
    b.close()


def test_build_resumes_after_server_sigkill(server_factory, spec, tmp_path):
    queries = load_queries(spec, limit=4)
    srv = server_factory()

    # One request with n=3 gives 3 choices, with the server's token counts.
    b = _backend(srv, concurrency=2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(srv.model)
    msgs = spec.messages(0, queries[0])
    g = b.generate([GenerationRequest(msgs, 3, 7)])[0]
    assert len(g.texts) == 3 and all(isinstance(t, str) for t in g.texts)
    ids = tok.apply_chat_template(list(msgs), tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert g.prompt_tokens == len(ids)
    assert sum(g.completion_tokens) <= 3 * SAMPLING.max_tokens
    assert g.texts == b.generate([GenerationRequest(msgs, 3, 7)])[0].texts  # seeded: reproducible
    b.close()

    # The uninterrupted reference build.
    ref, _ = build_table(spec, _backend(srv, concurrency=1), queries, tmp_path / "ref", seed=3, batch_size=1, progress=False)

    # The same build, SIGKILLing the server just before the build sends its 4th request: with one
    # request in flight, 3 units are finished when the kill lands, on a fast machine or a slow one
    # (polling the checkpoint for the kill raced a fast machine: the build could finish first).
    ckpt = tmp_path / "t.checkpoint.jsonl"
    failure: list[BaseException] = []
    killing = _KillingBackend(srv, at_request=4, concurrency=1, max_retries=1, backoff=0.2, timeout=30)

    def run() -> None:
        try:
            build_table(spec, killing, queries, tmp_path / "t", seed=3, batch_size=1, progress=False)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    th = threading.Thread(target=run)
    th.start()
    th.join(300)
    assert not th.is_alive()
    assert killing.killed, "the build never reached its 4th request"
    assert failure and isinstance(failure[0], BackendError), failure
    before = read_units(ckpt)
    assert len(before) == 3, "every unit finished before the kill is checkpointed, none after"
    assert not (tmp_path / "t").exists()

    srv2 = server_factory()
    table, stats = build_table(
        spec, _backend(srv2, concurrency=1), queries, tmp_path / "t", seed=3, batch_size=1, progress=False
    )
    after = read_units(ckpt)
    assert stats.units_before == len(before) and stats.units_generated == 8 - len(before)
    assert after[: len(before)] == before  # checkpointed work kept, never regenerated
    keys = [(u["p"], u["q"]) for u in after]
    assert len(keys) == 8 and len(set(keys)) == 8  # nothing lost, nothing duplicated
    loaded, ref_loaded = load_table(tmp_path / "t"), load_table(tmp_path / "ref")
    for name in ("answer_probs", "gold", "cost", "split"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(ref_loaded, name))
    assert loaded.provenance["answer_labels"] == ref_loaded.provenance["answer_labels"]
    ref_units = {(u["p"], u["q"]): u["texts"] for u in read_units(tmp_path / "ref.checkpoint.jsonl")}
    assert {(u["p"], u["q"]): u["texts"] for u in after} == ref_units  # identical completions, unit by unit
    assert loaded.provenance["build_sessions"] == 2
