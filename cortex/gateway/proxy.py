"""OpenAI passthrough: `POST /v1/chat/completions` and `POST /v1/completions`.

The body is parsed once (orjson) to read `model` and `stream`; it is re-encoded only when the
model is an alias or a stream must ask the neuron for `stream_options.include_usage` (token
metrics need the final usage chunk; when the client did not ask for it, that chunk is stripped
on the way back). Otherwise the client's bytes go to the neuron untouched.

Streams are relayed as they arrive, cut only at SSE event boundaries (`\\n\\n`), never buffered
further. While a cold load runs the client gets the SSE headers and a `: loading <model>`
comment every second. A neuron that breaks off mid-stream (or stalls past
`stream_read_timeout`) gives the client a final `data: {"error": {...}}` event and a clean end;
a client that goes away closes the upstream connection, which cancels the generation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cortex.api import sse
from cortex.errors import CortexError, InvalidRequest, UpstreamError
from cortex.gateway.context import GATEWAY
from cortex.gateway.middleware import count_request
from cortex.gateway.upstream import Upstream, encode_body, open_upstream

_USAGE_MARKS = (b'"usage":{', b'"usage": {')
_TOKEN_MARKS = (b'"content":"', b'"reasoning_content":"', b'"text":"')
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidRequest."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


async def start_sse(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Prepare a `text/event-stream` response."""
    response = web.StreamResponse(status=200, headers={**sse.HEADERS, **headers})
    await response.prepare(request)
    return response


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Handler for the OpenAI routes: route, relay, count."""
    raw = await request.read()
    body = parse_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    resolved = request.app[GATEWAY].models.resolve(model)
    if resolved != model or (stream and not wants_usage):
        raw = encode_body(body, resolved, stream)
    early: web.StreamResponse | None = None

    async def on_wait() -> None:
        nonlocal early
        if early is None:
            early = await start_sse(request, {})
        await early.write(sse.comment(f"loading {resolved}"))

    try:
        upstream = await open_upstream(
            request, resolved, request.path, raw, stream, on_wait if stream else None
        )
    except CortexError as exc:
        if early is None:
            raise
        count_request(request, exc.code, None)
        await _end_with_error(early, exc)
        return early
    async with upstream:
        if stream:
            return await _relay_stream(request, upstream, early, wants_usage)
        return await _relay_json(upstream)


async def _relay_json(upstream: Upstream) -> web.Response:
    response = upstream.response
    try:
        data = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"neuron {upstream.neuron} broke off its answer: {exc}") from exc
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        upstream.note_usage(orjson.loads(data).get("usage"))
    headers = upstream.headers()
    headers["Content-Type"] = response.headers.get("Content-Type", "application/json")
    return web.Response(body=data, status=response.status, headers=headers)


async def _relay_stream(
    request: web.Request, upstream: Upstream, early: web.StreamResponse | None, keep_usage: bool
) -> web.StreamResponse:
    out = early or await start_sse(request, upstream.headers())
    content = upstream.response.content
    pending = b""
    done = False
    while True:
        try:
            chunk = await content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return await _broken(request, upstream, out, f"{exc or type(exc).__name__}")
        if not chunk:
            break
        pending += chunk
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        ready, pending = pending[: end + 2], pending[end + 2 :]
        if upstream.first_token_at is None and _has_token(ready):
            upstream.note_first_token()
        if _USAGE_MARKS[0] in ready or _USAGE_MARKS[1] in ready:
            ready = _take_usage(ready, upstream, keep_usage)
        done = done or ready.endswith(sse.DONE)
        try:
            await out.write(ready)
        except _CLIENT_GONE:
            count_request(request, "client_disconnect", None)
            upstream.close(broken=True)
            return out
    if not done:
        return await _broken(request, upstream, out, "the stream ended without [DONE]")
    return out


def _has_token(events: bytes) -> bool:
    for mark in _TOKEN_MARKS:
        i = events.find(mark)
        if i >= 0 and events[i + len(mark) : i + len(mark) + 1] != b'"':
            return True
    return b'"tool_calls":[' in events


def _take_usage(events: bytes, upstream: Upstream, keep: bool) -> bytes:
    """Count the usage chunk; drop it when the client did not ask for it."""
    kept = []
    for event in events.split(b"\n\n")[:-1]:
        if event.startswith(b"data: {") and (_USAGE_MARKS[0] in event or _USAGE_MARKS[1] in event):
            try:
                chunk = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                chunk = None
            if isinstance(chunk, dict):
                upstream.note_usage(chunk.get("usage"))
                if not keep and not chunk.get("choices"):
                    continue
        kept.append(event + b"\n\n")
    return b"".join(kept)


async def _broken(
    request: web.Request, upstream: Upstream, out: web.StreamResponse, why: str
) -> web.StreamResponse:
    """The neuron failed mid-stream: tell the client in-band and end cleanly."""
    count_request(request, "upstream_broken", None)
    upstream.close(broken=True)
    request.app[GATEWAY].poller.poke(upstream.route.neuron)
    error = UpstreamError(f"neuron {upstream.neuron} failed mid-stream: {why}")
    await _end_with_error(out, error)
    return out


async def _end_with_error(out: web.StreamResponse, error: CortexError) -> None:
    try:
        await out.write(sse.data(error.openai_envelope()))
        await out.write_eof()
    except _CLIENT_GONE:
        pass
