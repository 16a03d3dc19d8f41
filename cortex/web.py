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
- `make_runner(app, limits)` and `listen(runner, address, render)`: how both servers serve, with
  the same hardening (README: "Server limits"). A connection that has not sent a complete
  request's headers within `idle_timeout` (also the keep-alive time between requests) is
  closed; a body not read within `body_timeout` is 408; past `max_connections` open
  connections a new one gets a 503 JSON answer and is closed at once, so the process never
  runs out of file descriptors and keeps answering the connections it has. Header lines
  longer than 8190 bytes (the request line too: long URLs) or more than 128 headers are
  answered 400 in the server's JSON envelope, logged as one warning line without a traceback.
  Handlers run with `handler_cancellation=True`: a client that disconnects cancels its
  handler at once (the neuron then cancels the generation, the gateway its upstream request).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientConnectionResetError, web
from aiohttp.web_protocol import RequestHandler

from cortex.api import sse
from cortex.config import split_listen
from cortex.errors import (
    ConfigError,
    CortexError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    printable,
)

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


@dataclass(frozen=True)
class ServerLimits:
    """How long a client may take and how many connections a server keeps (see module doc)."""

    idle_timeout: float = 15.0
    body_timeout: float = 60.0
    max_connections: int = 4096

    @classmethod
    def of(cls, section: Any) -> ServerLimits:
        """The limits of a config section (`[gateway]` or `[neuron]`)."""
        return cls(
            float(section.idle_timeout), float(section.body_timeout), int(section.max_connections)
        )


LIMITS = web.AppKey("cortex.server_limits", ServerLimits)


async def read_body(request: web.Request) -> bytes:
    """The raw request body; 413 past the app's `client_max_size`, 408 when the client takes
    longer than `body_timeout` to send it (a slow-loris body holds no handler for ever)."""
    limits = request.app.get(LIMITS) or ServerLimits()
    try:
        async with asyncio.timeout(limits.body_timeout or None):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise http_error(exc, request) from None
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limits.body_timeout:g}s"
        ) from None


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


def make_runner(app: web.Application, limits: ServerLimits, **kwargs: Any) -> web.AppRunner:
    """The runner both servers use: handler cancellation, `idle_timeout` as keep-alive, no
    access log; `kwargs` go to `web.AppRunner` (e.g. `shutdown_timeout`)."""
    app[LIMITS] = limits
    return web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        keepalive_timeout=limits.idle_timeout,
        **kwargs,
    )


async def listen(runner: web.AppRunner, address: str, render: Renderer = openai_error) -> None:
    """Serve `runner` on `address` (`host:port`) with its app's `LIMITS`; errors the HTTP
    parser finds (oversized headers, bad requests) are answered by `render`."""
    host, port = split_listen(address)
    site = _Site(runner, host, port, render=render)
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from None


class _Site(web.TCPSite):
    """A TCP site whose connections are `_GuardedHandler`s (connection cap, JSON errors)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, render: Renderer) -> None:
        super().__init__(runner, host, port)
        self._render = render

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        app = self._runner.app
        cap = (app.get(LIMITS) or ServerLimits()).max_connections
        render = self._render

        def factory() -> RequestHandler:
            handler = server()
            # Same memory layout (no slots of its own): only the behaviour below changes.
            handler.__class__ = _GuardedHandler
            _GUARDS[handler] = (cap, render)
            return handler

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, reuse_address=self._reuse_address
        )


_GUARDS: dict[RequestHandler, tuple[int, Renderer]] = {}
_FULL = orjson.dumps(Unavailable("too many connections", retry_after=1).openai_envelope())
_FULL_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
) % (len(_FULL), _FULL)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler with a connection cap and errors in the JSON envelope."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cap, _ = _GUARDS[self]
        if self._manager is not None and len(self._manager.connections) >= cap:
            # Refused before aiohttp tracks it: answer and close, nothing else is kept.
            _GUARDS.pop(self, None)
            transport.write(_FULL_RESPONSE)  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if _GUARDS.pop(self, None) is None and self.transport is None:
            return  # refused in connection_made: aiohttp never started on it
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        # A malformed request (header or URL too long, bad syntax): the client's problem, one
        # warning line, and the answer in the server's envelope rather than plain text.
        reason = printable(message or getattr(exc, "message", "") or "bad request", 200)
        log.warning("refused a malformed request from %s: %s", request.remote, reason)
        error = InvalidRequest(f"malformed request: {reason}")
        error.status = status
        response = _GUARDS.get(self, (0, openai_error))[1](request, error)
        response.force_close()
        return response
