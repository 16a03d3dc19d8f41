"""OpenAI Responses API requests -> the neuron's OpenAI chat request.

Pure data: no aiohttp, no torch. The gateway sends the neuron `to_openai_chat(...).chat`; the
answer comes back as a Response object (`cortex.api.response_object`) or, streamed, as named
events (`cortex.api.response_events`).

Decisions where the Responses API is silent or cortex cannot follow it:
- `instructions`, and the system/developer messages that open the input, become one leading
  system message (parts and messages joined by a blank line): chat templates want one system
  prompt first. Later system/developer messages stay system messages at their place. With
  `previous_response_id`, the earlier request's `instructions` are not carried over (as OpenAI
  does); its input and output items are.
- Text-only content becomes one string (parts joined by a blank line); `input_image` becomes an
  OpenAI image part (the neuron refuses it if the model has no vision); `input_file` is refused.
- An assistant turn gathers consecutive `reasoning` items (their summary or content text as
  `reasoning_content`), assistant messages and `function_call` items into one chat message;
  `function_call_output` becomes a role-`tool` message. `encrypted_content` is dropped: a local
  model has nothing to decrypt. `custom_tool_call(_output)` is mapped like a function call.
- Tools that are not functions (`namespace`, `web_search`, `file_search`, `mcp`...) and input
  items of kinds the gateway cannot render (`web_search_call`, `item_reference`...) are left
  out, never refused: each is named in `Translated.ignored` (the route returns them in the
  `x-cortex-ignored` header). A `tool_choice` that names such a tool falls back to `auto`.
- `reasoning.effort` `none`/`minimal` turns the model's thinking off, any other effort turns it
  on; without an effort the model's own default applies (OpenAI reasoning models reason by
  default).
- `text.format` `json_object` / `json_schema` become `response_format` (enforced as far as the
  neuron enforces it); `text` needs nothing.
- `store`, `include`, `prompt_cache_key`, `client_metadata`, `metadata`, `truncation`,
  `service_tier`, `user`, `safety_identifier` and unknown fields need nothing from the neuron
  (`metadata` is echoed in the Response). The prefix cache needs no key.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from cortex.errors import InvalidRequest

_JOIN = "\n\n"
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
_ROLES = ("user", "assistant", "system", "developer")
_THINKING_OFF = ("none", "minimal")
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# Item id prefixes, as OpenAI's.
ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "reasoning": "rs"}


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id (`resp_...`, `msg_...`, `fc_...`, `call_...`)."""
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass
class Translated:
    """The neuron's chat request, this request's input items (as listed by
    `GET /v1/responses/{id}/input_items`, ids added) and what was left out."""

    chat: dict[str, Any]
    input_items: list[dict[str, Any]]
    ignored: list[str] = field(default_factory=list)


def check_request(body: dict[str, Any]) -> None:
    """Check the shape the translation relies on; `InvalidRequest` naming the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required", param="model")
    if not isinstance(body.get("input"), str | list):
        raise InvalidRequest("input: must be a string or a list of items", param="input")
    for key, kind in (("instructions", str), ("tools", list), ("previous_response_id", str)):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise InvalidRequest(f"{key}: must be a {kind.__name__}", param=key)
    for key in ("stream", "store", "parallel_tool_calls"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise InvalidRequest(f"{key}: must be a boolean", param=key)
    tokens = body.get("max_output_tokens")
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1
    ):
        raise InvalidRequest(
            "max_output_tokens: must be an integer of at least 1", param="max_output_tokens"
        )
    for key in ("reasoning", "text", "metadata"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InvalidRequest(f"{key}: must be an object", param=key)


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as items, each with an id and message content as parts (a string
    input is one user message)."""
    raw = body["input"]
    if isinstance(raw, str):
        raw = [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}
        ]
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input[{i}]: must be an object", param=f"input[{i}]")
        kind = item.get("type") or ("message" if "role" in item else None)
        item = {**item, "type": kind}
        if kind == "message" and isinstance(item.get("content"), str):
            # Stored and listed as OpenAI lists them: content as parts.
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        if not item.get("id") and kind in ITEM_PREFIXES:
            item["id"] = new_id(ITEM_PREFIXES[kind])
        items.append(item)
    return items


def history(chain: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> list[dict]:
    """The items of a stored conversation, oldest first: each response's input, then output."""
    return [item for inputs, output in chain for item in (*inputs, *output)]


def to_openai_chat(body: dict[str, Any], earlier: list[dict[str, Any]] | None = None) -> Translated:
    """The neuron's chat request for a Responses request (`InvalidRequest` if malformed);
    `earlier`: the items of the conversation it continues (`history`)."""
    check_request(body)
    own = input_items(body)
    ignored: list[str] = []
    chat: dict[str, Any] = {"model": body["model"]}
    earlier = earlier or []
    items = [*earlier, *own]
    chat["messages"] = _messages(body.get("instructions"), items, len(earlier), ignored)
    tools = _tools(body.get("tools") or [], ignored)
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), ignored)
        if choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    thinking = _thinking(body.get("reasoning"))
    if thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": thinking}
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Translated(chat, own, ignored)


def _messages(
    instructions: str | None, items: list[dict], earlier: int, ignored: list[str]
) -> list[dict]:
    """Chat messages for the items; the first `earlier` come from stored responses."""
    system = [instructions] if instructions else []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i - earlier}]" if i >= earlier else "previous_response_id"
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidRequest(
                    f"{where}.role: must be one of {', '.join(_ROLES)}", param=where
                )
            content = _content(item.get("content"), where)
            if role in ("system", "developer"):
                if not out:
                    system.append(_text(content, where))
                else:
                    out.append({"role": "system", "content": _text(content, where)})
            elif role == "assistant":
                turn = _assistant_turn(out)
                turn["content"] = _join(turn["content"], _text(content, where))
            else:
                out.append({"role": "user", "content": content})
        elif kind in ("function_call", "custom_tool_call"):
            _assistant_turn(out).setdefault("tool_calls", []).append(_call(item, kind, where))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where}.call_id: Field required", param=where)
            output = _text(_content(item.get("output", ""), where), where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            texts = [p.get("text", "") for p in item.get("summary") or [] if isinstance(p, dict)]
            texts = texts or [
                p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict)
            ]
            turn = _assistant_turn(out)
            turn["reasoning_content"] = _join(turn.get("reasoning_content", ""), _JOIN.join(texts))
        else:
            ignored.append(f"{where} ({kind})")
    if system:
        out.insert(0, {"role": "system", "content": _JOIN.join(system)})
    return out


def _assistant_turn(out: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message being built: the last one, unless another role came since."""
    if out and out[-1]["role"] == "assistant":
        return out[-1]
    out.append({"role": "assistant", "content": ""})
    return out[-1]


def _join(first: str, second: str) -> str:
    return _JOIN.join(t for t in (first, second) if t)


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content: one string when it is text only, else OpenAI chat parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content: must be a string or a list of parts", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise InvalidRequest(
                f"{where}.content[{j}]: content part {kind!r} is not supported by this server",
                param=f"{where}.content[{j}]",
            )
    if all(part["type"] == "text" for part in parts):
        return _JOIN.join(part["text"] for part in parts)
    return parts


def _text(content: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(content, str):
        return content
    raise InvalidRequest(f"{where}.content: only text is allowed here", param=where)


def _call(item: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    """An OpenAI chat tool call for a `function_call` (or `custom_tool_call`) item."""
    name, call_id = item.get("name"), item.get("call_id")
    arguments = item.get("arguments" if kind == "function_call" else "input", "")
    if not isinstance(name, str) or not isinstance(call_id, str) or not isinstance(arguments, str):
        raise InvalidRequest(
            f"{where}: a {kind} needs string 'name', 'call_id' and arguments", param=where
        )
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tools(tools: list[Any], ignored: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            ignored.append(f"tools[{i}] ({kind})")
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidRequest(f"tools[{i}].name: Field required", param=f"tools[{i}].name")
        parameters = tool.get("parameters")
        schema = dict(parameters) if isinstance(parameters, dict) else {"type": "object"}
        schema.setdefault("properties", {})
        schema.pop("$schema", None)
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, ignored: list[str]) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if not isinstance(choice, dict):
        raise InvalidRequest(
            "tool_choice: must be auto, none, required or a tool", param="tool_choice"
        )
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    ignored.append(f"tool_choice ({choice.get('type')})")
    return "auto"


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": str(fmt.get("name") or "output"), "schema": fmt["schema"]}
        schema["strict"] = bool(fmt.get("strict", False))
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(
        "text.format: must be text, json_object or json_schema with a schema", param="text.format"
    )


def _thinking(reasoning: dict[str, Any] | None) -> bool | None:
    effort = (reasoning or {}).get("effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise InvalidRequest(
            f"reasoning.effort: must be one of {', '.join(_EFFORTS)}", param="reasoning.effort"
        )
    return effort not in _THINKING_OFF
