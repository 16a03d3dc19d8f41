"""Responses requests -> the neuron's chat request (cortex.api.responses), on the captured Codex
requests and on hand-made ones."""

from __future__ import annotations

import json

import pytest

from cortex.api import responses
from cortex.errors import InvalidRequest
from tests.conftest import FIXTURES

CODEX = FIXTURES / "codex" / "requests"


def codex_request(name: str) -> dict:
    return json.loads((CODEX / name).read_text())


def test_codex_plain_turn():
    body = codex_request("01-plain-turn.json")
    out = responses.to_openai_chat(body)
    chat = out.chat
    roles = [m["role"] for m in chat["messages"]]
    # Two developer messages open the input: one system prompt, then the two user messages.
    assert roles == ["system", "user", "user"]
    assert chat["messages"][0]["content"].count("<redacted") == 3
    assert chat["messages"][-1]["content"] == "Say hi"
    names = [t["function"]["name"] for t in chat["tools"]]
    assert names == [
        "exec_command",
        "write_stdin",
        "request_user_input",
        "view_image",
        "get_goal",
        "create_goal",
        "update_goal",
    ]
    assert out.ignored == ["tools[4] (namespace)", "tools[8] (web_search)"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is True
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "chat_template_kwargs" not in chat  # no effort asked: the model's default
    assert "max_tokens" not in chat
    assert [item["id"] for item in out.input_items] == [item["id"] for item in body["input"]]


def test_codex_tool_round_trip():
    chat = responses.to_openai_chat(codex_request("03-tool-turn2-function-call-output.json")).chat
    assistant, tool = chat["messages"][-2:]
    assert assistant == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "exec_command",
                    "arguments": '{"cmd": "echo hello-from-tool"}',
                },
            }
        ],
    }
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_1"
    assert tool["content"].startswith("<redacted")


def test_string_input_instructions_and_settings():
    body = {
        "model": "m",
        "input": "hi",
        "instructions": "Be brief.",
        "max_output_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning": {"effort": "minimal"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        "prompt_cache_key": "abc",
        "unknown_field": [1, 2],
    }
    out = responses.to_openai_chat(body)
    assert out.chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert out.chat["max_tokens"] == 50
    assert (out.chat["temperature"], out.chat["top_p"]) == (0.2, 0.9)
    assert out.chat["chat_template_kwargs"] == {"enable_thinking": False}
    assert out.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": False},
    }
    assert "tools" not in out.chat and "stream" not in out.chat
    (item,) = out.input_items
    assert item["type"] == "message" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "hi"}]


@pytest.mark.parametrize(("effort", "thinking"), [("none", False), ("low", True), ("high", True)])
def test_reasoning_effort(effort, thinking):
    body = {"model": "m", "input": "hi", "reasoning": {"effort": effort, "summary": "auto"}}
    assert responses.to_openai_chat(body).chat["chat_template_kwargs"] == {
        "enable_thinking": thinking
    }


def test_assistant_turn_gathers_reasoning_text_and_calls():
    items = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "think"}],
            "encrypted_content": "x",
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_text", "text": "1"}],
        },
        {"type": "function_call_output", "call_id": "c2", "output": "2"},
        {"role": "system", "content": "late rule"},
        {"type": "web_search_call", "id": "ws_1"},
    ]
    out = responses.to_openai_chat({"model": "m", "input": items})
    user, assistant, tool1, tool2, system = out.chat["messages"]
    assert user == {"role": "user", "content": "a\n\nb"}
    assert assistant["reasoning_content"] == "think" and assistant["content"] == "ok"
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert (tool1["content"], tool2["content"]) == ("1", "2")
    assert system == {"role": "system", "content": "late rule"}
    assert out.ignored == ["input[8] (web_search_call)"]


def test_previous_conversation_comes_first():
    earlier = responses.history(
        [
            (
                [{"type": "message", "role": "user", "content": "one"}],
                [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "1"}],
                    }
                ],
            )
        ]
    )
    out = responses.to_openai_chat({"model": "m", "input": "two", "instructions": "sys"}, earlier)
    assert [(m["role"], m["content"]) for m in out.chat["messages"]] == [
        ("system", "sys"),
        ("user", "one"),
        ("assistant", "1"),
        ("user", "two"),
    ]
    assert len(out.input_items) == 1  # only this request's own input is stored with it


def test_tool_choice():
    tools = [{"type": "function", "name": "f"}, {"type": "file_search"}]
    named = {"type": "function", "name": "f"}
    chat = responses.to_openai_chat(
        {"model": "m", "input": "x", "tools": tools, "tool_choice": named}
    ).chat
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    hosted = responses.to_openai_chat(
        {"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "file_search"}}
    )
    assert hosted.chat["tool_choice"] == "auto"
    assert "tool_choice (file_search)" in hosted.ignored


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "x", "tools": {}}, "tools"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {
                "model": "m",
                "input": "x",
                "tool_choice": 3,
                "tools": [{"type": "function", "name": "f"}],
            },
            "tool_choice",
        ),
        ({"model": "m", "input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"model": "m", "input": [3]}, "input[0]"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0]"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0]",
        ),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0]"),
    ],
)
def test_malformed_fields_name_the_param(body, param):
    with pytest.raises(InvalidRequest) as info:
        responses.to_openai_chat(body)
    assert info.value.param == param
