"""Anthropic Messages request -> the neuron's OpenAI chat request, golden and per mapping."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cortex.api import translate
from cortex.errors import InvalidRequest
from tests.anthropic.golden import is_count_tokens, load_request, request_files
from tests.conftest import FIXTURES

REQUESTS = request_files()


@pytest.fixture(scope="module")
def qwen3():
    """The Qwen3 tokenizer and chat template (the text helper's Tokenizer)."""
    from cortex.neuron.text.tokenizer import Tokenizer

    return Tokenizer.from_dir(FIXTURES / "qwen3")


def translated(path: Path) -> dict[str, Any]:
    body = load_request(path)
    if is_count_tokens(path):
        return translate.to_openai_tokenize(body)
    return translate.to_openai_chat(body)


def render(tokenizer, request: dict[str, Any]) -> str:
    return tokenizer.render_chat(
        request["messages"], request.get("tools"), **request.get("chat_template_kwargs", {})
    )


def minimal(**fields: Any) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def test_every_captured_request_is_covered():
    names = [p.name[:2] for p in REQUESTS]
    assert names == [f"{i:02d}" for i in range(1, 15)]


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_claude_code_request_renders_through_qwen3_template(path, qwen3):
    body = load_request(path)
    out = translated(path)
    text = render(qwen3, out)
    thinking = out["chat_template_kwargs"]["enable_thinking"]
    assert text.endswith(
        "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    )
    assert "x-anthropic-billing-header" not in text
    # Every tool reaches the template, by name.
    names = [t["name"] for t in body.get("tools") or []]
    assert [t["function"]["name"] for t in out.get("tools", [])] == names
    for name in names:
        assert f'"name": "{name}"' in text
    # Every message's text survives, and a role-system message stays a system turn in place.
    for message in body["messages"]:
        content = message["content"]
        texts = [content] if isinstance(content, str) else [b.get("text", "") for b in content]
        for piece in texts:
            assert piece in text
        if message["role"] == "system":
            assert f"<|im_start|>system\n{content}<|im_end|>" in text
    # Tool results become tool responses.
    for message in body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "tool_result":
                assert f"<tool_response>\n{block['content']}\n</tool_response>" in text


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_claude_code_request_shape(path):
    body = load_request(path)
    out = translated(path)
    assert out["model"] == body["model"]
    roles = [m["role"] for m in out["messages"]]
    if body.get("system"):
        assert roles[0] == "system"
        assert not out["messages"][0]["content"].startswith("x-anthropic-billing-header")
        assert out["messages"][0]["content"].startswith("You are a Claude agent") or out[
            "messages"
        ][0]["content"].startswith("You are Claude Code")
    # The mid-conversation system message keeps its position (after the first user turn).
    if any(m["role"] == "system" for m in body["messages"]):
        assert roles[1:3] == ["user", "system"]
    json.dumps(out)  # plain JSON all the way down
    for tool in out.get("tools", []):
        assert tool["type"] == "function"
        assert "$schema" not in tool["function"]["parameters"]
        assert tool["function"]["parameters"]["type"] == "object"
    if not is_count_tokens(path):
        assert out["max_tokens"] == body["max_tokens"]
        assert out.get("stream", False) == bool(body.get("stream"))


def test_billing_header_dropped_so_conversations_share_a_prefix(qwen3):
    first = load_request(FIXTURES / "claude-code/requests/02-plain-custom-model.json")
    second = copy.deepcopy(first)
    # Another conversation: another first prompt, so another billing line (03 has "0cf").
    second["system"][0] = load_request(FIXTURES / "claude-code/requests/03-tool-bash-turn1.json")[
        "system"
    ][0]
    second["messages"][0]["content"][1]["text"] = "run echo hello-from-tool"
    assert first["system"][0]["text"] != second["system"][0]["text"]
    a = render(qwen3, translate.to_openai_chat(first))
    b = render(qwen3, translate.to_openai_chat(second))
    shared = a.index("<|im_start|>user")
    assert a[:shared] == b[:shared]
    assert a[shared:] != b[shared:]


def test_tool_round_trip_history():
    out = translate.to_openai_chat(
        load_request(FIXTURES / "claude-code/requests/06-thinking-echoed-back-turn2.json")
    )
    assistant, tool = out["messages"][3], out["messages"][4]
    assert assistant == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should run echo.",
        "tool_calls": [
            {
                "id": "toolu_fake0003",
                "type": "function",
                "function": {
                    "name": "Bash",
                    "arguments": '{"command": "echo hello-from-tool", "description": "echo"}',
                },
            }
        ],
    }
    assert tool == {"role": "tool", "tool_call_id": "toolu_fake0003", "content": "hello-from-tool"}


def test_system_string_and_blocks():
    assert translate.to_openai_chat(minimal(system="be brief"))["messages"][0] == {
        "role": "system",
        "content": "be brief",
    }
    blocks = [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b"},
    ]
    assert translate.to_openai_chat(minimal(system=blocks))["messages"][0]["content"] == "a\n\nb"
    only_header = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; x=y;"}]
    assert translate.to_openai_chat(minimal(system=only_header))["messages"][0]["role"] == "user"


def test_images_base64_and_url():
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
    out = translate.to_openai_chat(minimal(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]


def test_tool_result_blocks_errors_and_following_text():
    content = [
        {
            "type": "tool_result",
            "tool_use_id": "t1",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True},
        {"type": "tool_result", "tool_use_id": "t3"},
        {"type": "text", "text": "go on"},
    ]
    out = translate.to_openai_chat(minimal(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "a\n\nb"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: boom"},
        {"role": "tool", "tool_call_id": "t3", "content": ""},
        {"role": "user", "content": "go on"},
    ]


def test_tool_result_image_follows_as_user_message():
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    content = [
        {
            "type": "tool_result",
            "tool_use_id": "t",
            "content": [{"type": "text", "text": "shot"}, image],
        }
    ]
    out = translate.to_openai_chat(minimal(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0] == {"role": "tool", "tool_call_id": "t", "content": "shot"}
    assert out["messages"][1]["content"][0]["type"] == "image_url"


def test_thinking_history_with_any_signature():
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "answer"},
            ],
        },
        {"role": "user", "content": "more"},
    ]
    out = translate.to_openai_chat(minimal(messages=history))
    assert out["messages"][1] == {
        "role": "assistant",
        "content": "answer",
        "reasoning_content": "hmm",
    }


def test_tools_and_tool_choice():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1}},
        "required": ["city"],
        "additionalProperties": False,
    }
    tools = [
        {
            "name": "weather",
            "description": "Get weather",
            "input_schema": schema,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    expected_params = {k: v for k, v in schema.items() if k != "$schema"}
    cases = {
        "auto": "auto",
        "any": "required",
        "none": "none",
    }
    for kind, openai in cases.items():
        out = translate.to_openai_chat(minimal(tools=tools, tool_choice={"type": kind}))
        assert out["tool_choice"] == openai
        assert out["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Get weather",
                    "parameters": expected_params,
                },
            }
        ]
    named = translate.to_openai_chat(
        minimal(
            tools=tools,
            tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        )
    )
    assert named["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert named["parallel_tool_calls"] is False


def test_sampling_fields_and_metadata():
    out = translate.to_openai_chat(
        minimal(
            temperature=0.2,
            top_p=0.9,
            top_k=5,
            stop_sequences=["END", "\n\n"],
            metadata={"user_id": "u1"},
        )
    )
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.2, 0.9, 5)
    assert out["stop"] == ["END", "\n\n"]
    assert out["user"] == "u1"
    assert out["max_tokens"] == 16
    assert "stream" not in out


def test_stream_flag():
    out = translate.to_openai_chat(minimal(stream=True))
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "stream" not in translate.to_openai_chat(minimal(stream=True), stream=False)


@pytest.mark.parametrize(
    ("thinking", "enabled"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "adaptive"}, True),
        ({"type": "disabled"}, False),
        (None, False),
    ],
)
def test_thinking_switch(thinking, enabled):
    body = minimal() if thinking is None else minimal(thinking=thinking)
    out = translate.to_openai_chat(body)
    assert out["chat_template_kwargs"] == {"enable_thinking": enabled}


def test_output_format_json_schema():
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    for body in (
        minimal(
            output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}}
        ),
        minimal(output_format={"type": "json_schema", "schema": schema}),
    ):
        out = translate.to_openai_chat(body)
        assert out["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }


def test_unknown_fields_ignored():
    body = minimal(
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        output_config={"effort": "high"},
        service_tier="auto",
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "hi",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            }
        ],
    )
    out = translate.to_openai_chat(body)
    assert out["messages"] == [{"role": "user", "content": "hi"}]
    assert set(out) == {"model", "messages", "chat_template_kwargs", "max_tokens"}


def test_count_tokens_request_matches_the_real_prompt():
    body = load_request(FIXTURES / "claude-code/requests/03-tool-bash-turn1.json")
    chat = translate.to_openai_chat(body)
    count = translate.to_openai_tokenize(
        {k: body[k] for k in ("model", "messages", "tools", "system", "thinking")}
    )
    assert count == {k: chat[k] for k in ("model", "messages", "tools", "chat_template_kwargs")}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": None}, "model: Field required"),
        ({"messages": None}, "messages: Field required"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "not supported"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "not supported"),
        (
            {"tool_choice": {"type": "sometimes"}, "tools": [{"name": "t", "input_schema": {}}]},
            "tool_choice",
        ),
        ({"thinking": {"type": "maybe"}}, "thinking.type"),
        ({"system": [{"type": "image"}]}, "only text blocks"),
    ],
)
def test_invalid_requests(change, message):
    body = minimal()
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = copy.deepcopy(value)
    with pytest.raises(InvalidRequest) as info:
        translate.to_openai_chat(body)
    assert message in info.value.message
    assert info.value.anthropic_envelope()["error"]["type"] == "invalid_request_error"
