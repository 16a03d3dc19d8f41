"""The real gateway app run inside the test process, in front of fake neurons.

    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:
        async with await g.chat("m1") as r: ...

Synchronous clients need it on a background loop: `with gateway_thread([fake]) as url: ...`.
A real `cortex serve` process is tests/support/gateway_proc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cortex.config import CortexConfig, ModelEntry, ModelsConfig
from cortex.gateway.app import create_app
from cortex.gateway.state import GATEWAY, Gateway
from tests.support.fake_neuron import FakeNeuron, fleet
from tests.support.loop_thread import LoopThread, start_app


def make_config(
    neurons: list[FakeNeuron],
    models: list[ModelEntry] | None = None,
    aliases: dict[str, str] | None = None,
    **gateway: Any,
) -> CortexConfig:
    """A config for these neurons, polling fast. `gateway` sets `[gateway]` keys by name and
    other sections' keys as `section__key` (e.g. `eviction__strategy="priority"`)."""
    config = CortexConfig()
    config.neurons = [n.entry() for n in neurons]
    config.models = ModelsConfig(aliases=aliases or {}, models=models or [])
    config.gateway.poll_interval = 0.1
    config.gateway.cold_load_timeout = 10.0
    for key, value in gateway.items():
        section, _, name = key.partition("__")
        if name:
            setattr(getattr(config, section), name, value)
        else:
            setattr(config.gateway, key, value)
    return config


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@dataclass
class Running:
    """A gateway running in this process: its URLs, app, and a client session."""

    url: str
    app: web.Application
    http: aiohttp.ClientSession
    metrics_url: str

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    async def chat(self, model: str, stream: bool = False, **extra: Any) -> aiohttp.ClientResponse:
        """POST a one-message chat completion (`extra` goes into the body)."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        if stream:
            body["stream"] = True
        return await self.http.post(self.url + "/v1/chat/completions", json=body)

    async def metrics(self) -> str:
        async with self.http.get(self.metrics_url) as r:
            return await r.text()

    async def settle(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `condition()` holds (state reached through polls), or fail."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(config: CortexConfig) -> AsyncIterator[Running]:
    """Start the gateway app (and its metrics app) on free loopback ports."""
    app = create_app(config)
    runner, port = await start_app(app)
    metrics_runner, metrics_port = await start_app(app[GATEWAY].metrics.app())
    http = aiohttp.ClientSession()
    try:
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield Running(f"http://127.0.0.1:{port}", app, http, metrics_url)
    finally:
        await http.close()
        await metrics_runner.cleanup()
        await runner.cleanup()


@contextlib.contextmanager
def gateway_thread(neurons: list[FakeNeuron], **config: Any) -> Iterator[str]:
    """Fake neurons and a gateway for them (`make_config(neurons, **config)`) on a background
    loop, for synchronous clients; yield the gateway's URL."""
    with LoopThread() as loop:
        loop.enter(fleet(*neurons))
        yield loop.enter(running(make_config(neurons, **config))).url
