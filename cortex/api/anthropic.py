"""The Anthropic Messages API as plain data: request checks, Message, usage, stop reasons and
the streamed event sequence (`StreamTranslator`, fed with OpenAI chat chunks).

Pure data: no aiohttp, no torch. `cortex.api.translate` converts requests and JSON answers
between this dialect and the neuron's OpenAI chat; events go on the wire with
`cortex.api.sse.event(event["type"], event)`.

Decisions written down here:
- Usage follows Anthropic's split: `input_tokens` counts the prompt tokens that were *not* read
  from the prefix cache, `cache_read_input_tokens` those that were, so that their sum is the
  prompt length (what Claude Code adds up for its context meter). Nothing is ever written to a
  cache on request, so `cache_creation_input_tokens` is always 0.
- A thinking block carries an empty `signature`: a local model cannot sign its reasoning, and
  Claude Code accepts `""` and echoes it back unchanged.
"""

from __future__ import annotations

import secrets
from typing import Any

from cortex.api import tool_calls
from cortex.api.limits import check_sampling
from cortex.api.openai import reasoning_text
from cortex.errors import CortexError, InvalidRequest, UpstreamError

# Claude Code puts a per-conversation attribution line first in `system`; it changes between
# conversations, so it would defeat a prefix cache keyed from the start of the prompt.
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"

# OpenAI finish_reason -> Anthropic stop_reason ("stop" may become "stop_sequence").
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_ROLES = ("user", "assistant", "system")


def new_id(prefix: str) -> str:
    """A fresh Anthropic-style id (`msg_...`, `toolu_...`)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def is_billing_header(text: str) -> bool:
    """True for a text that is only Claude Code's `x-anthropic-billing-header:` line."""
    stripped = text.strip()
    return stripped.startswith(BILLING_HEADER_PREFIX) and "\n" not in stripped


def check_request(body: Any, *, count_tokens: bool = False) -> dict[str, Any]:
    """Check the fields every Messages request needs; raise `InvalidRequest` like Anthropic.

    Only the shape the translation relies on is checked; unknown fields pass untouched.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: Field required", param="messages")
    if not count_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise InvalidRequest("max_tokens: Field required", param="max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest(
                "max_tokens: Input should be an integer of at least 1", param="max_tokens"
            )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise InvalidRequest(
                f"messages.{i}.role: Input should be 'user' or 'assistant'", param="messages"
            )
        if not isinstance(message.get("content"), str | list):
            raise InvalidRequest(f"messages.{i}.content: Field required", param="messages")
    for key in ("tools", "stop_sequences"):
        if body.get(key) is not None and not isinstance(body[key], list):
            raise InvalidRequest(f"{key}: Input should be a valid list", param=key)
    for key in ("metadata", "thinking", "tool_choice", "output_config"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InvalidRequest(f"{key}: Input should be a valid dictionary", param=key)
    # The same bounds as the OpenAI routes (cortex.api.limits): refused here, in this dialect.
    check_sampling({k: body.get(k) for k in ("temperature", "top_p", "top_k")})
    return body


def usage(openai_usage: dict[str, Any] | None, *, output_tokens: int = 0) -> dict[str, Any]:
    """Anthropic `usage` from an OpenAI `usage` object (see the module docstring)."""
    openai_usage = openai_usage or {}
    prompt = int(openai_usage.get("prompt_tokens") or 0)
    details = openai_usage.get("prompt_tokens_details") or {}
    cached = min(prompt, int(details.get("cached_tokens") or 0))
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": int(openai_usage.get("completion_tokens") or output_tokens),
    }


def message(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    stop_sequence: str | None,
    usage_: dict[str, Any],
) -> dict[str, Any]:
    """An Anthropic `Message` object, keys in Anthropic's order."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_,
    }


def empty_block(kind: str, **fields: Any) -> dict[str, Any]:
    """The opening `content_block` of a streamed block: empty text, thinking or tool input."""
    if kind == "text":
        return {"type": "text", "text": ""}
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {"type": "tool_use", "id": fields["id"], "name": fields["name"], "input": {}}


def message_start(message_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message_start", "message": message_}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(
    stop_reason: str, stop_sequence: str | None, usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": usage_,
    }


def message_stop() -> dict[str, Any]:
    return {"type": "message_stop"}


def ping() -> dict[str, Any]:
    return {"type": "ping"}


def error_event(error: CortexError) -> dict[str, Any]:
    """The `error` event sent when a stream fails after it started (Anthropic's envelope)."""
    return error.anthropic_envelope()


def stop_reason(
    finish_reason: str | None, matched: Any, stop_sequences: list[str], tool_calls: bool
) -> tuple[str, str | None]:
    """Anthropic (stop_reason, stop_sequence) for an OpenAI finish.

    `matched` is the stop string the neuron reports in the choice's `stop_reason` (vLLM's
    field); without it a "stop" finish is `end_turn` (see `cortex.api.translate`).
    """
    if tool_calls and finish_reason in ("stop", "tool_calls", None):
        return "tool_use", None
    if finish_reason == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


class StreamTranslator:
    """Anthropic's streamed event sequence, built live from OpenAI chat stream chunks.

    `feed(chunk)`, `ping()`, `finish()` and `fail(error)` each return the events to send, in
    order: `message_start` first (sent by whichever call comes first), then per content block
    `content_block_start`, its deltas (`thinking_delta` ... `signature_delta`, `text_delta`,
    `input_json_delta`) and `content_block_stop`; `finish()` closes the open block and sends
    `message_delta` (stop_reason, stop_sequence, usage) and `message_stop`. A change of kind
    (reasoning, text, another tool call) closes the open block and opens the next one.
    `finish()` raises `UpstreamError` if the upstream never sent a finish_reason (a cut stream):
    the caller then sends `fail(error)`, an `error` event, and Claude Code retries.
    """

    def __init__(
        self, model: str, *, stop_sequences: list[str] | None = None, message_id: str = ""
    ) -> None:
        self.model = model
        self.stop_sequences = list(stop_sequences or [])
        self.message_id = message_id or new_id("msg")
        self.started = False
        self._index = -1
        self._open: str | int | None = None  # "text", "thinking", or an OpenAI tool index
        self._tools: dict[int, tool_calls.PendingCall] = {}
        self._finish_reason: str | None = None
        self._matched: Any = None
        self._usage: dict[str, Any] | None = None
        self._deltas = 0

    def start(self, openai_usage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """`message_start` (once), with the prompt usage if the upstream already told it."""
        if self.started:
            return []
        self.started = True
        start_usage = usage(openai_usage)
        start_usage["output_tokens"] = 0
        empty = message(self.message_id, self.model, [], None, None, start_usage)
        return [message_start(empty)]

    def ping(self) -> list[dict[str, Any]]:
        """A `ping` (after `message_start` if that was not sent yet)."""
        return [*self.start(), ping()]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events for one OpenAI `chat.completion.chunk`."""
        events = self.start(chunk.get("usage"))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if reasoning:
                events += self._emit("thinking", {"type": "thinking_delta", "thinking": reasoning})
            if delta.get("content"):
                events += self._emit("text", {"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close the open block; `message_delta` and `message_stop`."""
        if self._finish_reason is None:
            raise UpstreamError("the model's stream ended before it finished its answer")
        tool_calls.check_named(self._tools)
        events = [*self.start(), *self._close()]
        reason, sequence = stop_reason(
            self._finish_reason, self._matched, self.stop_sequences, bool(self._tools)
        )
        events.append(
            message_delta(reason, sequence, usage(self._usage, output_tokens=self._deltas))
        )
        events.append(message_stop())
        return events

    def fail(self, error: CortexError) -> list[dict[str, Any]]:
        """The `error` event that ends a stream which broke after it started."""
        return [error_event(error)]

    def _emit(self, kind: str, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        if self._open != kind:
            events = [*self._close(), *self._open_block(kind, empty_block(kind))]
        events.append(block_delta(self._index, delta))
        self._deltas += 1
        return events

    def _open_block(self, key: str | int, block: dict[str, Any]) -> list[dict[str, Any]]:
        self._index += 1
        self._open = key
        return [block_start(self._index, block)]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        events = []
        if self._open == "thinking":
            # Anthropic ends every thinking block with its signature; ours is empty.
            events.append(block_delta(self._index, {"type": "signature_delta", "signature": ""}))
        elif isinstance(self._open, int):
            self._tools[self._open].closed = True
        events.append(block_stop(self._index))
        self._open = None
        return events

    def _tool_call(self, fragment: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool call fragment: its block opens once its name is known, arguments stream."""
        step = tool_calls.advance(self._tools, fragment)
        if step is None:
            return []
        events: list[dict[str, Any]] = []
        if step.opens:
            call = step.call
            block = empty_block("tool_use", id=call.id or new_id("toolu"), name=call.name)
            events = [*self._close(), *self._open_block(step.index, block)]
        if step.args:
            partial = {"type": "input_json_delta", "partial_json": step.args}
            events.append(block_delta(self._index, partial))
            self._deltas += 1
        return events
