"""Chat-message prompt templates on the real vLLM OpenAI-compatible server (CPU build, SmolLM2):
the messages go through the model's chat template exactly as the in-process backend encodes them,
and a build with a template prompt completes.
"""

from __future__ import annotations

import pytest
from live_support import SERVER_ARGS, require_live_stack

from iapo_gym.live.backends import GenerationRequest, OpenAIBackend, SamplingConfig
from iapo_gym.live.builder import build_table
from iapo_gym.live.specs import load_queries, load_spec, render

pytestmark = pytest.mark.live

CHAT = (
    {"role": "system", "content": "You are a terse calculator."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "Answer: 4"},
    {"role": "user", "content": "{query}"},
)


def test_message_templates_on_the_real_server(tmp_path):
    require_live_stack()
    from transformers import AutoTokenizer

    from iapo_gym.live.server import VLLMServer

    srv = VLLMServer("smollm2", args=SERVER_ARGS, log=tmp_path / "server.log").start()
    try:
        s = load_spec("smolarith")
        spec = s.with_overrides(prompts=[s.prompts[0], list(CHAT)], pool=2, sampling=SamplingConfig(0.8, 0.95, 16))
        queries = load_queries(spec, limit=2)
        be = OpenAIBackend(srv.model, srv.base_url, spec.sampling, concurrency=2)
        msgs = render(CHAT, queries[0].text)
        g = be.generate([GenerationRequest(msgs, 2, 7)])[0]
        tok = AutoTokenizer.from_pretrained(srv.model)
        ids = tok.apply_chat_template(list(msgs), tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        # the server counted exactly the ids VLLMBackend.encode() builds for the same messages
        assert g.prompt_tokens == len(ids) and "terse calculator" in tok.decode(ids) and len(g.texts) == 2
        table, stats = build_table(spec, be, queries, tmp_path / "t", progress=False)
        be.close()
        assert stats.units_generated == 4 and table.n_prompts == 2 and table.prompts[1].startswith('[{"role": "system"')
    finally:
        srv.stop()
