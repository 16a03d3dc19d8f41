"""HTTP plumbing of the neuron: JSON in and out, and the middlewares.

Middlewares, outermost first:
- `errors`: every failure becomes the OpenAI error envelope. `CortexError`s carry their own
  status; aiohttp's HTTP exceptions (404 unknown route, 405, 413 body too large) are mapped to
  the envelope; anything else is logged with its traceback and answered as a plain 500 that
  never shows the traceback.
- `auth`: with `token` set in neuron.toml, every route but `/health` needs
  `Authorization: Bearer <token>`.
- `gatekeeper`: bodies declared larger than `max_body_bytes` get 413 before they are read (a
  chunked body is cut off by aiohttp's `client_max_size` while reading, also 413); while
  draining, every route but `/health` and `/metrics` answers 503 `shutting_down` with Retry-After.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from cortex.errors import (
    CortexError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ShuttingDown,
    Unauthorized,
)
from cortex.neuron.state import STATE

log = logging.getLogger("cortex.neuron")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/health"})
DRAIN_OPEN_PATHS = frozenset({"/health", "/metrics"})


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(
        body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json"
    )


def error_response(error: CortexError) -> web.Response:
    """The OpenAI error envelope for `error`, with its status and headers."""
    return json_response(error.openai_envelope(), status=error.status, headers=error.headers())


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one, 413 when it is too large."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param="body")
    return body


def _too_large(request: web.Request) -> PayloadTooLarge:
    limit = request.app[STATE].config.neuron.max_body_bytes
    return PayloadTooLarge(f"request body is larger than the {int(limit)}-byte limit")


def _http_error(exc: web.HTTPException) -> CortexError:
    if exc.status == 404:
        return NotFound(f"no route {exc.reason.lower()}")
    if exc.status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    error = InvalidRequest(exc.reason)
    error.status = exc.status  # keep 405 and friends as aiohttp decided
    error.code = exc.reason.lower().replace(" ", "_")
    return error


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as the OpenAI error envelope (never a traceback)."""
    try:
        return await handler(request)
    except CortexError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_http_error(exc))
    except (ConnectionResetError, TimeoutError) as exc:
        log.info("%s %s: client went away (%s)", request.method, request.path, type(exc).__name__)
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = CortexError("internal error (see the neuron log)")
        return error_response(error)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token check on every route but /health, when a token is configured."""
    token = request.app[STATE].config.neuron.token
    if token and request.path not in OPEN_PATHS:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise Unauthorized("missing or wrong bearer token")
    return await handler(request)


@web.middleware
async def gatekeeper(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Early 413 for declared-oversized bodies; 503 `shutting_down` while draining."""
    state = request.app[STATE]
    limit = state.config.neuron.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request)
    if state.draining and request.path not in DRAIN_OPEN_PATHS:
        raise ShuttingDown("this neuron is shutting down", retry_after=5.0)
    return await handler(request)
