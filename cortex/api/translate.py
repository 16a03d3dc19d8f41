"""Anthropic Messages <-> OpenAI chat: requests (and count_tokens) and JSON answers.

Pure data: no aiohttp, no torch. The gateway sends the neuron what `to_openai_chat` builds and
turns the answer back with `to_anthropic_message`, or, streamed, with
`cortex.api.anthropic.StreamTranslator`.

Request decisions:
- `system` (string or text blocks) becomes the first system message. A leading block that only
  carries Claude Code's `x-anthropic-billing-header:` line is dropped, so that conversations
  share the prompt prefix (system + tools) in the neuron's prefix cache.
- A role-`system` message inside `messages` stays a system message at its position; the chat
  template decides whether to render it in place or merge it. It is never dropped or made user.
- Text-only content becomes one string, blocks joined by a blank line (chat templates render
  strings; many drop list content). Content with images becomes OpenAI parts.
- `tool_result` blocks become role-`tool` messages at their position (error results are marked
  "Error: "); images inside a tool result follow as a user message.
- `thinking` blocks in history become the assistant's `reasoning_content` (signatures, even
  empty ones, are dropped: they mean nothing to a local model); `redacted_thinking` is dropped.
- `thinking` `enabled`/`adaptive` -> `enable_thinking: true`; `disabled` or absent -> false
  (Anthropic's default is no thinking). `budget_tokens` is not enforced.
- The top-level `$schema` of a tool's `input_schema` is dropped (tokens the model needs not
  read); the rest of the draft 2020-12 schema is kept verbatim as the function's `parameters`.
- `cache_control`, `context_management`, `output_config.effort` and other unknown fields are
  ignored.

Response decisions (the same for the stream):
- `stop_sequence` is known only when the upstream says which stop string matched: a cortex
  neuron, like vLLM, puts it in the choice's `stop_reason`. Without that field the reason is
  `end_turn` (an EOS and a stop string cannot be told apart from the stripped text).
- A tool call whose arguments are not a JSON object keeps them as `{"arguments": "<raw>"}`.
"""

from __future__ import annotations

import json
from typing import Any

from cortex.api import anthropic
from cortex.api.openai import first_message, reasoning_text
from cortex.errors import InvalidRequest

_JOIN = "\n\n"


def to_openai_chat(body: dict[str, Any], *, stream: bool | None = None) -> dict[str, Any]:
    """The neuron's OpenAI chat request for an Anthropic Messages request (`InvalidRequest` if
    malformed). `stream`, when given, overrides the body's own `stream` flag."""
    anthropic.check_request(body)
    out = _prompt(body)
    out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    choice = body.get("tool_choice")
    if choice is not None and out.get("tools"):
        out["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    response_format = _response_format(body)
    if response_format is not None:
        out["response_format"] = response_format
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    streamed = (body.get("stream") is True) if stream is None else stream
    if streamed:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def to_openai_tokenize(body: dict[str, Any]) -> dict[str, Any]:
    """The neuron's `/tokenize` request for `count_tokens`: the same prompt as a real turn."""
    anthropic.check_request(body, count_tokens=True)
    return _prompt(body)


def _prompt(body: dict[str, Any]) -> dict[str, Any]:
    """What decides the prompt tokens: model, messages, tools and the thinking switch."""
    out: dict[str, Any] = {"model": body["model"], "messages": _messages(body)}
    tools = [_tool(tool, i) for i, tool in enumerate(body.get("tools") or [])]
    if tools:
        out["tools"] = tools
    out["chat_template_kwargs"] = {"enable_thinking": _thinking(body.get("thinking"))}
    return out


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = _system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body["messages"]):
        where = f"messages.{i}"
        role, content = message["role"], message["content"]
        if role == "system":
            out.append({"role": "system", "content": _text_only(content, where)})
        elif role == "assistant":
            out.append(_assistant(content, where))
        else:
            out.extend(_user(content, where))
    return out


def _system_text(system: Any) -> str:
    if system is None:
        return ""
    first = system[0] if isinstance(system, list) and system else None
    if isinstance(first, dict) and anthropic.is_billing_header(str(first.get("text", ""))):
        system = system[1:]
    return _text_only(system, "system")


def _text_only(content: Any, where: str) -> str:
    """A string, or text blocks joined; anything else is refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: Input should be a string or a list of text blocks")
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"{where}.{j}: only text blocks are allowed here")
        texts.append(_text(block, f"{where}.{j}"))
    return _JOIN.join(texts)


def _text(block: dict[str, Any], where: str, key: str = "text") -> str:
    """The string a text (or thinking) block carries; 400 naming the field otherwise."""
    text = block.get(key, "")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.{key}: Input should be a valid string")
    return text


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """A user turn: tool results become tool messages, the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            if parts:
                out.append(_user_message(parts))
                parts = []
            message, images = _tool_result(block, f"{where}.content.{j}")
            out.append(message)
            parts.extend(images)
        else:
            parts.append(_part(block, f"{where}.content.{j}"))
    if parts or not out:
        out.append(_user_message(parts))
    return out


def _user_message(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if all(part["type"] == "text" for part in parts):
        return {"role": "user", "content": _JOIN.join(part["text"] for part in parts)}
    return {"role": "user", "content": parts}


def _part(block: Any, where: str) -> dict[str, Any]:
    """One OpenAI content part for a user text, image or plain-text document block."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return {"type": "text", "text": _text(block, where)}
    source = (block.get("source") or {}) if kind in ("image", "document") else {}
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}.source: Input should be a valid dictionary")
    if kind == "image" and source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "image" and source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    if kind == "document" and source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    described = f"{kind} ({source.get('type')})" if source else repr(kind)
    raise InvalidRequest(f"{where}: content block {described} is not supported by this server")


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict]]:
    """A role-tool message for a `tool_result`, plus any images it carried."""
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, inner in enumerate(content):
            part = _part(inner, f"{where}.content.{j}")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    text = _JOIN.join(texts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    message = {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}
    return message, images


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, f"{where}.content.{j}"))
        elif kind == "thinking":
            reasoning.append(_text(block, f"{where}.content.{j}", "thinking"))
        elif kind == "tool_use":
            tool_input = block.get("input")
            if tool_input is not None and not isinstance(tool_input, dict):
                raise InvalidRequest(
                    f"{where}.content.{j}.input: Input should be a valid dictionary"
                )
            arguments = json.dumps(tool_input or {}, ensure_ascii=False)
            function = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
        elif kind != "redacted_thinking":
            raise InvalidRequest(f"{where}.content.{j}: content block {kind!r} is not supported")
    message: dict[str, Any] = {"role": "assistant", "content": _JOIN.join(texts)}
    if reasoning:
        message["reasoning_content"] = _JOIN.join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"tools.{i}.name: Field required", param="tools")
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(
            f"tools.{i}: tool type {tool['type']!r} is not supported; give a custom tool "
            "with an input_schema",
            param="tools",
        )
    schema = tool.get("input_schema") or {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise InvalidRequest(f"tools.{i}.input_schema: Input should be a valid dictionary")
    schema = dict(schema)
    schema.pop("$schema", None)
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = schema
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(f"tool_choice: unknown type {kind!r}", param="tool_choice")


def _thinking(thinking: Any) -> bool:
    kind = thinking.get("type") if isinstance(thinking, dict) else thinking
    if kind in (None, "disabled"):
        return False
    if kind in ("enabled", "adaptive"):
        return True
    raise InvalidRequest(f"thinking.type: unknown value {kind!r}", param="thinking")


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """`output_config.format` (or the older `output_format`) json_schema -> response_format."""
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if not fmt:
        return None
    if (
        not isinstance(fmt, dict)
        or fmt.get("type") != "json_schema"
        or not isinstance(fmt.get("schema"), dict)
    ):
        raise InvalidRequest("output_config.format: only json_schema is supported")
    schema = {"name": "output", "schema": fmt["schema"], "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic `tool_use` block for an OpenAI tool call (arguments parsed)."""
    function = call.get("function") or {}
    raw = function.get("arguments") or "{}"
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"arguments": raw}
    tool_id = call.get("id") or anthropic.new_id("toolu")
    return {"type": "tool_use", "id": tool_id, "name": function.get("name", ""), "input": parsed}


def to_anthropic_message(
    response: dict[str, Any], *, model: str, stop_sequences: list[str] | None = None
) -> dict[str, Any]:
    """An Anthropic `Message` for an OpenAI chat completion (non-streaming)."""
    choice, reply = first_message(response)
    content: list[dict[str, Any]] = []
    reasoning = reasoning_text(reply)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if reply.get("content"):
        content.append({"type": "text", "text": reply["content"]})
    calls = reply.get("tool_calls") or []
    content.extend(tool_use_block(call) for call in calls)
    reason, sequence = anthropic.stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences or [], bool(calls)
    )
    usage = anthropic.usage(response.get("usage"))
    return anthropic.message(_message_id(response), model, content, reason, sequence, usage)


def _message_id(response: dict[str, Any]) -> str:
    upstream = str(response.get("id") or "")
    return f"msg_{upstream.removeprefix('chatcmpl-')}" if upstream else anthropic.new_id("msg")
