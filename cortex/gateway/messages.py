"""The Anthropic Messages API on the gateway: `POST /v1/messages` and `/v1/messages/count_tokens`.

Each request is translated to the neuron's OpenAI chat (`cortex.api.translate`), routed and
cold-loaded by `open_upstream` like any OpenAI request, and the answer is translated back: a
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
from cortex.gateway.context import GATEWAY, MODEL, NEURON, Gateway
from cortex.gateway.neuron_client import error_from_response
from cortex.gateway.proxy import parse_body, start_sse
from cortex.gateway.router import OnWait
from cortex.gateway.upstream import Upstream, open_upstream

CHAT_PATH = "/v1/chat/completions"
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_UPSTREAM_BROKE = (aiohttp.ClientError, TimeoutError)
RATE_LIMIT_RETRY_S = 1.0


async def messages(request: web.Request) -> web.StreamResponse:
    """`POST /v1/messages`: one Messages turn, JSON or streamed."""
    body = parse_body(await request.read())
    chat = translate.to_openai_chat(body, stream=False)
    limit = _max_context(request.app[GATEWAY], chat["model"])
    if limit:
        chat["max_tokens"] = min(chat["max_tokens"], limit)
    if body.get("stream") is True:
        return await _stream(request, body, chat)
    upstream = await _open(request, body["model"], chat, stream=False)
    async with upstream:
        try:
            answer = orjson.loads(await upstream.response.read())
        except (*_UPSTREAM_BROKE, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"neuron {upstream.neuron} broke off its answer: {exc}") from exc
    if not isinstance(answer, dict):
        raise UpstreamError(f"neuron {upstream.neuron} answered something else than a completion")
    upstream.note_usage(answer.get("usage"))
    message = translate.to_anthropic_message(
        answer, model=body["model"], stop_sequences=body.get("stop_sequences")
    )
    return web.Response(
        body=orjson.dumps(message), content_type="application/json", headers=upstream.headers()
    )


async def count_tokens(request: web.Request) -> web.Response:
    """`POST /v1/messages/count_tokens`: `{"input_tokens": N}` from the neuron's `/tokenize`."""
    body = parse_body(await request.read())
    tokenize = translate.to_openai_tokenize(body)
    gw = request.app[GATEWAY]
    tokenize["model"] = request[MODEL] = gw.models.resolve(body["model"])
    route = await gw.router.route(tokenize["model"])
    request[NEURON] = route.neuron.name
    try:
        answer = await route.neuron.client.tokenize(tokenize)
    except _UPSTREAM_BROKE as exc:
        raise UpstreamError(f"neuron {route.neuron.name} failed to count tokens: {exc}") from exc
    return web.Response(
        body=orjson.dumps({"input_tokens": int(answer["count"])}), content_type="application/json"
    )


async def _open(
    request: web.Request,
    model: str,
    chat: dict[str, Any],
    stream: bool,
    on_wait: OnWait | None = None,
) -> Upstream:
    """`open_upstream` for the chat request; a 429 always carries `retry-after` (Anthropic
    clients wait for it; the neuron's error envelope has none)."""
    try:
        return await open_upstream(request, model, CHAT_PATH, chat, stream, on_wait)
    except RateLimited as exc:
        exc.retry_after = exc.retry_after or RATE_LIMIT_RETRY_S
        raise


def _max_context(gw: Gateway, model: str) -> int | None:
    """The largest context any neuron (or models.toml) gives `model`, if known."""
    resolved = gw.models.resolve(model)
    known = [n.models[resolved].max_context for n in gw.fleet if resolved in n.models]
    entry = gw.models.entry(resolved)
    known.append(entry.max_context if entry else None)
    return max((int(k) for k in known if k), default=None)


async def _stream(
    request: web.Request, body: dict[str, Any], chat: dict[str, Any]
) -> web.StreamResponse:
    translator = StreamTranslator(body["model"], stop_sequences=body.get("stop_sequences"))
    out: web.StreamResponse | None = None

    async def on_wait() -> None:
        nonlocal out
        if out is None:
            out = await start_sse(request, {})
        await _send(out, translator.ping())

    try:
        upstream = await _open(request, body["model"], chat, True, on_wait)
    except CortexError as exc:
        if out is None:
            raise
        await _end(out, translator.fail(exc))
        return out
    async with upstream:
        out = out or await start_sse(request, upstream.headers())
        try:
            await _send(out, translator.start(_prompt_usage(upstream)))
            await _relay(upstream, translator, out)
            events = translator.finish()
        except _CLIENT_GONE:
            upstream.close(broken=True)  # dropping the connection cancels the generation
            return out
        except CortexError as exc:
            upstream.close(broken=True)
            events = translator.fail(exc)
        except _UPSTREAM_BROKE as exc:
            upstream.close(broken=True)
            why = f"neuron {upstream.neuron} failed mid-stream: {exc or type(exc).__name__}"
            events = translator.fail(UpstreamError(why))
        await _end(out, events)
    return out


def _prompt_usage(upstream: Upstream) -> dict[str, int] | None:
    """The prompt's token count from the neuron's stream headers, as an OpenAI `usage`."""
    value = upstream.response.headers.get(PROMPT_TOKENS_HEADER, "")
    return {"prompt_tokens": int(value)} if value.isdigit() else None


async def _relay(upstream: Upstream, translator: StreamTranslator, out: web.StreamResponse) -> None:
    """Translate the neuron's chunks as they come until `[DONE]` or the end of the body."""
    parser = sse.SSEParser()
    async for data in upstream.response.content.iter_any():
        for event in parser.feed(data):
            if event.data is None:
                await _send(out, translator.ping())  # the neuron's keep-alive while prefilling
                continue
            if event.done:
                return
            chunk = event.json()
            if not isinstance(chunk, dict):
                raise UpstreamError(f"neuron {upstream.neuron} sent a malformed chunk")
            if "error" in chunk:
                raise error_from_response(500, event.data.encode(), upstream.neuron)
            if chunk.get("usage"):
                upstream.note_usage(chunk["usage"])
            events = translator.feed(chunk)
            if any(e["type"] == "content_block_delta" for e in events):
                upstream.note_first_token()
            await _send(out, events)


async def _send(out: web.StreamResponse, events: list[dict[str, Any]]) -> None:
    if events:
        await out.write(b"".join(sse.event(e["type"], e) for e in events))


async def _end(out: web.StreamResponse, events: list[dict[str, Any]]) -> None:
    """Send the last events and end the body; a client already gone is no error."""
    try:
        await _send(out, events)
        await out.write_eof()
    except _CLIENT_GONE:
        pass
