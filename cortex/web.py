"""aiohttp plumbing both servers share: JSON bodies in and out, the error middleware, key auth,
and SSE responses. The gateway and the neuron build their apps from these pieces and add only
what is theirs (the gateway's dialects and request metrics, the neuron's drain gate).

- `error_middleware(render, observe)`: every failure becomes an error answer made by `render`
  (each server's envelope). `CortexError`s carry their own status; aiohttp's HTTP exceptions
  (404 unknown route, 405, 413 body too large) are mapped to the matching error; anything else
  is logged with its traceback and answered as a 500 that never shows the exception. `observe`
  sees every finished request (for metrics), with status `None` when the client went away.
- `key_auth(keys, open_paths, message)`: one of `keys` as `Authorization: Bearer <key>` or
  `x-api-key: <key>`, compared in constant time against every key.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import orjson
from aiohttp import ClientConnectionResetError, web

from cortex.api import sse
from cortex.errors import CortexError, InvalidRequest, NotFound, PayloadTooLarge, Unauthorized

log = logging.getLogger("cortex.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Renderer = Callable[[web.Request, CortexError], web.Response]
Observer = Callable[[web.Request, CortexError | None, int | None], None]
CLIENT_GONE_ERRORS = (ConnectionResetError, asyncio.CancelledError)
# What writing to a client that left raises.
CLIENT_GONE = (ConnectionResetError, ClientConnectionResetError)


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(
        body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json"
    )


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; 400 when it is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param="body")
    return body


async def read_body(request: web.Request) -> bytes:
    """The raw request body; 413 past the app's `client_max_size`."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise http_error(exc, request) from None


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one, 413 when it is too large."""
    return parse_object(await read_body(request))


def payload_too_large(request: web.Request) -> PayloadTooLarge:
    """413 for a body over the app's `client_max_size`."""
    return PayloadTooLarge(f"request body is larger than the {request.client_max_size}-byte limit")


def http_error(exc: web.HTTPException, request: web.Request) -> CortexError:
    """The `CortexError` for one of aiohttp's HTTP exceptions (status kept)."""
    if exc.status == 404:
        return NotFound(f"no route for {request.method} {request.path}")
    if exc.status == 413:
        return PayloadTooLarge(
            f"request body is larger than the {request.client_max_size}-byte limit"
        )
    error = InvalidRequest(exc.reason)
    error.status = exc.status  # keep 405 and friends as aiohttp decided
    error.code = exc.reason.lower().replace(" ", "_")
    return error


def openai_error(_: web.Request, error: CortexError) -> web.Response:
    """The OpenAI error envelope for `error`, with its status and headers (Retry-After...)."""
    return json_response(error.openai_envelope(), status=error.status, headers=error.headers())


def error_middleware(render: Renderer = openai_error, observe: Observer | None = None):
    """The outermost middleware: failures rendered by `render`, requests shown to `observe`."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except CortexError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = http_error(exc, request)
        except CLIENT_GONE_ERRORS:
            log.info("%s %s: the client went away", request.method, request.path)
            if observe is not None:
                observe(request, None, None)
            raise
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            error = CortexError("internal error (see the server log)")
        else:
            if observe is not None:
                observe(request, None, response.status)
            return response
        response = render(request, error)
        if observe is not None:
            observe(request, error, response.status)
        return response

    return errors


def presented_key(request: web.Request) -> str:
    """The key a request presents: `Authorization: Bearer <key>`, else `x-api-key`."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key", "")


def key_auth(keys: Collection[str], open_paths: Collection[str], message: str):
    """A middleware requiring one of `keys` on every path but `open_paths` (and `HEAD /`)."""
    encoded = [k.encode() for k in keys]

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths or (request.method == "HEAD" and request.path == "/"):
            return await handler(request)
        given = presented_key(request).encode()
        # Compare against every key so timing says nothing about which one nearly matched.
        ok = False
        for key in encoded:
            ok |= hmac.compare_digest(given, key)
        if not given or not ok:
            raise Unauthorized(message)
        return await handler(request)

    return auth


async def start_sse(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    """Prepare a `text/event-stream` response with `headers` added."""
    response = web.StreamResponse(status=200, headers={**sse.HEADERS, **headers})
    await response.prepare(request)
    return response


async def end_sse(response: web.StreamResponse, tail: bytes = b"") -> None:
    """Write the last bytes of a started stream and end it; a client already gone is no error."""
    try:
        if tail:
            await response.write(tail)
        await response.write_eof()
    except CLIENT_GONE:
        pass
