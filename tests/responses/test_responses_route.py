"""`/v1/responses` on the in-process gateway against the scripted fake neuron: what the neuron
is sent, the answer's shape, streams, stored responses and their keys, and errors."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from cortex.api.sse import SSEParser
from tests.conftest import FIXTURES
from tests.responses.conftest import FAKE_MODEL, KEY, OTHER_KEY, Reply

AUTH = {"Authorization": f"Bearer {KEY}"}


def post(stack, body: dict, key: str = KEY) -> requests.Response:
    return requests.post(
        f"{stack.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def events(response: requests.Response) -> list[dict]:
    """Named SSE events, each `event:` name checked against its `type`."""
    out = []
    for parsed in SSEParser().feed(response.content):
        if parsed.data is not None:
            event = parsed.json()
            assert parsed.event == event["type"]
            out.append(event)
    return out


@pytest.fixture
def client(fake_stack):
    return openai.OpenAI(base_url=fake_stack.url + "/v1", api_key=KEY, max_retries=0)


def test_codex_request_streams_and_reports_ignored_tools(fake_stack):
    body = json.loads((FIXTURES / "codex/requests/01-plain-turn.json").read_text())
    body["model"] = FAKE_MODEL
    answer = post(fake_stack, body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert answer.headers["x-cortex-ignored"] == "tools[4] (namespace), tools[8] (web_search)"
    assert answer.headers["x-cortex-neuron"] == fake_stack.neuron.name
    got = events(answer)
    assert got[-1]["type"] == "response.completed"
    assert got[-1]["response"]["output"][0]["content"][0]["text"] == "Hi from the fake neuron."
    assert got[-1]["response"]["usage"]["input_tokens"] == 120
    sent = fake_stack.neuron.chats[0]
    assert sent["stream"] is True and sent["model"] == FAKE_MODEL
    # store: false -> nothing written, not even the database.
    assert not fake_stack.state_dir.exists()


def test_stored_response_retrieve_items_delete_and_keys(fake_stack, client):
    fake_stack.neuron.replies.append(Reply(content="first", reasoning="hm"))
    first = client.responses.create(
        model=FAKE_MODEL,
        input=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "user", "content": "three"},
        ],
        metadata={"k": "v"},
    )
    assert first.output_text == "first" and first.metadata == {"k": "v"}
    again = client.responses.retrieve(first.id)
    assert again.model_dump() == first.model_dump()
    items = client.responses.input_items.list(first.id, limit=2)
    assert [i.content[0].text for i in items.data] == ["three", "two"] and items.has_more
    rest = client.responses.input_items.list(first.id, order="asc", after=items.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["three"]
    other = openai.OpenAI(base_url=fake_stack.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as info:
        other.responses.create(model=FAKE_MODEL, input="x", previous_response_id=first.id)
    assert info.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(first.id)

    second = client.responses.create(model=FAKE_MODEL, input="four", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    messages = fake_stack.neuron.chats[-1]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "one"),
        ("user", "two"),
        ("user", "three"),
        ("assistant", "first"),
        ("user", "four"),
    ]
    assert messages[3]["reasoning_content"] == "hm"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert requests.get(f"{fake_stack.url}/v1/responses/{second.id}", timeout=10).status_code == 401


def test_sdk_stream_function_call_round_trip(fake_stack, client):
    fake_stack.neuron.replies += [
        Reply(content="", tool_calls=[("get_weather", {"city": "Paris"})]),
        Reply(content="Sunny."),
    ]
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    with client.responses.stream(model=FAKE_MODEL, input="weather?", tools=tools) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert "response.function_call_arguments.delta" in kinds
    assert fake_stack.neuron.chats[0]["tools"][0]["function"]["name"] == "get_weather"
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    with client.responses.stream(
        model=FAKE_MODEL, input=[output], tools=tools, previous_response_id=first.id
    ) as stream:
        assert stream.get_final_response().output_text == "Sunny."
    tool = fake_stack.neuron.chats[1]["messages"][-1]
    assert tool == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_errors(fake_stack, client):
    neuron = fake_stack.neuron
    neuron.replies.append(
        Reply(
            status=400,
            error_code="context_length_exceeded",
            content="prompt is too long: 9000 tokens > 8192 maximum",
        )
    )
    answer = post(fake_stack, {"model": FAKE_MODEL, "input": "x", "stream": True})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded",
        "input",
        "invalid_request_error",
    )
    assert error["message"] == "prompt is too long: 9000 tokens > 8192 maximum"
    neuron.replies += [Reply(status=503, error_code="unavailable", content="busy")] * 3
    answer = post(fake_stack, {"model": FAKE_MODEL, "input": "x"})
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
    answer = post(fake_stack, {"model": FAKE_MODEL, "input": "x", "max_output_tokens": "many"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_output_tokens"
    answer = post(fake_stack, {"model": "no-such-model", "input": "x"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    answer = requests.get(f"{fake_stack.url}/v1/responses/resp_nope", headers=AUTH, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "response_id"


def test_broken_stream_fails_in_band_and_is_not_stored(fake_stack):
    fake_stack.neuron.replies.append(Reply(content="cut short", cut=True))
    answer = post(fake_stack, {"model": FAKE_MODEL, "input": "x", "stream": True})
    got = events(answer)
    assert got[0]["type"] == "response.created"
    assert got[-1]["type"] == "response.failed"
    failed = got[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "upstream_error"
    lookup = requests.get(f"{fake_stack.url}/v1/responses/{failed['id']}", headers=AUTH, timeout=10)
    assert lookup.status_code == 404


def test_max_output_tokens_clamped_and_incomplete(fake_stack, client):
    fake_stack.neuron.replies.append(Reply(content="Hi", finish_reason="length"))
    response = client.responses.create(model=FAKE_MODEL, input="x", max_output_tokens=10**6)
    assert fake_stack.neuron.chats[0]["max_tokens"] == 8192  # the model's context
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
