"""Issue 16, point 1: one request's out-of-range numbers never hurt another request.

First line: every bounded field is refused with a 400 naming it, in both dialects (the
Responses API translates through the same `cortex.api.limits`). Second line: a value that
slipped past validation fails its own request in the engine step; the batch goes on.
"""

from __future__ import annotations

import pytest
import torch

from cortex.api import translate
from cortex.api.openai import parse_chat, parse_completion
from cortex.config import EngineConfig
from cortex.errors import InvalidRequest
from cortex.neuron.engine.llm_engine import LLMEngine
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.models.loading import load_model
from tests.support.checkpoints import STORIES

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
HUGE = 1180591620717411303424  # 2**70


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", HUGE),
        ("seed", 2**63),
        ("seed", 1e308),
        ("top_k", 1e308),
        ("top_k", 2**63),
        ("max_tokens", 1e308),
        ("temperature", float("inf")),
        ("n", 2**64),
        ("top_logprobs", 1e30),
    ],
)
def test_openai_bounds_name_the_field(field, value):
    for parse, body in ((parse_chat, CHAT), (parse_completion, {"model": "m", "prompt": "x"})):
        if field == "top_logprobs" and parse is parse_completion:
            continue
        with pytest.raises(InvalidRequest) as info:
            parse({**body, field: value})
        assert info.value.param == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", 1e308),
        ("top_k", HUGE),
        ("temperature", 1e400),
        ("top_p", 5),
        ("max_tokens", 1e308),
    ],
)
def test_anthropic_bounds_name_the_field(field, value):
    with pytest.raises(InvalidRequest) as info:
        translate.to_openai_chat({**MESSAGES, field: value})
    assert field in info.value.message


def test_a_failing_request_fails_alone_in_the_engine_step():
    model = load_model(STORIES, torch.device("cpu"), torch.float32)
    config = EngineConfig(block_size=4, max_batch=4, max_num_batched_tokens=64, cuda_graphs=False)
    engine = LLMEngine(model, config)
    good = [
        engine.add_request(
            [1, 5, 6, 7], SamplingParams(temperature=0.8, seed=i, max_tokens=12, ignore_eos=True)
        )
        for i in range(2)
    ]
    bad_params = SamplingParams(temperature=0.8, top_k=5, max_tokens=12, ignore_eos=True)
    bad_params.top_k = HUGE  # what validation would have refused: the engine's second line
    bad = engine.add_request([1, 5, 6, 8], bad_params)
    outputs: dict[int, list] = {s.seq_id: [] for s in [*good, bad]}
    for _ in range(200):
        if not engine.has_work:
            break
        for seq, out in engine.step():
            outputs[seq.seq_id].append(out)
    assert outputs[bad.seq_id][-1].error is not None
    assert outputs[bad.seq_id][-1].finish_reason == "abort"
    for seq in good:
        tokens = [t for out in outputs[seq.seq_id] for t in out.token_ids]
        assert len(tokens) == 12 and outputs[seq.seq_id][-1].finish_reason == "length"


@pytest.mark.parametrize(
    "patch",
    [
        {"metadata": 5},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}],
                },
            ]
        },
        {"tools": [{"name": "f", "input_schema": 5}]},
        {"thinking": 5},
    ],
)
def test_malformed_anthropic_fields_are_400_not_500(patch):
    """Point 9: these raised AttributeError (a 500 with Python's text) before."""
    with pytest.raises(InvalidRequest):
        translate.to_openai_chat({**MESSAGES, **patch})
    if "max_tokens" not in patch:
        with pytest.raises(InvalidRequest):
            translate.to_openai_tokenize({**MESSAGES, **patch})
