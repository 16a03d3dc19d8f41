"""The Responses API end to end: the official openai SDK and the real Codex CLI, through a real
`cortex serve`, against a real `cortex neuron` serving the tiny scripted Qwen3 model of the
Anthropic tests (40960-token context): with thinking on it answers `<think>Pondering</think>`
then "Hello from the tiny model." and EOS; with thinking off only the reply."""

from __future__ import annotations

import urllib.request

import openai
import pytest

from tests.responses.codex_cli import run_codex
from tests.support.replying_model import MODEL, REASONING, REPLY, replying_stack

KEY = "sk-e2e"
OTHER_KEY = "sk-e2e-other"
pytestmark = pytest.mark.slow
TOOLS = [
    {
        "type": "function",
        "name": "get_time",
        "description": "The time",
        "parameters": {"type": "object", "properties": {}},
    },
    {"type": "web_search"},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(gateway process, state dir): the replying model behind `cortex serve` with two API keys
    and its own state dir."""
    models = tmp_path_factory.mktemp("models")
    state = tmp_path_factory.mktemp("state")
    section = f'api_keys = ["{KEY}", "{OTHER_KEY}"]\nstate_dir = "{state}"'
    with replying_stack(models, section) as (_, gateway):
        yield gateway, state


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key=KEY, max_retries=0)


def test_create_text(client):
    response = client.responses.create(model=MODEL, input="say hi")
    assert response.status == "completed" and response.object == "response"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == REASONING
    assert response.output_text == REPLY
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens >= 0


def test_stream_text(client):
    with client.responses.stream(
        model=MODEL,
        input=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        reasoning={"effort": "none"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == REPLY and [i.type for i in final.output] == ["message"]
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_function_tool_round_trip(client):
    history = [
        {"role": "user", "content": "what time is it?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "12:00"},
    ]
    plain = client.responses.create(model=MODEL, input=history[:1], tools=TOOLS)
    response = client.responses.create(model=MODEL, input=history, tools=TOOLS)
    assert response.output_text == REPLY
    assert response.usage.input_tokens > plain.usage.input_tokens
    with client.responses.stream(model=MODEL, input=history, tools=TOOLS) as stream:
        assert stream.get_final_response().output_text == REPLY


# Long enough to fill whole KV blocks, which is what the prefix cache shares.
OPENING = [
    {"role": "developer", "content": "You are a helpful assistant. " * 20},
    {"role": "user", "content": "say hi"},
]


def test_previous_response_id_and_stored_responses(client, stack):
    first = client.responses.create(model=MODEL, input=OPENING, reasoning={"effort": "none"})
    second = client.responses.create(
        model=MODEL,
        input="say it again",
        previous_response_id=first.id,
        reasoning={"effort": "none"},
    )
    assert second.previous_response_id == first.id and second.output_text == REPLY
    # The second prompt holds the first turn: longer, and its start came from the prefix cache.
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    assert client.responses.retrieve(first.id).output_text == REPLY
    items = client.responses.input_items.list(second.id)
    assert [item.content[0].text for item in items.data] == ["say it again"]
    other = openai.OpenAI(base_url=stack[0].url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    assert (stack[1] / "responses.sqlite3").is_file()


def test_streamed_conversation(client):
    with client.responses.stream(model=MODEL, input=OPENING) as stream:
        first = stream.get_final_response()
    with client.responses.stream(
        model=MODEL, input="again", previous_response_id=first.id
    ) as stream:
        second = stream.get_final_response()
    assert second.output_text == REPLY
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_store_false(client):
    response = client.responses.create(model=MODEL, input="say hi", store=False)
    assert response.output_text == REPLY and response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="again", previous_response_id=response.id)
    assert info.value.body["code"] == "previous_response_not_found"


def test_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi " * 42000)
    assert info.value.body["code"] == "context_length_exceeded"
    assert info.value.body["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")


def test_metrics_count_responses(client, stack):
    client.responses.create(model=MODEL, input="say hi", store=False)
    with urllib.request.urlopen(stack[0].metrics_url, timeout=30) as response:
        text = response.read().decode()
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("cortex_requests_total{") and 'api="responses"' in line
    ]
    assert any('status="200"' in line and f'model="{MODEL}"' in line for line in counted)
    assert any('status="404"' in line for line in counted)  # GET of a deleted response


def test_codex_plain_turn(codex, stack, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_codex(
        codex, stack[0].url, MODEL, "Say hi", home=tmp_path / "home", cwd=work, api_key=KEY
    )
    assert result.returncode == 0, (result.stdout, result.stderr[-3000:])
    assert result.stdout.strip() == REPLY
