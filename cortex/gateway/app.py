"""The gateway application: `create_app(config)` and the one route table (DESIGN.md section 5).

Serve it with `web.AppRunner(app, handler_cancellation=True)` so a client that disconnects
cancels its handler at once (which closes the upstream connection and so the generation).
The metrics application for `metrics_listen` is `app[GATEWAY].metrics.app()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from cortex.config import CortexConfig
from cortex.gateway import fleet_api, messages, proxy
from cortex.gateway.context import GATEWAY, Gateway
from cortex.gateway.middleware import auth_middleware, errors_middleware

ROUTES = [
    web.get("/", fleet_api.root),
    web.get("/health", fleet_api.health),
    web.get("/v1/models", fleet_api.models),
    web.post("/v1/chat/completions", proxy.passthrough),
    web.post("/v1/completions", proxy.passthrough),
    web.post("/v1/messages", messages.messages),
    web.post("/v1/messages/count_tokens", messages.count_tokens),
    web.get("/fleet", fleet_api.fleet),
    web.post("/fleet/load", fleet_api.load),
    web.post("/fleet/unload", fleet_api.unload),
    web.post("/fleet/pin", fleet_api.pin),
]


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    try:
        await gateway.start()
        yield
    finally:
        gateway.router.cancel_loads()
        await gateway.close()


def create_app(config: CortexConfig) -> web.Application:
    """The gateway app for `config` (neurons, models.toml, keys); started by its runner."""
    middlewares = [errors_middleware]
    if config.gateway.api_keys:
        middlewares.append(auth_middleware(config.gateway.api_keys))
    app = web.Application(
        middlewares=middlewares, client_max_size=int(config.gateway.max_body_bytes)
    )
    app[GATEWAY] = Gateway(config)
    app.cleanup_ctx.append(_lifespan)
    app.add_routes(ROUTES)
    return app
