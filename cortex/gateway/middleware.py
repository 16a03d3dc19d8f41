"""Middlewares: error rendering with request metrics (outer) and API-key auth (inner).

Dialect: routes under `/v1/messages` answer errors in the Anthropic envelope (overload as 529),
every other route in the OpenAI one; `dialect(request)` is the one place that decides. A route
that has already started a streaming answer reports errors in-band itself.

Auth: with `[gateway] api_keys` set, every route but `GET /health` and `HEAD /` needs one of the
keys, as `Authorization: Bearer <key>` or `x-api-key: <key>` (keys compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

import orjson
from aiohttp import web

from cortex.errors import (
    CortexError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    anthropic_status,
)
from cortex.gateway.context import ARRIVED, GATEWAY, MODEL, NEURON

log = logging.getLogger("cortex.gateway")
ANTHROPIC_PREFIX = "/v1/messages"
APIS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/models": "models",
}
OPEN_PATHS = frozenset({"/health"})


def dialect(request: web.Request) -> str:
    """`anthropic` for the Anthropic routes, else `openai`."""
    return "anthropic" if request.path.startswith(ANTHROPIC_PREFIX) else "openai"


def render_error(request: web.Request, error: CortexError) -> web.Response:
    """An error answer in the request's dialect, with Retry-After where it applies."""
    if dialect(request) == "anthropic":
        status, body = anthropic_status(error), error.anthropic_envelope()
    else:
        status, body = error.status, error.openai_envelope()
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=error.headers(),
    )


def _from_http(exc: web.HTTPException, request: web.Request) -> CortexError:
    if exc.status == 404:
        return NotFound(f"no route for {request.method} {request.path}")
    if exc.status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    error = InvalidRequest(exc.text or exc.reason)
    error.status = exc.status
    return error


def _api(request: web.Request) -> str:
    path = request.path
    return APIS.get(path) or ("fleet" if path.startswith("/fleet") else "other")


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Render errors, count requests (`cortex_requests_total`) and errors by reason."""
    request[ARRIVED] = time.perf_counter()
    error: CortexError | None = None
    try:
        response = await handler(request)
    except CortexError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http(exc, request)
    except asyncio.CancelledError:
        count_request(request, "client_disconnect", None)
        raise
    except Exception as exc:  # a bug must still answer in the envelope, never a bare 500 page
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = CortexError(f"internal error: {type(exc).__name__}: {exc}")
    if error is not None:
        response = render_error(request, error)
        count_request(request, error.code, response.status)
    elif request.path not in OPEN_PATHS:
        count_request(request, None, response.status)
    return response


def count_request(request: web.Request, reason: str | None, status: int | None) -> None:
    """Count an error by `reason` and/or a finished request by `status` (None: skip it)."""
    metrics = request.app[GATEWAY].metrics
    model, neuron = request.get(MODEL, ""), request.get(NEURON, "")
    if reason is not None:
        metrics.of(metrics.errors, reason, model, neuron).inc()
    if status is not None:
        metrics.of(metrics.requests, _api(request), str(status), model, neuron).inc()


def auth_middleware(keys: list[str]):
    """A middleware requiring one of `keys`."""
    encoded = [k.encode() for k in keys]

    @web.middleware
    async def auth(request: web.Request, handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or (request.method == "HEAD" and request.path == "/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        else:
            given = request.headers.get("x-api-key", "")
        candidate = given.encode()
        # Compare against every key so timing says nothing about which one nearly matched.
        ok = False
        for key in encoded:
            ok |= hmac.compare_digest(candidate, key)
        if not given or not ok:
            raise Unauthorized("missing or invalid API key (Authorization: Bearer or x-api-key)")
        return await handler(request)

    return auth
