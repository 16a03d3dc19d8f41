"""The sampler's per-row logit adjustments (engine/logits.py) and the grammars (text/grammar.py),
without a server: masked rows beside unmasked rows in one batch, rows without an adjustment
untouched bit for bit, logit_bias and min_tokens, grammars that refuse what they must."""

from __future__ import annotations

import json

import pytest
import torch

from cortex.api import openai
from cortex.errors import InvalidRequest
from cortex.neuron.engine.logits import LogitAdjustments, unpack_bitmask
from cortex.neuron.engine.sampling import Sampler, SamplingBatch, SamplingParams
from cortex.neuron.text import load_tokenizer
from cortex.neuron.text.grammar import compiler_for, request_grammar
from cortex.neuron.text.parsers import parse_tool_calls
from tests.conftest import FIXTURES

HELLO = [{"role": "user", "content": "hi"}]
PET = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer"}},
    "required": ["kind", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FIXTURES / "qwen3")


def _compiled(tokenizer, body: dict):
    req = openai.parse_chat({"model": "m", "messages": HELLO, **body})
    prompt = tokenizer.encode_chat(req.messages, req.tools, True, enable_thinking=False)
    grammar, param = request_grammar(req, tokenizer, prompt)
    return compiler_for(tokenizer).compile(grammar, param)


def _allowed(constraint, vocab: int) -> set[int]:
    adjust = LogitAdjustments.build(
        [SamplingParams(constraint=constraint)], [0], [frozenset()], "cpu"
    )
    out = adjust.apply(torch.zeros(1, vocab))
    return set(torch.nonzero(out[0] > float("-inf")).flatten().tolist())


def test_unpack_bitmask_bits_and_padding() -> None:
    words = torch.tensor([[0b101, 0], [-1, 1]], dtype=torch.int32)  # [2, 2]: 64 ids
    allowed = unpack_bitmask(words, 70)
    assert allowed.shape == (2, 70)
    assert torch.nonzero(allowed[0]).flatten().tolist() == [0, 2]
    assert torch.nonzero(allowed[1]).flatten().tolist() == [*range(33)]  # id 32 = bit 0 of word 1
    assert not allowed[:, 64:].any()  # past the mask's vocabulary: disallowed
    assert unpack_bitmask(words, 40).shape == (2, 40)


def test_masked_rows_beside_untouched_rows(tokenizer) -> None:
    compiled = _compiled(tokenizer, {"response_format": {"type": "json_object"}})
    vocab = 151936  # the model's logits are wider than the tokenizer (padded embeddings)
    params = [
        SamplingParams(seed=1),
        SamplingParams(constraint=compiled.constraint(), seed=2),
        SamplingParams(seed=3),
        SamplingParams(constraint=compiled.constraint(), seed=4),
    ]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, vocab, generator=gen)
    batch = SamplingBatch.build(params, [[1]] * 4, [None] * 4, "cpu", prompt_lens=[1] * 4)
    adjusted = batch.adjust.apply(logits)
    assert torch.equal(adjusted[0], logits[0]) and torch.equal(adjusted[2], logits[2])
    for row in (1, 3):
        allowed = set(torch.nonzero(adjusted[row] > float("-inf")).flatten().tolist())
        assert allowed and all(tokenizer.decode([t]).startswith("{") for t in allowed)
        assert max(allowed) < tokenizer.vocab_size
    tokens = Sampler().sample(logits, batch).token_ids.tolist()
    assert tokenizer.decode([tokens[1]]).startswith("{")
    assert tokenizer.decode([tokens[3]]).startswith("{")


def test_a_batch_without_adjustments_has_none() -> None:
    batch = SamplingBatch.build([SamplingParams()] * 2, [[1], [2]], [None, None], "cpu")
    assert batch.adjust is None


def test_grammar_follows_the_tokens_to_eos(tokenizer) -> None:
    constraint = _compiled(
        tokenizer,
        {"response_format": {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}},
    ).constraint()
    text = '{"kind": "dog", "age": 3}'
    ids = tokenizer.encode(text, add_special_tokens=False)
    adjust = LogitAdjustments.build(
        [SamplingParams(constraint=constraint)], [0], [frozenset()], "cpu"
    )
    for token in ids:
        allowed = set(
            torch.nonzero(adjust.apply(torch.zeros(1, 151936))[0] == 0).flatten().tolist()
        )
        assert token in allowed
        adjust.accept([token])
    # The object is complete: only the model's EOS ids may follow.
    done = adjust.apply(torch.zeros(1, 151936))[0]
    assert set(torch.nonzero(done == 0).flatten().tolist()) == set(tokenizer.eos_token_ids)
    assert json.loads(text)["kind"] == "dog"


def test_a_think_block_may_come_first_when_thinking_is_on(tokenizer) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}
    body = {"response_format": schema, "chat_template_kwargs": {"enable_thinking": True}}
    req = openai.parse_chat({"model": "m", "messages": HELLO, **body})
    prompt = tokenizer.encode_chat(req.messages, None, True, enable_thinking=True)
    grammar, param = request_grammar(req, tokenizer, prompt)
    compiled = compiler_for(tokenizer).compile(grammar, param)
    for text in (
        '<think>\nA cat.\n</think>\n\n{"kind": "cat", "age": 2}',
        '{"kind": "dog", "age": 1}',
    ):
        matcher = compiled.constraint().matcher
        assert matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)), text
        assert matcher.is_accepting()
    stray = compiled.constraint().matcher
    assert not stray.consume_tokens(tokenizer.encode("Sure! {", add_special_tokens=False))


def test_forced_tool_calls_the_named_tool(tokenizer) -> None:
    other = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    matcher = (
        _compiled(tokenizer, {"tools": [other, WEATHER], "tool_choice": named}).constraint().matcher
    )
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert matcher.consume_tokens(tokenizer.encode(good, add_special_tokens=False))
    assert matcher.is_accepting()
    fresh = (
        _compiled(tokenizer, {"tools": [other, WEATHER], "tool_choice": named}).constraint().matcher
    )
    bad = '<tool_call>\n{"name": "noop"'
    assert not fresh.consume_tokens(tokenizer.encode(bad, add_special_tokens=False))


def test_llama3_models_are_forced_into_their_own_json_call_format() -> None:
    llama = load_tokenizer(FIXTURES / "llama3.2")
    assert llama.tool_format == "llama3_json"
    compiled = _compiled(llama, {"tools": [WEATHER], "tool_choice": "required"})
    good = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    matcher = compiled.constraint().matcher
    assert matcher.consume_tokens(llama.encode(good, add_special_tokens=False))
    assert matcher.is_accepting()
    content, calls = parse_tool_calls(good, "llama3_json")
    assert content == "" and [c.name for c in calls if c.name] == ["get_weather"]
    # Hermes tags and plain text are no llama3 call.
    for bad in ('<tool_call>\n{"name": "get_weather"', "Sure, the weather"):
        fresh = compiled.constraint().matcher
        assert not fresh.consume_tokens(llama.encode(bad, add_special_tokens=False))


def test_strict_tool_under_auto_allows_text_then_a_valid_call(tokenizer) -> None:
    compiled = _compiled(tokenizer, {"tools": [WEATHER]})
    text = 'Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert compiled.constraint().matcher.consume_tokens(
        tokenizer.encode(text, add_special_tokens=False)
    )
    plain = compiled.constraint().matcher
    assert plain.consume_tokens(tokenizer.encode("Just text.", add_special_tokens=False))
    assert plain.is_accepting()
    wrong = 'x <tool_call>\n{"name": "get_weather", "arguments": {"town": "Oslo"}}'
    assert not compiled.constraint().matcher.consume_tokens(
        tokenizer.encode(wrong, add_special_tokens=False)
    )


def test_unsupported_schema_is_a_400_naming_it(tokenizer) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}
    with pytest.raises(InvalidRequest) as info:
        _compiled(
            tokenizer,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": bad},
                }
            },
        )
    assert info.value.param == "response_format" and "no-such-format" in info.value.message
    broken = {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nope"}}}
    with pytest.raises(InvalidRequest) as info:
        _compiled(tokenizer, {"tools": [broken], "tool_choice": "required"})
    assert info.value.param == "tools" and "/nope" in info.value.message


def test_compiled_grammars_are_cached(tokenizer) -> None:
    body = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}
    }
    first, second = _compiled(tokenizer, body), _compiled(tokenizer, body)
    assert first._template is second._template
    assert first.constraint().matcher is not second.constraint().matcher


def test_logit_bias_and_min_tokens() -> None:
    params = [
        SamplingParams(logit_bias={3: 100.0, 4: -100.0}, min_tokens=2, stop_token_ids=[7]),
        SamplingParams(),
    ]
    logits = torch.zeros(2, 10)
    batch = SamplingBatch.build(
        params,
        [[1], [1]],
        [None, None],
        "cpu",
        prompt_lens=[1, 1],
        stop_ids=[frozenset({7}), frozenset({7})],
    )
    out = batch.adjust.apply(logits)
    assert out[0, 3] == 100.0 and out[0, 4] == -100.0 and out[0, 7] == float("-inf")
    assert torch.equal(out[1], logits[1])
    assert Sampler().sample(logits, batch).token_ids[0] == 3
    batch.adjust.accept([3, 0])
    batch.adjust.accept([3, 0])
    assert batch.adjust.apply(logits)[0, 7] == 0.0  # two tokens out: EOS allowed again


def test_top_p_zero_is_greedy() -> None:
    assert SamplingParams(top_p=0.0, temperature=1.0).greedy
