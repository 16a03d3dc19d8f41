"""OpenAI chat answers and stream chunks -> Anthropic Messages and events."""

from __future__ import annotations

from typing import Any

import anthropic.types
import pydantic
import pytest

from cortex.api import anthropic as wire
from cortex.api import translate
from cortex.api.anthropic import StreamTranslator
from cortex.api.sse import event as sse_event
from cortex.errors import Unavailable, UpstreamError
from tests.anthropic.golden import response_events, sse_events

EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 7,
    "total_tokens": 107,
    "prompt_tokens_details": {"cached_tokens": 64},
}


def completion(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": "qwen3-8b",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": USAGE,
    }


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if finish is not None and extra.get("stop_reason") is not None:
        choices[0]["stop_reason"] = extra.pop("stop_reason")
    return {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "choices": choices, **extra}


def tool_fragments(name: str, arguments: str, size: int = 16, index: int = 0) -> list[dict]:
    first = {
        "index": index,
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    return [chunk({"tool_calls": [first]})] + [
        chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]}) for p in pieces
    ]


def run(chunks: list[dict], **options: Any) -> list[dict[str, Any]]:
    """Feed chunks, then finish; every event must be a valid Anthropic stream event."""
    translator = StreamTranslator("qwen3-8b", **options)
    events = []
    for c in chunks:
        events += translator.feed(c)
    events += translator.finish()
    for event in events:
        EVENT.validate_python(event)
    # The bytes on the wire parse back to the same events.
    assert sse_events(b"".join(sse_event(e["type"], e) for e in events)) == events
    return events


def shape(events: list[dict[str, Any]]) -> list[tuple]:
    """Event types with block/delta kinds (pings and signatures left out)."""
    out = []
    for e in events:
        if e["type"] == "ping":
            continue
        if e["type"] == "content_block_start":
            out.append((e["type"], e["index"], e["content_block"]["type"]))
        elif e["type"] == "content_block_delta":
            if e["delta"]["type"] == "signature_delta":
                continue
            item = (e["type"], e["index"], e["delta"]["type"])
            if not out or out[-1] != item:
                out.append(item)
        elif e["type"] == "message_delta":
            out.append((e["type"], e["delta"]["stop_reason"]))
        else:
            out.append((e["type"],))
    return out


def text_of(events: list[dict[str, Any]], kind: str, field: str) -> str:
    return "".join(
        e["delta"][field]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == kind
    )


# -- non-streaming --------------------------------------------------------------------------------


def test_text_message_and_usage():
    message = translate.to_anthropic_message(
        completion(
            {"role": "assistant", "content": "Hi from qwen.", "reasoning_content": None}, "stop"
        ),
        model="qwen3-8b",
    )
    anthropic.types.Message.model_validate(message)
    assert message == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "qwen3-8b",
        "content": [{"type": "text", "text": "Hi from qwen."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 36,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 64,
            "output_tokens": 7,
        },
    }


def test_thinking_and_tool_use_message():
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "Bash", "arguments": '{"command": "ls"}'},
    }
    reply = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I should list.",
        "tool_calls": [call],
    }
    message = translate.to_anthropic_message(completion(reply, "tool_calls"), model="m")
    anthropic.types.Message.model_validate(message)
    assert message["content"] == [
        {"type": "thinking", "thinking": "I should list.", "signature": ""},
        {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_tool_arguments_that_are_not_an_object_are_kept():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}
    block = translate.tool_use_block(call)
    assert block["input"] == {"arguments": "not json"}


@pytest.mark.parametrize(
    ("finish", "matched", "stop", "expected"),
    [
        ("stop", None, [], ("end_turn", None)),
        ("length", None, [], ("max_tokens", None)),
        ("stop", "END", ["END"], ("stop_sequence", "END")),
        ("stop", None, ["END"], ("end_turn", None)),
        ("stop", 151645, ["END"], ("end_turn", None)),
        ("content_filter", None, [], ("refusal", None)),
    ],
)
def test_stop_reasons(finish, matched, stop, expected):
    reply = completion({"role": "assistant", "content": "x"}, finish, stop_reason=matched)
    message = translate.to_anthropic_message(reply, model="m", stop_sequences=stop)
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def test_no_choices_is_an_upstream_error():
    with pytest.raises(UpstreamError):
        translate.to_anthropic_message({"choices": []}, model="m")


def test_captured_nonstream_message_has_our_shape():
    import json

    from tests.anthropic.golden import CLAUDE_CODE

    captured = json.loads((CLAUDE_CODE / "responses/nonstream-message.json").read_text())
    ours = translate.to_anthropic_message(
        completion({"role": "assistant", "content": "Hi"}, "stop"), model="qwen3-8b"
    )
    assert list(ours) == list(captured)
    assert list(ours["usage"]) == list(captured["usage"])


# -- streaming ------------------------------------------------------------------------------------


def test_text_stream_matches_the_captured_sequence():
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi"}),
        chunk({"content": " from"}),
        chunk({"content": " qwen."}),
        chunk({}, "stop"),
        chunk(None, usage=USAGE),
    ]
    events = run(chunks)
    assert shape(events) == shape(response_events("text-stream.sse"))
    assert text_of(events, "text_delta", "text") == "Hi from qwen."
    assert events[0]["message"]["usage"]["output_tokens"] == 0
    assert events[-2]["usage"] == wire.usage(USAGE)


def test_thinking_then_tool_use_matches_the_captured_sequence():
    arguments = '{"command": "echo hello-from-tool", "description": "echo"}'
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "I should "}),
        chunk({"reasoning_content": "run echo."}),
        *tool_fragments("Bash", arguments),
        chunk({}, "tool_calls"),
        chunk(None, usage=USAGE),
    ]
    events = run(chunks)
    assert shape(events) == shape(response_events("thinking-then-tool-use-stream.sse"))
    assert shape(events) == shape(
        response_events("thinking-with-signature-then-tool-use-stream.sse")
    )
    assert text_of(events, "thinking_delta", "thinking") == "I should run echo."
    assert text_of(events, "input_json_delta", "partial_json") == arguments
    start = next(e for e in events if e["type"] == "content_block_start" and e["index"] == 1)
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_0",
        "name": "Bash",
        "input": {},
    }
    # Anthropic ends a thinking block with its signature, just before content_block_stop.
    stop_at = events.index({"type": "content_block_stop", "index": 0})
    assert events[stop_at - 1]["delta"] == {"type": "signature_delta", "signature": ""}


def test_tool_use_only_stream_matches_the_captured_sequence():
    events = run([*tool_fragments("Bash", '{"command": "ls"}'), chunk({}, "tool_calls")])
    assert shape(events) == shape(response_events("tool-use-stream.sse"))


def test_text_then_two_tool_calls_interleaved_kinds():
    chunks = [
        chunk({"content": "Let me look."}),
        *tool_fragments("Read", '{"file_path": "/a"}', index=0),
        *tool_fragments("Read", '{"file_path": "/b"}', index=1),
        chunk({}, "tool_calls"),
    ]
    events = run(chunks)
    assert [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"] == [
        "text",
        "tool_use",
        "tool_use",
    ]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_tool_name_arriving_late_is_buffered():
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ": 1}"}}]}),
        chunk({}, "tool_calls"),
    ]
    events = run(chunks)
    assert text_of(events, "input_json_delta", "partial_json") == '{"a": 1}'


def test_stop_sequence_and_max_tokens_in_stream():
    events = run(
        [chunk({"content": "a"}), chunk({}, "stop", stop_reason="END")], stop_sequences=["END"]
    )
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    events = run([chunk({"content": "Truncated"}), chunk({}, "length")])
    assert shape(events) == shape(response_events("max-tokens-stream.sse"))


def test_empty_answer_matches_the_captured_sequence():
    events = run([chunk({"role": "assistant", "content": ""}), chunk({}, "stop")])
    assert shape(events) == shape(response_events("empty-content-stream.sse"))


def test_usage_unknown_counts_deltas():
    events = run([chunk({"content": "a"}), chunk({"content": "b"}), chunk({}, "stop")])
    assert events[-2]["usage"]["output_tokens"] == 2


def test_ping_and_start_come_once_and_first():
    translator = StreamTranslator("m")
    first = translator.ping()
    assert [e["type"] for e in first] == ["message_start", "ping"]
    assert translator.ping() == [{"type": "ping"}]
    assert translator.feed(chunk({"content": "x"}))[0]["type"] == "content_block_start"


def test_cut_stream_raises_then_fails_with_an_error_event():
    translator = StreamTranslator("m")
    translator.feed(chunk({"content": "Recovered"}))
    with pytest.raises(UpstreamError) as info:
        translator.finish()
    events = translator.fail(info.value)
    assert events == [
        {"type": "error", "error": {"type": "api_error", "message": info.value.message}}
    ]
    overloaded = translator.fail(Unavailable("Overloaded"))
    assert overloaded == response_events("cut-with-error-event-stream.sse")[-1:]


def test_tool_call_resumed_after_another_block_is_refused():
    translator = StreamTranslator("m")
    for c in tool_fragments("a", "{}", index=0) + tool_fragments("b", "{}", index=1):
        translator.feed(c)
    with pytest.raises(UpstreamError):
        translator.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "x"}}]}))
