"""The Responses API's Response object and its output items, built from the neuron's chat answer.

Pure data: no aiohttp, no torch. `skeleton` makes the in-progress Response for a request (the
request's settings echoed, as OpenAI does); `from_chat_completion` fills it from a whole chat
completion; `cortex.api.response_events` fills it live from stream chunks with the same item
builders.

Decisions:
- Output order: a `reasoning` item (the model's `reasoning_content`, as one `summary_text`
  part: there is no separate summariser), then the `message` (`output_text`), then one
  `function_call` item per tool call. A tool call keeps the neuron's id as `call_id`.
- Status: finish_reason `length` -> `incomplete` with `incomplete_details.reason`
  `max_output_tokens`; `content_filter` -> `incomplete` (`content_filter`); anything else
  `completed`.
- Usage: `input_tokens` is the whole prompt, `input_tokens_details.cached_tokens` the part the
  prefix cache served; `output_tokens_details.reasoning_tokens` is the neuron's
  `completion_tokens_details.reasoning_tokens` when it reports one, else 0.
"""

from __future__ import annotations

import time
from typing import Any

from cortex.api.openai import first_message, reasoning_text
from cortex.api.responses import ITEM_PREFIXES, new_id
from cortex.errors import CortexError

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def skeleton(body: dict[str, Any], model: str, response_id: str = "") -> dict[str, Any]:
    """The in-progress Response for a (checked) request body, its settings echoed."""
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    return {
        "id": response_id or new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def reasoning_item(text: str, item_id: str = "", status: str = "completed") -> dict[str, Any]:
    """A `reasoning` output item with the reasoning as its one summary part."""
    summary = [{"type": "summary_text", "text": text}] if text or status == "completed" else []
    return {
        "type": "reasoning",
        "id": item_id or new_id(ITEM_PREFIXES["reasoning"]),
        "summary": summary,
        "status": status,
    }


def output_text(text: str) -> dict[str, Any]:
    """An `output_text` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(text: str | None, item_id: str = "", status: str = "completed") -> dict:
    """An assistant `message` output item; `text` None: no content part yet."""
    return {
        "type": "message",
        "id": item_id or new_id(ITEM_PREFIXES["message"]),
        "status": status,
        "role": "assistant",
        "content": [] if text is None else [output_text(text)],
    }


def function_call_item(
    call_id: str, name: str, arguments: str, item_id: str = "", status: str = "completed"
) -> dict[str, Any]:
    """A `function_call` output item."""
    return {
        "type": "function_call",
        "id": item_id or new_id(ITEM_PREFIXES["function_call"]),
        "call_id": call_id or new_id("call"),
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    """Responses `usage` from an OpenAI chat `usage` (see the module docstring)."""
    chat_usage = chat_usage or {}
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    output = int(chat_usage.get("completion_tokens") or 0)
    cached = int((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    details = chat_usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(prompt, cached)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens") or 0)},
        "total_tokens": prompt + output,
    }


def finished(
    response: dict[str, Any],
    output: list[dict[str, Any]],
    finish_reason: str | None,
    chat_usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Response once the answer ended: output, status, usage."""
    reason = INCOMPLETE.get(finish_reason or "")
    return {
        **response,
        "status": "incomplete" if reason else "completed",
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "usage": usage(chat_usage),
    }


def failed(response: dict[str, Any], output: list[dict], error: CortexError) -> dict[str, Any]:
    """The Response of an answer that broke off: status `failed` with the error."""
    return {
        **response,
        "status": "failed",
        "error": {"code": error.code, "message": error.message},
        "output": output,
    }


def from_chat_completion(response: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """The finished Response for a whole OpenAI chat completion (non-streaming)."""
    choice, reply = first_message(completion)
    output: list[dict[str, Any]] = []
    reasoning = reasoning_text(reply)
    if reasoning:
        output.append(reasoning_item(reasoning))
    if reply.get("content"):
        output.append(message_item(reply["content"]))
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        output.append(
            function_call_item(
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                arguments if isinstance(arguments, str) else "{}",
            )
        )
    return finished(response, output, choice.get("finish_reason"), completion.get("usage"))
