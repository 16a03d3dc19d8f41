"""The Anthropic Messages API on the gateway: `POST /v1/messages` and `/v1/messages/count_tokens`.

Each request is translated to the neuron's OpenAI chat (`cortex.api.translate`), routed and
cold-loaded by `ProxiedRequest` like any OpenAI request, and the answer is translated back: a
JSON `Message`, or a live event stream (`cortex.api.anthropic.StreamTranslator`). The query
`?beta=true`, `anthropic-version` and `anthropic-beta` are accepted and need nothing.

Streams: `message_start` goes out as soon as the neuron answers, with `input_tokens` from the
neuron's `x-cortex-prompt-tokens` header (the whole prompt: which part the prefix cache served is
known only at the end, and `message_delta` then carries the exact split). While a cold load
runs, the client already gets `message_start` (with no token counts yet) and then a `ping`
every second; SSE comments the neuron sends while a long prompt prefills become `ping`s too.
An error before the stream started is an HTTP error in Anthropic's envelope (the errors
middleware renders what the handlers raise: 400 invalid_request_error, 404 not_found_error, 529
overloaded_error with Retry-After when no neuron can take the request, the neuron's own
Retry-After when it gave one...); after it started, it is an `error` event, on which Claude
Code drops the partial answer and retries without streaming.

`max_tokens` is clamped to the model's context length as the fleet reports it (Claude Code asks
32000 whatever the model); the neuron then clamps it exactly to the room the prompt leaves, and
refuses a prompt that alone is too long with `prompt is too long: N tokens > M maximum`, which
is passed on verbatim as a 400 (Claude Code parses it).

`count_tokens` asks a neuron that has the model (loading it if needed) for `/tokenize` of the
same messages, tools and thinking switch a real turn would render: the count is the exact prompt
length.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cortex.api import sse, translate
from cortex.api.anthropic import StreamTranslator
from cortex.api.openai import PROMPT_TOKENS_HEADER
from cortex.errors import CortexError, RateLimited, UpstreamError
from cortex.gateway.exchange import ProxiedRequest
from cortex.gateway.neuron_client import error_from_response
from cortex.gateway.router import OnWait
from cortex.gateway.state import GATEWAY, MODEL, NEURON
from cortex.web import CLIENT_GONE, end_sse, json_response, read_object, start_sse

CHAT_PATH = "/v1/chat/completions"
_UPSTREAM_BROKE = (aiohttp.ClientError, TimeoutError)
RATE_LIMIT_RETRY_S = 1.0


async def messages(request: web.Request) -> web.StreamResponse:
    """`POST /v1/messages`: one Messages turn, JSON or streamed."""
    body = await read_object(request)
    chat = translate.to_openai_chat(body, stream=False)
    px = ProxiedRequest(request, chat["model"])
    limit = px.max_context()
    if limit:
        chat["max_tokens"] = min(chat["max_tokens"], limit)
    if body.get("stream") is True:
        return await _stream(request, px, body, chat)
    await _open(px, chat, stream=False)
    async with px:
        try:
            answer = orjson.loads(await px.read())
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"neuron {px.neuron} answered something else than JSON") from exc
    if not isinstance(answer, dict):
        raise UpstreamError(f"neuron {px.neuron} answered something else than a completion")
    px.note_usage(answer.get("usage"))
    message = translate.to_anthropic_message(
        answer, model=body["model"], stop_sequences=body.get("stop_sequences")
    )
    return json_response(message, headers=px.headers())


async def count_tokens(request: web.Request) -> web.Response:
    """`POST /v1/messages/count_tokens`: `{"input_tokens": N}` from the neuron's `/tokenize`."""
    body = await read_object(request)
    tokenize = translate.to_openai_tokenize(body)
    gw = request.app[GATEWAY]
    tokenize["model"] = request[MODEL] = gw.models.resolve(body["model"])
    route = await gw.router.route(tokenize["model"])
    request[NEURON] = route.neuron.name
    try:
        answer = await route.neuron.client.tokenize(tokenize)
    except _UPSTREAM_BROKE as exc:
        raise UpstreamError(f"neuron {route.neuron.name} failed to count tokens: {exc}") from exc
    return json_response({"input_tokens": int(answer["count"])})


async def _open(
    px: ProxiedRequest, chat: dict[str, Any], stream: bool, on_wait: OnWait | None = None
) -> None:
    """`px.open` for the chat request; a 429 always carries `retry-after` (Anthropic clients
    wait for it; the neuron's error envelope has none)."""
    try:
        await px.open(CHAT_PATH, chat, stream, on_wait)
    except RateLimited as exc:
        exc.retry_after = exc.retry_after or RATE_LIMIT_RETRY_S
        raise


async def _stream(
    request: web.Request, px: ProxiedRequest, body: dict[str, Any], chat: dict[str, Any]
) -> web.StreamResponse:
    translator = StreamTranslator(body["model"], stop_sequences=body.get("stop_sequences"))
    out: web.StreamResponse | None = None

    async def on_wait() -> None:
        nonlocal out
        if out is None:
            out = await start_sse(request, {})
        await _send(out, translator.ping())

    try:
        await _open(px, chat, True, on_wait)
    except CortexError as exc:
        if out is None:
            raise
        px.count(exc.code)
        await end_sse(out, _encode(translator.fail(exc)))
        return out
    async with px:
        out = out or await start_sse(request, px.headers())
        try:
            await _send(out, translator.start(_prompt_usage(px)))
            await _relay(px, translator, out)
            events = translator.finish()
        except CLIENT_GONE:
            px.client_gone()
            return out
        except CortexError as exc:
            px.close(broken=True)
            events = translator.fail(exc)
        except _UPSTREAM_BROKE as exc:
            events = translator.fail(px.broken(f"{exc or type(exc).__name__}"))
        await end_sse(out, _encode(events))
    return out


def _prompt_usage(px: ProxiedRequest) -> dict[str, int] | None:
    """The prompt's token count from the neuron's stream headers, as an OpenAI `usage`."""
    value = px.response.headers.get(PROMPT_TOKENS_HEADER, "")
    return {"prompt_tokens": int(value)} if value.isdigit() else None


async def _relay(px: ProxiedRequest, translator: StreamTranslator, out: web.StreamResponse) -> None:
    """Translate the neuron's chunks as they come until `[DONE]` or the end of the body."""
    parser = sse.SSEParser()
    async for data in px.response.content.iter_any():
        for event in parser.feed(data):
            if event.data is None:
                await _send(out, translator.ping())  # the neuron's keep-alive while prefilling
                continue
            if event.done:
                return
            chunk = event.json()
            if not isinstance(chunk, dict):
                raise UpstreamError(f"neuron {px.neuron} sent a malformed chunk")
            if "error" in chunk:
                raise error_from_response(500, event.data.encode(), px.neuron)
            if chunk.get("usage"):
                px.note_usage(chunk["usage"])
            events = translator.feed(chunk)
            if any(e["type"] == "content_block_delta" for e in events):
                px.note_first_token()
            await _send(out, events)


def _encode(events: list[dict[str, Any]]) -> bytes:
    return b"".join(sse.event(e["type"], e) for e in events)


async def _send(out: web.StreamResponse, events: list[dict[str, Any]]) -> None:
    if events:
        await out.write(_encode(events))
