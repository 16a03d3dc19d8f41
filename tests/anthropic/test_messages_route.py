"""`/v1/messages` and `/v1/messages/count_tokens` on the real gateway, driven by the official
`anthropic` SDK, in front of a scripted neuron (tests/support/fake_neuron.py) that can
fail on cue."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import pytest

from cortex.api import translate
from cortex.config import ModelEntry
from tests.anthropic.golden import CLAUDE_CODE, load_request, sse_events
from tests.support.fake_neuron import GREETING, TOKEN_COUNT, Reply, fake_qwen
from tests.support.fake_neuron import QWEN_CONTEXT as MAX_CONTEXT
from tests.support.fake_neuron import QWEN_MODEL as MODEL
from tests.support.gateway_app import gateway_thread

KEY = "sk-test-123"
USER = [{"role": "user", "content": "say hi"}]


@pytest.fixture(scope="module")
def setup():
    """One fake neuron behind one gateway (with an API key) for the whole module."""
    neuron = fake_qwen()
    ghost = ModelEntry(id="ghost-model", neurons=["nowhere"])
    with gateway_thread([neuron], api_keys=[KEY], models=[ghost]) as url:
        yield neuron, url


@pytest.fixture
def neuron(setup):
    fake, _ = setup
    fake.replies.clear()
    fake.requests.clear()
    return fake


@pytest.fixture
def client(setup):
    return anthropic.Anthropic(base_url=setup[1], api_key=KEY, max_retries=0)


def raw_post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None):
    """POST without the SDK: (status, headers, body bytes)."""
    request = urllib.request.Request(url + path, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {"x-api-key": KEY}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_text_message(client, neuron):
    message = client.messages.create(
        model=MODEL,
        max_tokens=20000,
        system="be brief",
        messages=USER,
        extra_body={"temperature": 0.0, "top_k": 1},
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == GREETING
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 120 and message.usage.output_tokens == 7
    sent = neuron.chats[0]
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say hi"},
    ]
    assert sent["max_tokens"] == MAX_CONTEXT  # clamped to the model's context
    assert sent["temperature"] == 0.0 and "stream" not in sent


def test_stream_final_message_and_event_order(client, neuron):
    neuron.replies.append(
        Reply(content="Streaming works fine.", prompt_tokens=120, cached_tokens=100)
    )
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].text == "Streaming works fine."
    assert final.stop_reason == "end_turn"
    assert final.usage.cache_read_input_tokens == 100 and final.usage.input_tokens == 20
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    # message_start has the prompt length from the neuron's header; the cache split comes last.
    assert events[0].message.usage.input_tokens == 120
    assert neuron.chats[0]["stream"] is True


def test_sse_bytes_with_beta_query_and_headers(setup, neuron):
    _, url = setup
    body = json.dumps({"model": MODEL, "max_tokens": 50, "messages": USER, "stream": True})
    headers = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    status, response_headers, raw = raw_post(url, "/v1/messages?beta=true", body.encode(), headers)
    assert status == 200
    assert response_headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    types = [e["type"] for e in events]
    # The neuron's keep-alive comment (sent while "prefilling") became a ping after message_start.
    assert types[:2] == ["message_start", "ping"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_thinking_and_tool_use_round_trip(client, neuron):
    tools = [
        {
            "name": "Bash",
            "description": "Run a command",
            "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
        }
    ]
    neuron.replies.append(
        Reply(
            content="",
            reasoning="I should run echo.",
            tool_calls=[("Bash", {"command": "echo hi"})],
        )
    )
    with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "run echo hi"}],
        tools=tools,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        first = stream.get_final_message()
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.content[0].thinking == "I should run echo." and first.content[0].signature == ""
    call = first.content[1]
    assert (call.name, call.input) == ("Bash", {"command": "echo hi"})
    assert first.stop_reason == "tool_use"
    assert neuron.chats[0]["chat_template_kwargs"] == {"enable_thinking": True}

    neuron.replies.append(Reply(content="Done."))
    history = [
        {"role": "user", "content": "run echo hi"},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "hi"}],
        },
    ]
    second = client.messages.create(model=MODEL, max_tokens=100, messages=history, tools=tools)
    assert second.content[0].text == "Done."
    sent = neuron.chats[1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[1]["reasoning_content"] == "I should run echo."
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "hi"}


def test_stop_sequence(client, neuron):
    neuron.replies.append(Reply(content="one two", stop_reason="THREE"))
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, stop_sequences=["THREE"]
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "THREE")
    assert neuron.chats[0]["stop"] == ["THREE"]
    neuron.replies.append(Reply(content="one two", stop_reason="THREE"))
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=USER, stop_sequences=["THREE"]
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "THREE")


def test_count_tokens_from_the_neuron(client, neuron):
    body = load_request(CLAUDE_CODE / "requests/13-count-tokens-tools.json")
    counted = client.messages.count_tokens(
        model=body["model"].replace("qwen3-8b", MODEL),
        messages=body["messages"],
        tools=body["tools"],
    )
    assert neuron.bodies("/tokenize")[0] == translate.to_openai_tokenize({**body, "model": MODEL})
    assert counted.input_tokens == TOKEN_COUNT


def test_auth_bearer_x_api_key_and_head_root(setup, neuron):
    _, url = setup
    bearer = anthropic.Anthropic(base_url=url, auth_token=KEY, api_key=None, max_retries=0)
    assert bearer.messages.create(model=MODEL, max_tokens=10, messages=USER).content
    wrong = anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"
    head = urllib.request.Request(url + "/", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as response:
        assert response.status == 200


def test_invalid_request_envelope(setup, neuron):
    _, url = setup
    status, _, raw = raw_post(
        url, "/v1/messages", json.dumps({"model": MODEL, "messages": USER}).encode()
    )
    assert status == 400
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    status, _, raw = raw_post(url, "/v1/messages", b"{not json")
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert not neuron.chats


def test_errors_map_to_sdk_exceptions(client, neuron):
    too_long = "prompt is too long: 50000 tokens > 40960 maximum"
    neuron.replies.append(Reply(content=too_long, status=400, error_code="context_length_exceeded"))
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.body["error"] == {"type": "invalid_request_error", "message": too_long}

    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "not_found_error"

    with pytest.raises(anthropic.OverloadedError) as info:
        client.messages.create(model="ghost-model", max_tokens=10, messages=USER)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert int(info.value.response.headers["retry-after"]) >= 1

    neuron.replies.append(Reply(content="slow down", status=429, error_code="rate_limited"))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert int(info.value.response.headers["retry-after"]) >= 1

    # The neuron's own Retry-After is passed on, on a 429 and on a 503 (Anthropic's 529).
    for status, code, error in (
        (429, "rate_limited", anthropic.RateLimitError),
        (503, "shutting_down", anthropic.OverloadedError),
    ):
        later = Reply(
            content="later", status=status, error_code=code, headers={"Retry-After": "17"}
        )
        neuron.replies.append(later)
        with pytest.raises(error) as info:
            client.messages.create(model=MODEL, max_tokens=10, messages=USER)
        assert info.value.response.headers["retry-after"] == "17"

    neuron.replies.append(Reply(content="engine broke", status=500, error_code="engine_error"))
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "api_error"


def test_stream_cut_mid_way_ends_with_error_event(setup, neuron):
    _, url = setup
    neuron.replies.append(Reply(content="Recovered", cut=True))
    body = json.dumps({"model": MODEL, "max_tokens": 50, "messages": USER, "stream": True})
    status, _, raw = raw_post(url, "/v1/messages?beta=true", body.encode())
    assert status == 200
    events = sse_events(raw)
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert "message_stop" not in [e["type"] for e in events]


def test_pings_during_a_cold_load():
    with gateway_thread([fake_qwen(loaded=False, load_delay=2.5)]) as url:
        body = json.dumps({"model": MODEL, "max_tokens": 50, "messages": USER, "stream": True})
        status, _, raw = raw_post(url, "/v1/messages", body.encode(), {})
    assert status == 200
    types = [e["type"] for e in sse_events(raw)]
    assert types[0] == "message_start"
    first_block = types.index("content_block_start")
    assert types[1:first_block].count("ping") >= 3  # at once, then every second of the load
    assert types[-1] == "message_stop"
