"""The neuron's aiohttp application: factory, route table, background contexts.

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
from cortex.neuron import lifecycle_routes, openai_routes
from cortex.neuron.devices import select_devices
from cortex.neuron.http import auth, errors, gatekeeper
from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.registry import ModelRegistry
from cortex.neuron.state import STATE, NeuronState

log = logging.getLogger("cortex.neuron")

ROUTES = [
    web.get("/health", lifecycle_routes.health),
    web.get("/models", lifecycle_routes.list_models),
    web.post("/models/load", lifecycle_routes.load),
    web.post("/models/unload", lifecycle_routes.unload),
    web.post("/memory/release", lifecycle_routes.release_memory),
    web.get("/models/{id:.+}/endpoint", lifecycle_routes.endpoint),
    web.post("/tokenize", lifecycle_routes.tokenize),
    web.get("/metrics", lifecycle_routes.metrics),
    web.get("/v1/models", openai_routes.list_models),
    web.post("/v1/chat/completions", openai_routes.chat_completions),
    web.post("/v1/completions", openai_routes.completions),
]


def create_app(config: NeuronConfig, public_url: str = "http://127.0.0.1:13131") -> web.Application:
    """The neuron app for `config`; `public_url` is what `/models/{id}/endpoint` answers."""
    from cortex.neuron.engine import DeviceWorker, EngineConfig

    engine_config = EngineConfig.from_section(config.engine)
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
    app = web.Application(
        middlewares=[errors, auth, gatekeeper], client_max_size=int(config.neuron.max_body_bytes)
    )
    app[STATE] = state
    app.add_routes(ROUTES)
    app.cleanup_ctx.append(_workers)
    app.cleanup_ctx.append(_preload)
    return app


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
