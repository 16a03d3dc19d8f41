"""Real servers on loopback for the Anthropic tests, run on one background event loop.

Synchronous clients (the `anthropic` SDK, the Claude Code CLI) drive them from the test thread:

    with LoopThread() as loop:
        neuron_url = loop.serve(fake.app())
        gateway_url = loop.gateway(config)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from cortex.config import CortexConfig, ModelEntry, ModelsConfig, NeuronEntry
from cortex.gateway.app import create_app
from tests.conftest import free_port


class LoopThread:
    """An event loop on a daemon thread; every app served on it is cleaned up on exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for runner in reversed(self._runners):
            self.run(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def run(self, coro: Coroutine, timeout: float = 60.0) -> Any:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: web.Application) -> str:
        """Serve `app` on a free loopback port; its base URL."""
        port = free_port()

        async def start() -> None:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)

        self.run(start())
        return f"http://127.0.0.1:{port}"

    def gateway(self, config: CortexConfig) -> str:
        """Serve the real gateway app for `config`; its base URL."""

        async def build() -> web.Application:
            return create_app(config)

        return self.serve(self.run(build()))


def gateway_config(
    neuron_urls: list[str],
    *,
    api_keys: list[str] | None = None,
    models: list[ModelEntry] | None = None,
) -> CortexConfig:
    """A gateway config with these neurons (named n0, n1...), fast polling."""
    config = CortexConfig()
    config.neurons = [NeuronEntry(name=f"n{i}", endpoint=url) for i, url in enumerate(neuron_urls)]
    config.models = ModelsConfig(models=models or [])
    config.gateway.api_keys = list(api_keys or [])
    config.gateway.poll_interval = 0.2
    config.gateway.cold_load_timeout = 60.0
    return config
