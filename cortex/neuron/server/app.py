"""The neuron's aiohttp application: factory, route table, middlewares, background contexts.

Middlewares, outermost first: errors in the OpenAI envelope (cortex.web); with `token` set in
neuron.toml, the bearer token on every route but `/health`; the gate: bodies declared larger
than `max_body_bytes` get 413 before they are read (a chunked body is cut off while reading,
also 413), and while draining every route but `/health` and `/metrics` answers 503
`shutting_down` with Retry-After. After a request with a body over 1 MiB the freed heap is
returned to the OS (`release_heap`), so big prompts leave no lasting growth.

`create_app(config)` builds everything from a `NeuronConfig`; the device workers start and stop
with the app (`cleanup_ctx`), and preloads run in the background after start so `/health`
answers while they load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from cortex.config import NeuronConfig
from cortex.errors import ShuttingDown
from cortex.neuron.engine.devices import select_devices
from cortex.neuron.manager import ModelManager
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.registry import ModelRegistry
from cortex.neuron.server import control_routes, openai_routes
from cortex.neuron.server.state import STATE, NeuronState
from cortex.process import release_heap
from cortex.web import Handler, error_middleware, key_auth, payload_too_large

log = logging.getLogger("cortex.neuron")
OPEN_PATHS = frozenset({"/health"})
DRAIN_OPEN_PATHS = frozenset({"/health", "/metrics"})
LARGE_BODY_BYTES = 2**20  # past this, freed memory goes back to the OS after the request

ROUTES = [
    web.get("/health", control_routes.health),
    web.get("/models", control_routes.list_models),
    web.post("/models/load", control_routes.load),
    web.post("/models/unload", control_routes.unload),
    web.post("/memory/release", control_routes.release_memory),
    web.get("/models/{id:.+}/endpoint", control_routes.endpoint),
    web.post("/tokenize", control_routes.tokenize),
    web.get("/metrics", control_routes.metrics),
    web.get("/v1/models", openai_routes.list_models),
    web.post("/v1/chat/completions", openai_routes.chat_completions),
    web.post("/v1/completions", openai_routes.completions),
]


def create_app(config: NeuronConfig, public_url: str = "http://127.0.0.1:13131") -> web.Application:
    """The neuron app for `config`; `public_url` is what `/models/{id}/endpoint` answers."""
    from cortex.neuron.engine.worker import DeviceWorker

    engine_config = config.engine
    device_list = select_devices(config.neuron.devices)
    workers = {d: DeviceWorker(d, engine_config) for d in device_list}
    registry = ModelRegistry(
        [Path(p) for p in config.neuron.models_dirs], config.neuron.hub_download
    )
    # The metrics read the manager's stats only at scrape time, once `manager` is bound.
    metrics = NeuronMetrics(lambda: manager.stats())
    manager = ModelManager(registry, workers, engine_config, metrics)
    state = NeuronState(
        config=config,
        registry=registry,
        devices=device_list,
        metrics=metrics,
        manager=manager,
        public_url=public_url,
    )
    if config.neuron.name:
        state.node = config.neuron.name
    middlewares = [error_middleware()]
    if config.neuron.token:
        middlewares.append(
            key_auth([config.neuron.token], OPEN_PATHS, "missing or wrong bearer token")
        )
    middlewares.append(_gate)
    app = web.Application(
        middlewares=middlewares, client_max_size=int(config.neuron.max_body_bytes)
    )
    app[STATE] = state
    app.add_routes(ROUTES)
    app.cleanup_ctx.append(_workers)
    app.cleanup_ctx.append(_preload)
    return app


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Early 413 for declared-oversized bodies; 503 `shutting_down` while draining."""
    limit = request.client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise payload_too_large(request)
    if request.app[STATE].draining and request.path not in DRAIN_OPEN_PATHS:
        raise ShuttingDown("this neuron is shutting down", retry_after=5.0)
    if (request.content_length or 0) < LARGE_BODY_BYTES:
        return await handler(request)
    try:
        return await handler(request)
    finally:
        release_heap()


async def _workers(app: web.Application) -> AsyncIterator[None]:
    manager = app[STATE].manager
    for worker in manager.workers.values():
        worker.start()
    yield
    await manager.unload_all()
    for worker in manager.workers.values():
        await worker.shutdown()


async def _preload(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    task = asyncio.create_task(_preload_all(state)) if state.config.neuron.preload else None
    yield
    if task is not None and not task.done():
        task.cancel()


async def _preload_all(state: NeuronState) -> None:
    for model_id in state.config.neuron.preload:
        try:
            await state.manager.load(model_id)
        except Exception as exc:  # a failed preload is logged; the neuron keeps serving
            log.error("preload of %s failed: %s", model_id, getattr(exc, "message", exc))
