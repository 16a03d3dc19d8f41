"""The gateway's shared state, one object per application (`app[GATEWAY]`).

Built by `create_app`; `start()` (from the app's cleanup context) opens the connection pool,
makes one `NeuronClient` per configured neuron, polls them all once (so the first request
already knows the fleet) and starts the poller and upkeep tasks; `close()` stops them and
closes the response store (which opens its database on first use, see response_store.py).
Per-request values the request metrics read live in the request under `ARRIVED`, `MODEL` and
`NEURON`; `count_request` is the one place that counts requests and errors.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web

from cortex import __version__
from cortex.config import CortexConfig, NeuronEntry, gateway_state_dir
from cortex.errors import ConfigError
from cortex.gateway.fleet import Fleet, Neuron
from cortex.gateway.metrics import Metrics
from cortex.gateway.neuron_client import NeuronClient
from cortex.gateway.openai_backend import OpenAIBackend
from cortex.gateway.pins import Pins
from cortex.gateway.poller import Poller
from cortex.gateway.response_store import ResponseStore
from cortex.gateway.router import Router
from cortex.gateway.upkeep import Upkeep

APIS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/models": "models",
    "/v1/responses": "responses",
}
KEEPALIVE_S = 10.0  # how long an idle pooled connection to a neuron is kept
ARRIVED = web.RequestKey("cortex.arrived", float)
MODEL = web.RequestKey("cortex.model", str)
NEURON = web.RequestKey("cortex.neuron", str)


class Gateway:
    """Config, fleet, router, upkeep, metrics and the upstream connection pool."""

    def __init__(self, config: CortexConfig) -> None:
        self.config = config
        self.models = config.models
        section = config.gateway
        self.pins = Pins(config.models)
        self.fleet = Fleet([])
        self.metrics = Metrics(self.fleet)
        self.poller = Poller(self.fleet, float(section.poll_interval))
        self.router = Router(config, self.fleet, self.poller, self.metrics, self.pins)
        self.upkeep = Upkeep(config, self.fleet, self.router, self.pins)
        self.responses = ResponseStore(
            gateway_state_dir(section), float(section.response_retention)
        )
        # Never a total timeout (a long answer is fine), only read timeouts between bytes. A
        # cortex neuron's stream sends a comment every 0.5 s of silence, so `stall_timeout`
        # without a byte is a stall; its non-streaming answer sends nothing until done, so it
        # has no read timeout and is watched through the poller instead (exchange.py).
        # Other OpenAI servers send no heartbeat: `stream_read_timeout` for them.
        self._timeouts = {
            (kind, stream): aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read)
            for kind, stream, read in (
                ("cortex", True, float(section.stall_timeout) or None),
                ("cortex", False, None),
                ("openai", True, float(section.stream_read_timeout) or None),
                ("openai", False, float(section.stream_read_timeout) or None),
            )
        }
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

    def _client(self, entry: NeuronEntry, session: aiohttp.ClientSession) -> NeuronClient:
        cls = OpenAIBackend if entry.kind == "openai" else NeuronClient
        timeout = float(self.config.gateway.poll_interval) * 2 + 3
        return cls(
            entry.name,
            entry.endpoint,
            session,
            token=entry.token,
            control_timeout=timeout,
            load_timeout=float(self.config.gateway.cold_load_timeout) + 60,
            health_timeout=float(self.config.gateway.stall_timeout) or None,
        )

    def proxy_timeout(self, client: NeuronClient, stream: bool) -> aiohttp.ClientTimeout:
        """The read timeouts of a proxied request to `client` (see `__init__`)."""
        return self._timeouts[(client.kind, stream)]

    async def start(self) -> None:
        """Open the pool, poll every neuron once, start the background tasks."""
        if not self.config.neurons:
            raise ConfigError("no neurons configured: add [[neurons]] to cortex.toml or --neuron")
        # Idle connections are dropped before a neuron would close them (its `idle_timeout`,
        # 15 s by default): reusing one the neuron closes at that moment fails the request's
        # first attempt (exchange.py then tries that neuron once more).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
        # The User-Agent tells a neuron's logs which gateway build calls it.
        headers = {"User-Agent": f"cortex/{__version__}"}
        self.session = aiohttp.ClientSession(connector=connector, headers=headers)
        down_after = self.config.gateway.down_after_failures
        for entry in self.config.neurons:
            neuron = Neuron(self._client(entry, self.session), down_after)
            self.fleet.neurons[neuron.name] = neuron
        await self.poller.poll_all()
        self._tasks = [
            asyncio.ensure_future(self.poller.run()),
            asyncio.ensure_future(self.upkeep.run()),
        ]

    def count_request(self, request: web.Request, reason: str | None, status: int | None) -> None:
        """Count an error by `reason` and/or a finished request by `status` (None: skip it)."""
        metrics = self.metrics
        model, neuron = request.get(MODEL, ""), request.get(NEURON, "")
        if reason is not None:
            metrics.of(metrics.errors, reason, model, neuron).inc()
        if status is not None:
            path = request.path
            # `/v1/responses/{id}...` counts with its collection.
            api = APIS.get(path) or APIS.get("/".join(path.split("/")[:3]))
            api = api or ("fleet" if path.startswith("/fleet") else "other")
            metrics.of(metrics.requests, api, str(status), model, neuron).inc()

    async def close(self) -> None:
        """Stop the background tasks and close the pool."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.session is not None:
            await self.session.close()
        await self.responses.close()


GATEWAY = web.AppKey("cortex.gateway", Gateway)
