"""OpenAI passthrough: `POST /v1/chat/completions` and `POST /v1/completions`.

The body is parsed once (orjson) to read `model` and `stream`; it is re-encoded only when the
model is an alias or a stream must ask the neuron for `stream_options.include_usage` (token
metrics need the final usage chunk; when the client did not ask for it, that chunk is stripped
on the way back). Otherwise the client's bytes go to the neuron untouched.

Streams are relayed as they arrive, cut only at SSE event boundaries (`\\n\\n`), never buffered
further. While a cold load runs the client gets the SSE headers and a `: loading <model>`
comment every second. A neuron that breaks off mid-stream (or stalls, see exchange.py) gives
the client a final `data: {"error": {...}}` event, `data: [DONE]` and a clean end;
a client that goes away closes the upstream connection, which cancels the generation.
"""

from __future__ import annotations

import contextlib

import aiohttp
import orjson
from aiohttp import web

from cortex.api import sse
from cortex.errors import CortexError, InvalidRequest
from cortex.gateway.exchange import USAGE_RE, ProxiedRequest, encode_body, has_token
from cortex.web import CLIENT_GONE, end_sse, parse_object, read_body, start_sse


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Handler for the OpenAI routes: route, relay, count."""
    raw = await read_body(request)
    body = parse_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    px = ProxiedRequest(request, model)
    if px.model != model or (stream and not wants_usage):
        raw = encode_body(body, px.model, stream)
    early: web.StreamResponse | None = None

    async def on_wait() -> None:
        nonlocal early
        if early is None:
            early = await start_sse(request, {})
        await early.write(sse.comment(f"loading {px.model}"))

    try:
        await px.open(request.path, raw, stream, on_wait if stream else None)
    except CortexError as exc:
        if early is None:
            raise
        px.count(exc.code)
        await _end_with_error(early, exc)
        return early
    async with px:
        if stream:
            return await _relay_stream(request, px, early, wants_usage)
        return await _relay_json(px)


async def _relay_json(px: ProxiedRequest) -> web.Response:
    response = px.response
    data = await px.read()
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        px.note_usage(orjson.loads(data).get("usage"))
    headers = px.headers()
    headers["Content-Type"] = response.headers.get("Content-Type", "application/json")
    return web.Response(body=data, status=response.status, headers=headers)


async def _relay_stream(
    request: web.Request, px: ProxiedRequest, early: web.StreamResponse | None, keep_usage: bool
) -> web.StreamResponse:
    out = early or await start_sse(request, px.headers())
    content = px.response.content
    pending = b""
    done = False
    while True:
        try:
            chunk = await content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            await _end_with_error(out, px.broken(f"{exc or type(exc).__name__}"))
            return out
        if not chunk:
            break
        pending += chunk
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        ready, pending = pending[: end + 2], pending[end + 2 :]
        if px.first_token_at is None and has_token(ready):
            px.note_first_token()
        if USAGE_RE.search(ready):
            ready = _take_usage(ready, px, keep_usage)
        done = done or ready.endswith(sse.DONE)
        try:
            await out.write(ready)
        except CLIENT_GONE:
            px.client_gone()
            return out
    if not done:
        await _end_with_error(out, px.broken("the stream ended without [DONE]"))
    return out


def _take_usage(events: bytes, px: ProxiedRequest, keep: bool) -> bytes:
    """Count the usage chunk; drop it when the client did not ask for it."""
    kept = []
    for event in events.split(b"\n\n")[:-1]:
        if event.startswith(b"data: {") and USAGE_RE.search(event):
            try:
                chunk = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                chunk = None
            if isinstance(chunk, dict):
                px.note_usage(chunk.get("usage"))
                if not keep and not chunk.get("choices"):
                    continue
        kept.append(event + b"\n\n")
    return b"".join(kept)


async def _end_with_error(out: web.StreamResponse, error: CortexError) -> None:
    """End a started stream with an in-band error event and `[DONE]`, as the neuron does."""
    await end_sse(out, sse.data(error.openai_envelope()) + sse.DONE)
