"""TextStream: stop strings, reasoning split and tool calls, streamed and assembled."""

from __future__ import annotations

import json
import random

import pytest

from cortex.neuron.text.parsers import (
    ReasoningSplitter,
    StopMatcher,
    parse_tool_calls,
    split_reasoning,
)
from cortex.neuron.text.textstream import TextStream, assemble
from cortex.neuron.text.tokenizer import Tokenizer
from tests.conftest import FIXTURES

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def qwen(load_tokenizer):
    return load_tokenizer("qwen3")


@pytest.fixture(scope="module")
def llama(load_tokenizer):
    return load_tokenizer("llama3.2")


def run(tok, prompt, ids, *, seed=None, finish="stop", **kwargs):
    """Stream `ids` (one at a time, or in random chunks with `seed`); return the stream and
    every delta, each checked to hold no tag or partial state."""
    stream = TextStream(tok, prompt, **kwargs)
    rng = random.Random(seed)
    deltas, i = [], 0
    while i < len(ids) and not stream.stopped:
        n = rng.randint(1, 4) if seed is not None else 1
        deltas += stream.push(ids[i : i + n])
        i += n
    deltas += stream.finish(finish)
    assert assemble(deltas, finish) == stream.result()
    return stream, deltas


def output(tok, text):
    return tok.encode(text, add_special_tokens=False) + [tok.eos_token_ids[0]]


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_stop_strings_cut_exactly(qwen, seed):
    prompt = qwen.encode_chat(USER)
    text = "Hello world 🙂, this is the END of it. END again"
    for stops, expected, matched in [
        (["END"], "Hello world 🙂, this is the ", "END"),
        (["o wor"], "Hell", "o wor"),  # across a token boundary
        (["🙂,"], "Hello world ", "🙂,"),  # across a multi-byte character's tokens
        (["is the E", "world"], "Hello ", "world"),  # the earliest match wins
        (["Hello"], "", "Hello"),
        (["NOPE", "it. EN!"], text, None),  # a started stop string that never completes is text
    ]:
        stream, deltas = run(qwen, prompt, output(qwen, text), seed=seed, stop=stops)
        assert stream.result().content == expected, stops
        assert stream.stopped == (expected != text)
        assert stream.stop_reason == matched
        assert all(d.kind == "content" for d in deltas)


@pytest.mark.parametrize("seed", [None, 1])
def test_stop_token_ids(qwen, seed):
    ids = qwen.encode("one two three four", add_special_tokens=False)
    three = qwen.encode(" three", add_special_tokens=False)
    assert len(three) == 1 and three[0] in ids
    eos = qwen.eos_token_ids[0]
    # The stop token ends the answer, is not text, and is reported; text held back before it
    # (a stop string's possible beginning) is released.
    stream, _ = run(qwen, [], ids, seed=seed, stop=[" two!"], stop_token_ids=three)
    assert (stream.result().content, stream.stop_reason) == ("one two", three[0])
    # EOS ends it with no stop reason, even when the request lists it as a stop token.
    stream, _ = run(qwen, [], output(qwen, "one"), seed=seed, stop_token_ids=[eos])
    assert (stream.result().content, stream.stop_reason) == ("one", None)
    # A stop string that matches before the stop token comes is the reason.
    stream, _ = run(qwen, [], ids, seed=seed, stop=["two"], stop_token_ids=three)
    assert (stream.result().content, stream.stop_reason) == ("one ", "two")


def test_stop_never_leaks_while_pending(qwen):
    ids = qwen.encode("abc STOP def", add_special_tokens=False)
    stream = TextStream(qwen, [], stop=["STOP"])
    emitted = ""
    for i in ids:
        emitted += "".join(d.text for d in stream.push([i]))
        assert "S" not in emitted
    assert emitted == "abc " and stream.stopped
    assert stream.push(qwen.encode(" more")) == [] and stream.finish("stop") == []


def test_stop_matcher_holds_only_a_possible_beginning():
    matcher = StopMatcher(["<end>", "xyz"])
    assert matcher.feed("abc <e") == "abc "
    assert matcher.feed("nx") == "<en"
    assert matcher.feed("y") == ""
    assert matcher.finish() == "xy"
    assert matcher.matched is None and not matcher.stopped
    assert matcher.feed("a xyz b <end>") == "a "
    assert matcher.matched == "xyz" and matcher.stopped


@pytest.mark.parametrize("seed", [None, 5])
def test_reasoning_split(qwen, seed):
    prompt = qwen.encode_chat(USER, enable_thinking=True)
    ids = output(qwen, "<think>\nFirst, 2+3.\nThat is 5.\n</think>\n\nThe answer is **5**.")
    stream, deltas = run(qwen, prompt, ids, seed=seed)
    result = stream.result()
    assert result.reasoning_content == "First, 2+3.\nThat is 5."
    assert result.content == "The answer is **5**."
    kinds = [d.kind for d in deltas]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # reasoning first, then content
    assert not any("<think>" in d.text or "</think>" in d.text for d in deltas)


def test_reasoning_opened_by_the_template(qwen):
    template = qwen.chat_template + "{%- if add_generation_prompt %}{{- '<think>\\n' }}{%- endif %}"
    opened = Tokenizer(qwen.hf, template, eos_token="<|im_end|>")
    prompt = opened.encode_chat(USER)
    assert opened.decode(prompt[-2:], skip_special_tokens=False).endswith("<think>\n")
    stream, _ = run(qwen, prompt, output(qwen, "Thinking hard.\n</think>\n\nDone."))
    assert stream.result().reasoning_content == "Thinking hard."
    assert stream.result().content == "Done."
    # Cut off while thinking: everything is reasoning.
    stream, _ = run(
        qwen, prompt, qwen.encode("Still thinking", add_special_tokens=False), finish="length"
    )
    assert stream.result().content == "" and stream.result().reasoning_content == "Still thinking"
    assert stream.result().finish_reason == "length"


def test_thinking_disabled_and_stray_tags(qwen):
    prompt = qwen.encode_chat(USER, enable_thinking=False)
    stream, _ = run(qwen, prompt, output(qwen, "Just content."))
    assert stream.result().content == "Just content."
    assert stream.result().reasoning_content is None
    stream, _ = run(qwen, prompt, output(qwen, "Sure. <think>secret</think> Done. </think>!"))
    assert stream.result().content == "Sure. Done. !"
    assert stream.result().reasoning_content == "secret"
    stream, _ = run(qwen, prompt, output(qwen, "<think>x</think>y"), reasoning=False)
    assert stream.result().content == "<think>x</think>y"


def test_split_reasoning_text():
    assert split_reasoning("  <think>\na\n</think>\n\nb") == ("a", "b")
    assert split_reasoning("a\n</think>b", in_reasoning=True) == ("a", "b")
    assert split_reasoning("no tags <thi") == ("", "no tags <thi")
    splitter = ReasoningSplitter()
    assert splitter.feed("  <thi") == [] and splitter.feed("nk>r") == [("reasoning", "r")]


TWO_CALLS = (
    "Let me check. <tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2]}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "get_time", "arguments": {}}\n'
    "</tool_call>"
)


@pytest.mark.parametrize("seed", [None, 7, 8])
def test_hermes_tool_calls_streamed(qwen, seed):
    prompt = qwen.encode_chat(USER, enable_thinking=False)
    stream, deltas = run(qwen, prompt, output(qwen, TWO_CALLS), seed=seed, tools=True)
    result = stream.result()
    assert result.content == "Let me check."
    assert result.finish_reason == stream.finish_reason == "tool_calls"
    assert [c["function"]["name"] for c in result.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(result.tool_calls[0]["function"]["arguments"]) == {
        "city": "Zürich",
        "days": [1, 2],
    }
    assert result.tool_calls[1]["function"]["arguments"] == "{}"
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in result.tool_calls)
    starts = [d for d in deltas if d.kind == "tool_call" and d.name]
    assert [(d.index, d.arguments) for d in starts] == [(0, ""), (1, "")]
    assert not any("tool_call>" in d.text for d in deltas)
    assert parse_tool_calls(TWO_CALLS)[0] == "Let me check."


def test_tool_calls_after_reasoning(qwen):
    prompt = qwen.encode_chat(USER)
    text = "<think>\nUse the tool.\n</think>\n\n" + TWO_CALLS.removeprefix("Let me check. ")
    stream, _ = run(qwen, prompt, output(qwen, text), tools=True)
    result = stream.result()
    assert result.reasoning_content == "Use the tool." and result.content is None
    assert len(result.tool_calls) == 2


@pytest.mark.parametrize(
    "text",
    [
        'Hi <tool_call>\n{"name": "f", "arguments": {"a": }\n</tool_call> bye',
        "<tool_call>\nnot json at all\n</tool_call>",
        '<tool_call>\n{"arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}',  # cut off mid-call
        "I use <tool_call tags> loosely <tool_",
    ],
)
def test_malformed_tool_calls_stay_content(qwen, text):
    stream, _ = run(qwen, [], output(qwen, text), tools=True, reasoning=False, finish="length")
    assert stream.result().content == text
    assert stream.result().tool_calls == [] and stream.finish_reason == "length"
    assert parse_tool_calls(text) == (text, [])


def test_complete_call_without_closing_tag(qwen):
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
    stream, _ = run(qwen, [], output(qwen, text), tools=True)
    assert stream.result().tool_calls[0]["function"]["arguments"] == '{"a": 1}'


def test_no_tools_means_no_parsing(qwen):
    stream, _ = run(qwen, [], output(qwen, TWO_CALLS), reasoning=False)
    assert stream.result().content == TWO_CALLS and stream.finish_reason == "stop"


def llama_ids(llama, text, tag=False):
    return ([128010] if tag else []) + output(llama, text)


@pytest.mark.parametrize("tag", [False, True])
def test_llama3_json_tool_calls(llama, tag):
    prompt = llama.encode_chat(USER, tools=[], date_string="1 Jan 2025")
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    stream, deltas = run(llama, prompt, llama_ids(llama, text, tag), tools=True)
    result = stream.result()
    assert result.content is None and result.finish_reason == "tool_calls"
    assert result.tool_calls[0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    two = text + '; {"name": "get_time", "arguments": {}}'
    stream, _ = run(llama, prompt, llama_ids(llama, two, tag), tools=True)
    assert [c["function"]["name"] for c in stream.result().tool_calls] == [
        "get_weather",
        "get_time",
    ]


def test_llama3_plain_answers_stream_and_json_that_is_no_call(llama):
    stream = TextStream(llama, [], tools=True)
    first = stream.push(llama.encode("Paris is sunny today.", add_special_tokens=False))
    assert first and first[0].text.startswith("Paris")
    not_a_call = '{"city": "Paris"}'
    stream, _ = run(llama, [], llama_ids(llama, not_a_call, tag=True), tools=True)
    assert stream.result().content == not_a_call and stream.finish_reason == "stop"
    stream, _ = run(llama, [], llama_ids(llama, "<|python_tag|>", tag=False), reasoning=False)
    assert "python_tag" not in (stream.result().content or "")


def test_completion_text_of_the_golden_stories(load_tokenizer):
    """Streamed completion text continues the prompt: prompt + text is the golden full text."""
    tok = load_tokenizer("stories260k")
    golden = json.loads((FIXTURES / "stories260k" / "expected" / "greedy.json").read_text())
    for case in golden["cases"]:
        stream, _ = run(tok, case["prompt_ids"], case["generated_ids"], reasoning=False)
        text = stream.result().content
        assert case["prompt"] + text == case.get("full_text", case["generated_text"])
        assert text.strip() == case["generated_text"].strip()
