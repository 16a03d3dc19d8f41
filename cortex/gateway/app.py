"""The gateway application: `create_app(config)`, the one route table, the middlewares.

Serve it with `web.AppRunner(app, handler_cancellation=True)` so a client that disconnects
cancels its handler at once (which closes the upstream connection and so the generation).
The metrics application for `metrics_listen` is `app[GATEWAY].metrics.app()`.

Dialect: routes under `/v1/messages` answer errors in the Anthropic envelope (overload as 529),
every other route in the OpenAI one; `render_error` is the one place that decides. A route that
has already started a streaming answer reports errors in-band itself.

Auth: with `[gateway] api_keys` set, every route but `GET /health` and `HEAD /` needs one of the
keys, as `Authorization: Bearer <key>` or `x-api-key: <key>`. The metrics port is open unless
`metrics_auth = true`, which asks the same keys there (Prometheus: `authorization` in its
scrape config).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from cortex.config import CortexConfig
from cortex.errors import CortexError, anthropic_status
from cortex.gateway import anthropic_proxy, fleet_routes, openai_proxy, responses_proxy
from cortex.gateway.state import ARRIVED, GATEWAY, Gateway
from cortex.web import Handler, error_middleware, json_response, key_auth

ANTHROPIC_PREFIX = "/v1/messages"
OPEN_PATHS = frozenset({"/health"})

ROUTES = [
    web.get("/", fleet_routes.root),
    web.get("/health", fleet_routes.health),
    web.get("/v1/models", fleet_routes.models),
    web.post("/v1/chat/completions", openai_proxy.passthrough),
    web.post("/v1/completions", openai_proxy.passthrough),
    web.post("/v1/messages", anthropic_proxy.messages),
    web.post("/v1/messages/count_tokens", anthropic_proxy.count_tokens),
    web.post("/v1/responses", responses_proxy.create),
    web.get("/v1/responses/{response_id}", responses_proxy.retrieve),
    web.delete("/v1/responses/{response_id}", responses_proxy.delete),
    web.get("/v1/responses/{response_id}/input_items", responses_proxy.input_items),
    web.get("/fleet", fleet_routes.fleet),
    web.post("/fleet/load", fleet_routes.load),
    web.post("/fleet/unload", fleet_routes.unload),
    web.post("/fleet/pin", fleet_routes.pin),
]


def render_error(request: web.Request, error: CortexError) -> web.Response:
    """An error answer in the request's dialect, with Retry-After where it applies."""
    if request.path.startswith(ANTHROPIC_PREFIX):
        status, body = anthropic_status(error), error.anthropic_envelope()
    else:
        status, body = error.status, error.openai_envelope()
    return json_response(body, status=status, headers=error.headers())


def _observe(request: web.Request, error: CortexError | None, status: int | None) -> None:
    """Request metrics: errors by reason, finished requests by status (not health checks)."""
    gw = request.app[GATEWAY]
    if status is None:
        gw.count_request(request, "client_disconnect", None)
    elif error is not None:
        gw.count_request(request, error.code, status)
    elif request.path not in OPEN_PATHS:
        gw.count_request(request, None, status)


@web.middleware
async def _arrival(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[ARRIVED] = time.perf_counter()
    return await handler(request)


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    try:
        await gateway.start()
        yield
    finally:
        gateway.router.cancel_loads()
        await gateway.close()


API_KEY_MESSAGE = "missing or invalid API key (Authorization: Bearer or x-api-key)"


def metrics_app(config: CortexConfig, gateway: Gateway) -> web.Application:
    """The metrics port's app: `/metrics`, behind the API keys when `metrics_auth` is set."""
    middlewares = [error_middleware()]
    if config.gateway.metrics_auth and config.gateway.api_keys:
        middlewares.append(key_auth(config.gateway.api_keys, (), API_KEY_MESSAGE))
    return gateway.metrics.app(middlewares)


def create_app(config: CortexConfig) -> web.Application:
    """The gateway app for `config` (neurons, models.toml, keys); started by its runner."""
    middlewares = [_arrival, error_middleware(render_error, _observe)]
    if config.gateway.api_keys:
        middlewares.append(key_auth(config.gateway.api_keys, OPEN_PATHS, API_KEY_MESSAGE))
    app = web.Application(
        middlewares=middlewares, client_max_size=int(config.gateway.max_body_bytes)
    )
    app[GATEWAY] = Gateway(config)
    app.cleanup_ctx.append(_lifespan)
    app.add_routes(ROUTES)
    return app
