"""The Responses event stream built from chat chunks (cortex.api.response_events), and the
whole Response from a chat completion (cortex.api.response_object)."""

from __future__ import annotations

import pytest

from cortex.api import openai, response_object
from cortex.api.response_events import ResponseStream, encode
from cortex.api.sse import SSEParser
from cortex.errors import UpstreamError

BODY = {"model": "m", "input": "hi"}


def chunk(delta: dict, finish: str | None = None) -> dict:
    return openai.chat_chunk("c", 0, "m", 0, delta, finish)


def run(chunks: list[dict]) -> tuple[ResponseStream, list[dict]]:
    stream = ResponseStream(response_object.skeleton(BODY, "m"))
    events = stream.start({"prompt_tokens": 5})
    for c in chunks:
        events += stream.feed(c)
    usage = openai.usage_chunk("chat", "c", 0, "m", openai.usage(10, 4, 8))
    events += stream.feed(usage)
    return stream, events + stream.finish()


def test_reasoning_then_text():
    stream, events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "hm"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
        ]
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final is stream.response and final["status"] == "completed"
    reasoning, message = final["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "hm"}]
    assert message["content"][0]["text"] == "Hello" and message["status"] == "completed"
    assert events[10]["item_id"] == message["id"] and events[10]["output_index"] == 1
    assert final["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 14,
    }


def test_tool_calls():
    _, events = run(
        [
            chunk({"tool_calls": [openai.tool_call_delta(0, "call_a", "f", "")]}),
            chunk({"tool_calls": [openai.tool_call_delta(0, None, None, '{"x":')]}),
            chunk({"tool_calls": [openai.tool_call_delta(0, None, None, " 1}")]}),
            chunk({"tool_calls": [openai.tool_call_delta(1, "call_b", "g", "{}")]}),
            chunk({}, "tool_calls"),
        ]
    )
    kinds = [e["type"] for e in events]
    assert kinds.count("response.function_call_arguments.done") == 2
    output = events[-1]["response"]["output"]
    assert [(i["type"], i["call_id"], i["name"], i["arguments"]) for i in output] == [
        ("function_call", "call_a", "f", '{"x": 1}'),
        ("function_call", "call_b", "g", "{}"),
    ]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"x": 1}' and done["name"] == "f"


def test_length_is_incomplete():
    _, events = run([chunk({"content": "Hi"}), chunk({}, "length")])
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_cut_stream_fails():
    stream = ResponseStream(response_object.skeleton(BODY, "m"))
    stream.feed(chunk({"content": "Hi"}))
    with pytest.raises(UpstreamError) as info:
        stream.finish()
    (failed,) = stream.fail(info.value)
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "upstream_error"


def test_encode_names_events_and_keeps_alive_with_comments():
    stream = ResponseStream(response_object.skeleton(BODY, "m"))
    raw = encode(stream.ping() + stream.ping())
    parsed = list(SSEParser().feed(raw))
    assert [p.event for p in parsed] == ["response.created", "response.in_progress", None, None]
    assert parsed[2].comment == "keep-alive"
    assert parsed[0].json()["type"] == "response.created"


def test_from_chat_completion():
    choice = openai.ChoiceResult(
        0,
        content="Hi",
        reasoning="hm",
        tool_calls=[
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
        finish_reason="tool_calls",
    )
    completion = openai.chat_response("c", 0, "m", [choice], openai.usage(3, 2, 0))
    body = {**BODY, "metadata": {"k": "v"}, "store": False}
    response = response_object.from_chat_completion(
        response_object.skeleton(body, "alias"), completion
    )
    assert response["status"] == "completed" and response["model"] == "alias"
    assert [i["type"] for i in response["output"]] == ["reasoning", "message", "function_call"]
    assert response["output"][2]["call_id"] == "call_1"
    assert response["metadata"] == {"k": "v"} and response["store"] is False
    assert response["usage"]["total_tokens"] == 5
