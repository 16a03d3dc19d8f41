"""The neuron's pure parts without a server: OpenAI request parsing and shaping, SSE framing,
model ids and discovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cortex.api import openai, sse
from cortex.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from cortex.neuron.engine import devices
from cortex.neuron.generation import next_or_none
from cortex.neuron.registry import ModelRegistry, check_id
from tests.support.checkpoints import STORIES

HELLO = [{"role": "user", "content": "hi"}]


def test_parse_chat_fields() -> None:
    req = openai.parse_chat(
        {
            "model": "m",
            "messages": [{"role": "developer", "content": "be brief"}, *HELLO],
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": -1,
            "min_p": 0.1,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.1,
            "seed": 3,
            "stop": "END",
            "stop_token_ids": [5, 9],
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "chat_template_kwargs": {"enable_thinking": False},
            "logprobs": True,
            "top_logprobs": 2,
            "response_format": {"type": "json_object"},
            "some_future_field": {"x": 1},
        }
    )
    assert req.messages[0]["role"] == "system"
    assert req.max_tokens == 7
    assert req.sampling == {
        "temperature": 0.5,
        "top_p": 0.9,
        "min_p": 0.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.1,
        "top_k": 0,
    }
    assert (req.seed, req.stop, req.n, req.stream, req.include_usage) == (3, ["END"], 2, True, True)
    assert req.stop_token_ids == [5, 9]
    assert req.parse_tools and req.tools
    assert req.template_kwargs == {"enable_thinking": False}
    assert (req.logprobs, req.top_logprobs, req.response_schema) == (True, 2, {"type": "object"})


def test_tool_choice_none_hides_tools() -> None:
    req = openai.parse_chat(
        {
            "model": "m",
            "messages": HELLO,
            "tools": [{"function": {"name": "f"}}],
            "tool_choice": "none",
        }
    )
    assert req.tools is None and not req.parse_tools


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0]",
        ),
        ({"model": "m", "messages": HELLO, "n": 17}, "n"),
        ({"model": "m", "messages": HELLO, "seed": 1.5}, "seed"),
        ({"model": "m", "messages": HELLO, "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": HELLO, "stop": ["a", 1]}, "stop"),
        ({"model": "m", "messages": HELLO, "stop_token_ids": [1, "a"]}, "stop_token_ids"),
        ({"model": "m", "messages": HELLO, "stop_token_ids": 3}, "stop_token_ids"),
        ({"model": "m", "messages": HELLO, "tool_choice": 3}, "tool_choice"),
        ({"model": "m", "messages": HELLO, "stream_options": 1}, "stream_options"),
        ({"model": "m", "messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_parse_chat_rejects(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai.parse_chat(body)
    assert info.value.param == param


def test_parse_completion_prompts() -> None:
    assert openai.parse_completion({"model": "m", "prompt": "hi"}).prompt == "hi"
    assert openai.parse_completion({"model": "m", "prompt": [1, 2]}).prompt == [1, 2]
    assert openai.parse_completion({"model": "m", "prompt": ["hi"]}).prompt == "hi"
    assert openai.parse_completion({"model": "m", "prompt": [[5]]}).prompt == [5]
    batch = openai.parse_completion({"model": "m", "prompt": ["a", "b"], "n": 2})
    assert batch.prompts == ["a", "b"]
    assert openai.parse_completion({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    legacy = openai.parse_completion({"model": "m", "prompt": "x", "logprobs": 3})
    assert (legacy.logprobs, legacy.top_logprobs) == (True, 3)
    with pytest.raises(InvalidRequest):
        openai.parse_completion({"model": "m", "prompt": [True]})


def test_resolve_sampling_precedence_and_clamp() -> None:
    req = openai.parse_chat({"model": "m", "messages": HELLO, "top_p": 0.5, "max_tokens": 1000})
    defaults = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    fields = openai.resolve_sampling(req, defaults, prompt_tokens=90, max_context=100)
    assert fields["max_tokens"] == 10
    assert (fields["temperature"], fields["top_p"], fields["top_k"]) == (0.6, 0.5, 20)
    assert fields["repetition_penalty"] == 1.0
    greedy = openai.resolve_sampling(
        openai.parse_chat({"model": "m", "messages": HELLO}), {"do_sample": False}, 1, 100
    )
    assert greedy["temperature"] == 0.0 and greedy["max_tokens"] == 99
    with pytest.raises(ContextLengthExceeded) as info:
        openai.resolve_sampling(req, {}, prompt_tokens=101, max_context=100)
    assert info.value.message == "prompt is too long: 101 tokens > 100 maximum"


def test_response_shapes() -> None:
    choice = openai.ChoiceResult(index=0, content="", finish_reason="tool_calls")
    choice.tool_calls = [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    body = openai.chat_response("id", 1, "m", [choice], openai.usage(3, 2, 1))
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["refusal"] is None
    assert message["reasoning_content"] is None
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    assert body["choices"][0]["stop_reason"] is None
    chunk = openai.chat_chunk("id", 1, "m", 0, {"content": "x"})
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["logprobs"] is None
    assert "stop_reason" not in chunk["choices"][0]  # only with a finish_reason
    final = openai.chat_chunk("id", 1, "m", 0, {}, "stop", stop_reason="END")
    assert final["choices"][0]["stop_reason"] == "END"
    final = openai.completion_chunk("id", 1, "m", 0, "", "stop", stop_reason=7)
    assert final["choices"][0]["stop_reason"] == 7
    entry = openai.logprob_entry("é", -0.5, [("a", -1.0)])
    assert entry["bytes"] == [195, 169]
    legacy = openai.completion_logprobs([entry, entry], offset=2)
    assert legacy["text_offset"] == [2, 3] and legacy["top_logprobs"] == [{"a": -1.0}] * 2


def test_sse_framing_round_trip() -> None:
    stream = sse.comment("ping") + sse.data({"a": "b\nc"}) + sse.event("x", [1]) + sse.DONE
    parser = _split_events(stream)
    assert parser[0].comment == "ping"
    assert parser[1].json() == {"a": "b\nc"}
    assert (parser[2].event, parser[2].json()) == ("x", [1])
    assert parser[3].done


def _split_events(raw: bytes) -> list[sse.SSEEvent]:
    parser = sse.SSEParser()
    out: list[sse.SSEEvent] = []
    for i in range(0, len(raw), 3):  # byte-sized pieces: events cross chunk boundaries
        out += parser.feed(raw[i : i + 3])
    return out


@pytest.mark.parametrize(
    "bad", ["", "..", "a/../b", "/abs", "a//b", "a\\b", "nul\x00", "./a", "~/x", "C:x", 5, None]
)
def test_check_id_refuses(bad) -> None:
    with pytest.raises(InvalidRequest):
        check_id(bad)


def test_registry_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    root = tmp_path / "models"
    (root / "Org").mkdir(parents=True)
    (root / "Org" / "Name").symlink_to(STORIES)
    (root / "q.gguf").write_bytes(b"GGUF")
    (root / "empty").mkdir()
    snapshot = tmp_path / "hub" / "models--A--B" / "snapshots" / "s1"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(STORIES / name)
    registry = ModelRegistry([root])
    found = {loc.id: loc for loc in registry.scan()}
    assert set(found) == {"Org/Name", "q.gguf", "A/B"}
    assert found["q.gguf"].format == "gguf"
    assert registry.resolve("A/B").path == snapshot
    assert registry.resolve("Org/Name").source == "models_dir"
    with pytest.raises(ModelNotFound):
        registry.resolve("empty")


def test_device_names() -> None:
    assert devices.normalize("CUDA") == "cuda:0"
    assert devices.normalize("cuda:1") == "cuda:1"
    assert devices.normalize("cpu") == "cpu"
    with pytest.raises(InvalidRequest):
        devices.normalize("gpu0")
    cpu = devices.describe("cpu")
    assert cpu.total_bytes >= cpu.free_bytes > 0


def test_a_cancelled_heartbeat_wait_stays_cancelled_when_an_item_lands_with_it() -> None:
    """A client that leaves cancels its handler just as a token is queued; the cancellation
    must win (asyncio.wait_for on Python 3.11 returned the token and lost it, and the neuron
    generated the rest of an abandoned non-streaming answer)."""

    async def trial() -> bool:
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(next_or_none(queue, 5.0))
        await asyncio.sleep(0.01)
        queue.put_nowait("token")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    async def trials() -> list[bool]:
        return [await trial() for _ in range(20)]

    assert all(asyncio.run(trials()))


def test_heartbeat_wait_returns_items_then_none_on_silence() -> None:
    async def run() -> list:
        queue: asyncio.Queue[str] = asyncio.Queue()
        queue.put_nowait("a")
        return [await next_or_none(queue, 0.05), await next_or_none(queue, 0.05)]

    assert asyncio.run(run()) == ["a", None]
