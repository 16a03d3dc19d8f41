"""The Anthropic API end to end: the official SDK and the real Claude Code CLI, through a real
`cortex serve`, against a real `cortex neuron` serving a tiny Qwen3 model (40960-token context) whose
greedy answer is fixed (tiny_model.py): `<think>Pondering</think>` when thinking is on, then
"Hello from the tiny model." and EOS."""

from __future__ import annotations

import json
import re
import urllib.request

import anthropic
import pytest

from cortex.api import translate
from tests.anthropic.claude_cli import run_claude
from tests.anthropic.golden import CLAUDE_CODE, load_request
from tests.support.replying_model import CONTEXT, MODEL, REASONING, REPLY, replying_stack

KEY = "sk-e2e"
pytestmark = pytest.mark.slow


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(neuron URL, gateway URL): the replying model behind `cortex serve` with an API key."""
    models = tmp_path_factory.mktemp("models")
    with replying_stack(models, f'api_keys = ["{KEY}"]') as (neuron, gateway):
        yield neuron.url, gateway.url


@pytest.fixture
def client(stack):
    return anthropic.Anthropic(base_url=stack[1], api_key=KEY, max_retries=0)


def test_text(client):
    message = client.messages.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "say hi"}]
    )
    assert [(b.type, b.text) for b in message.content] == [("text", REPLY)]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def test_stream_with_thinking(client):
    with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "think, then say hi"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == REASONING and final.content[0].signature == ""
    assert final.content[1].text == REPLY
    assert final.stop_reason == "end_turn"
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    # message_start already has the whole prompt's length (the cache split comes at the end).
    prompt = events[0].message.usage.input_tokens
    assert prompt == final.usage.input_tokens + final.usage.cache_read_input_tokens > 0


def test_tool_result_round_trip(client):
    tools = [
        {
            "name": "get_time",
            "description": "The time",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]
    history = [
        {"role": "user", "content": "what time is it?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"}],
        },
    ]
    message = client.messages.create(model=MODEL, max_tokens=200, messages=history, tools=tools)
    assert message.content[0].text == REPLY and message.stop_reason == "end_turn"
    without = client.messages.count_tokens(model=MODEL, messages=history[:1], tools=tools)
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > without.input_tokens


def test_stop_sequence(client):
    request = {
        "model": MODEL,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": ["nope", " tiny"],
    }
    message = client.messages.create(**request)
    assert message.content[0].text == "Hello from the"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " tiny")
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "Hello from the"
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", " tiny")


def test_count_tokens_equals_the_neuron(client, stack):
    body = load_request(CLAUDE_CODE / "requests/14-bare-mode.json")
    body["model"] = MODEL
    counted = client.messages.count_tokens(
        model=MODEL,
        system=body["system"],
        messages=body["messages"],
        tools=body["tools"],
        thinking=body["thinking"],
    )
    expected = _post(stack[0] + "/tokenize", translate.to_openai_tokenize(body))["count"]
    assert counted.input_tokens == expected > 500


def test_prefix_cache_shared_across_conversations(client):
    body = load_request(CLAUDE_CODE / "requests/14-bare-mode.json")
    usages = []
    for hexes, prompt in (("123", "say hi"), ("0cf", "run echo hello-from-tool")):
        system = [dict(block) for block in body["system"]]
        system[0]["text"] = system[0]["text"].replace("2.1.197.123", f"2.1.197.{hexes}")
        messages = [
            {
                "role": "user",
                "content": [body["messages"][0]["content"][0], {"type": "text", "text": prompt}],
            }
        ]
        message = client.messages.create(
            model=MODEL, max_tokens=200, system=system, messages=messages, tools=body["tools"]
        )
        usages.append(message.usage)
    assert usages[1].cache_read_input_tokens > 500
    assert usages[1].input_tokens < usages[0].input_tokens


def test_errors(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi " * 42000}]
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert re.fullmatch(
        rf"prompt is too long: \d+ tokens > {CONTEXT} maximum", info.value.body["error"]["message"]
    )
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )


def test_claude_code_cli(claude, stack, tmp_path):
    """Two conversations in the same directory: both finish, the second reads the first's
    ~18k-token system + tools prefix from the prefix cache (billing header dropped)."""
    home = tmp_path / "home"
    home.mkdir()
    results = []
    for prompt in ("say hi", "say hello"):
        code, result, stderr = run_claude(
            claude, stack[1], MODEL, prompt, home=home, cwd=tmp_path, api_key=KEY, timeout=500
        )
        assert code == 0, (result, stderr)
        assert result["is_error"] is False and result["result"] == REPLY
        results.append(result)
    first, second = (r["usage"] for r in results)
    assert first["input_tokens"] + first["cache_read_input_tokens"] > 10000
    assert second["cache_read_input_tokens"] > 10000
