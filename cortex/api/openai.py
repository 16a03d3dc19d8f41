"""OpenAI wire shapes: requests (re-exported from `openai_request`) and the response builders.

The builders shape answers and stream chunks as OpenAI's OpenAPI document has them: `logprobs`
present (null unless asked), `refusal` null, `finish_reason` one of stop/length/tool_calls,
`usage.prompt_tokens_details.cached_tokens`, reasoning as `reasoning_content` (vLLM's name).
`system_fingerprint` is a string (the spec's type): "fp_cortex", the serving stack. Legacy
completion stream chunks carry no `usage` key until the usage chunk (the spec's type is an
object, never null); chat chunks carry `usage: null` with `include_usage`, as OpenAI's do.
Like vLLM, each choice of an answer, and of the stream chunk that carries its `finish_reason`,
also has `stop_reason`: the stop string that matched, the `stop_token_ids` entry that ended it,
or null (EOS, length). The Anthropic translation reads it to answer `stop_sequence`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cortex.api.openai_request import (
    GenerationRequest,
    parse_chat,
    parse_completion,
    resolve_sampling,
)
from cortex.errors import UpstreamError

__all__ = [
    "PROMPT_TOKENS_HEADER",
    "SYSTEM_FINGERPRINT",
    "ChoiceResult",
    "GenerationRequest",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "logprob_entry",
    "model_card",
    "new_id",
    "now",
    "parse_chat",
    "parse_completion",
    "resolve_sampling",
    "tool_call_delta",
    "usage",
    "usage_chunk",
]

# A neuron's stream answer carries the prompt's token count in this header (see
# cortex/neuron/server/openai_routes.py): chunks have no place for it before the final usage.
PROMPT_TOKENS_HEADER = "x-cortex-prompt-tokens"
SYSTEM_FINGERPRINT = "fp_cortex"


def new_id(kind: str) -> str:
    """A response id: `chatcmpl-...` for chat, `cmpl-...` for legacy completions."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def now() -> int:
    """`created` timestamp (Unix seconds)."""
    return int(time.time())


@dataclass
class ChoiceResult:
    """One finished sequence, accumulated from its deltas."""

    index: int
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[dict[str, Any]] | None = None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The `usage` object, with `prompt_tokens_details.cached_tokens`."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def logprob_entry(
    token: str, logprob: float | None, top: list[tuple[str, float]] | None
) -> dict[str, Any]:
    """One chat `logprobs.content[]` entry (with `bytes` and `top_logprobs`); an echoed
    prompt's first token has no logprob and no alternatives (None)."""
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": None
        if top is None
        else [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in top],
    }


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The chat `choices[].logprobs` object, or None when not asked."""
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0) -> Any:
    """The legacy completion `logprobs` object (tokens, token_logprobs, top_logprobs, offsets)."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            None
            if e["top_logprobs"] is None
            else {t["token"]: t["logprob"] for t in e["top_logprobs"]}
            for e in entries
        ],
        "text_offset": offsets,
    }


def chat_message(choice: ChoiceResult) -> dict[str, Any]:
    """The assistant `message` of a chat choice."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.content if choice.content or not choice.tool_calls else None,
        "refusal": None,
        "reasoning_content": choice.reasoning or None,
    }
    if choice.tool_calls:
        message["tool_calls"] = choice.tool_calls
    return message


def _envelope(
    rid: str, obj: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The fields every answer and stream chunk shares, in OpenAI's order, then `extra`."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }


def chat_response(
    rid: str, created: int, model: str, choices: list[ChoiceResult], use: dict[str, Any]
) -> dict[str, Any]:
    """A complete `chat.completion` object."""
    items = [
        {
            "index": c.index,
            "message": chat_message(c),
            "logprobs": chat_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        for c in choices
    ]
    return _envelope(
        rid,
        "chat.completion",
        created,
        model,
        items,
        usage=use,
        system_fingerprint=SYSTEM_FINGERPRINT,
    )


def completion_response(
    rid: str, created: int, model: str, choices: list[ChoiceResult], use: dict[str, Any]
) -> dict[str, Any]:
    """A complete legacy `text_completion` object."""
    items = [
        {
            "index": c.index,
            "text": c.content,
            "logprobs": completion_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        for c in choices
    ]
    return _envelope(
        rid,
        "text_completion",
        created,
        model,
        items,
        usage=use,
        system_fingerprint=SYSTEM_FINGERPRINT,
    )


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk` with a single choice delta (`stop_reason` goes with a
    `finish_reason`)."""
    choice = {
        "index": index,
        "delta": delta,
        "logprobs": chat_logprobs(logprobs),
        "finish_reason": finish_reason,
    }
    return _envelope(
        rid, "chat.completion.chunk", created, model, [_with_stop_reason(choice, stop_reason)]
    )


def _with_stop_reason(choice: dict[str, Any], stop_reason: str | int | None) -> dict[str, Any]:
    """`choice` with vLLM's `stop_reason` added when it carries a finish_reason."""
    if choice["finish_reason"] is not None:
        choice["stop_reason"] = stop_reason
    return choice


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    offset: int = 0,
    stop_reason: str | int | None = None,
) -> dict[str, Any]:
    """One legacy completion stream chunk (`stop_reason` goes with a `finish_reason`)."""
    choice = {
        "index": index,
        "text": text,
        "logprobs": completion_logprobs(logprobs, offset),
        "finish_reason": finish_reason,
    }
    return _envelope(
        rid, "text_completion", created, model, [_with_stop_reason(choice, stop_reason)]
    )


def usage_chunk(kind: str, rid: str, created: int, model: str, use: dict[str, Any]) -> dict:
    """The final stream chunk of `stream_options.include_usage`: empty choices, usage set."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return _envelope(rid, obj, created, model, [], usage=use)


def tool_call_delta(index: int, call_id: str | None, name: str | None, arguments: str) -> dict:
    """A streamed `delta.tool_calls[]` item: the first carries id/type/name, later ones args."""
    item: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        item["id"] = call_id
        item["type"] = "function"
    if name is not None:
        item["function"]["name"] = name
    return item


def model_card(model_id: str, created: int, owned_by: str = "cortex", **extra: Any) -> dict:
    """One entry of `/v1/models`."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning in a chat message or stream delta: `reasoning_content` (what cortex and
    older vLLM write), else `reasoning` (newer vLLM, OpenRouter)."""
    return message.get("reasoning_content") or message.get("reasoning") or ""


def first_message(completion: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first choice of a whole chat completion and its message (the translations answer
    one choice); `UpstreamError` when the answer has none."""
    choices = completion.get("choices") or []
    if not choices:
        raise UpstreamError("the model's answer has no choices")
    return choices[0], choices[0].get("message") or {}
