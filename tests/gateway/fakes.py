"""Test doubles for the gateway tests: scripted neurons (real aiohttp servers on loopback that
speak DESIGN.md section 4) and an in-process gateway harness.

A `FakeNeuron` is a fake on purpose: it lets a test force failures (a load that hangs, a
connection cut mid-stream, a refused connection, a stall) that a real neuron cannot be made to
produce on cue. The end-to-end tests in test_real_neuron.py use the real `cortex neuron`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cortex.api import sse
from cortex.config import CortexConfig, ModelEntry, ModelsConfig, NeuronEntry
from cortex.gateway.app import create_app
from cortex.gateway.state import GATEWAY, Gateway

GiB = 2**30


@dataclass
class FakeModel:
    id: str
    bytes: int = GiB
    state: str = "available"
    in_flight: int = 0


@dataclass
class Script:
    """What the fake does to the next requests (tests flip these)."""

    load_delay: float = 0.0
    load_gate: asyncio.Event | None = None
    chunks: int = 3
    chunk_delay: float = 0.0
    cut_after: int | None = None  # cut the connection after this many stream chunks
    refuse: bool = False  # close the connection before any answer
    stall_after: int | None = None  # stop sending (but keep the connection) after N chunks
    status: int | None = None  # answer this error status instead
    retry_after: str | None = None  # with `status`: the Retry-After header
    endpoint_host: str = "localhost"


@dataclass
class FakeNeuron:
    """A scripted neuron on `host`:free port."""

    name: str
    models: dict[str, FakeModel] = field(default_factory=dict)
    total_bytes: int = 8 * GiB
    host: str = "127.0.0.1"
    token: str = ""
    script: Script = field(default_factory=Script)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    releases: int = 0
    disconnects: int = 0
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def entry(self) -> NeuronEntry:
        return NeuronEntry(name=self.name, endpoint=self.url, token=self.token)

    def free(self) -> int:
        used = sum(m.bytes for m in self.models.values() if m.state == "loaded")
        return self.total_bytes - used

    def loaded(self) -> list[str]:
        return sorted(m.id for m in self.models.values() if m.state == "loaded")

    async def start(self, port: int = 0) -> FakeNeuron:
        app = web.Application()
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/models", self.list_models),
                web.post("/models/load", self.load),
                web.post("/models/unload", self.unload),
                web.get("/models/{id:.+}/endpoint", self.endpoint),
                web.post("/memory/release", self.release),
                web.post("/tokenize", self.tokenize),
                web.get("/v1/models", self.openai_models),
                web.post("/v1/chat/completions", self.chat),
                web.post("/v1/completions", self.chat),
            ]
        )
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def _check(self, request: web.Request) -> None:
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "node": self.name,
                "version": "fake",
                "uptime_s": 1.0,
                "devices": [
                    {
                        "id": "cpu",
                        "name": "fake",
                        "total_bytes": self.total_bytes,
                        "free_bytes": self.free(),
                    }
                ],
                "models": [
                    {
                        "id": m.id,
                        "state": m.state,
                        "device": "cpu",
                        "bytes": m.bytes,
                        "in_flight": m.in_flight,
                        "waiting": 0,
                    }
                    for m in self.models.values()
                    if m.state != "available"
                ],
            }
        )

    async def list_models(self, request: web.Request) -> web.Response:
        self._check(request)
        data = [
            {
                "id": m.id,
                "state": m.state,
                "arch": "llama",
                "params": 1000,
                "bytes": m.bytes,
                "max_context": 512,
                "device": "cpu" if m.state == "loaded" else None,
            }
            for m in self.models.values()
        ]
        return web.json_response({"object": "list", "data": data})

    async def openai_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.loaded()]
        return web.json_response({"object": "list", "data": data})

    def _error(self, status: int, code: str, message: str, **extra: Any) -> web.Response:
        error = {"message": message, "type": "x", "code": code, "param": None, **extra}
        return web.json_response({"error": error}, status=status)

    async def load(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await request.json()
        model = self.models.get(body["model"])
        if model is None:
            return self._error(404, "model_not_found", f"no model {body['model']}")
        if model.state == "loaded":
            return web.json_response({"model": model.id, "state": "loaded", "device": "cpu"})
        if model.bytes > self.free():
            return self._error(
                507,
                "insufficient_memory",
                "does not fit",
                required_bytes=model.bytes,
                free_bytes=self.free(),
            )
        self.loads.append(model.id)
        model.state = "loading"
        try:
            if self.script.load_gate is not None:
                await self.script.load_gate.wait()
            await asyncio.sleep(self.script.load_delay)
        except asyncio.CancelledError:
            model.state = "available"
            raise
        model.state = "loaded"
        return web.json_response(
            {
                "model": model.id,
                "state": "loaded",
                "device": "cpu",
                "bytes": model.bytes,
                "load_seconds": self.script.load_delay,
            }
        )

    async def unload(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await request.json()
        model = self.models.get(body["model"])
        if model is None or model.state != "loaded":
            return self._error(404, "model_not_found", "not loaded")
        self.unloads.append(model.id)
        model.state = "available"
        return web.json_response({"model": model.id, "state": "unloaded"})

    async def endpoint(self, request: web.Request) -> web.Response:
        return web.json_response({"url": f"http://{self.script.endpoint_host}:{self.port}"})

    async def release(self, request: web.Request) -> web.Response:
        self.releases += 1
        return web.json_response({"released_bytes": 0})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"count": len(orjson.dumps(body.get("messages")))})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        raw = await request.read()
        self.bodies.append(raw)
        body = orjson.loads(raw)
        script = self.script
        if script.refuse:
            request.transport.close()
            return web.Response()
        if script.status:
            error = self._error(script.status, "fake_error", f"scripted {script.status}")
            if script.retry_after is not None:
                error.headers["Retry-After"] = script.retry_after
            return error
        model = self.models.get(body["model"])
        if model is None or model.state != "loaded":
            return self._error(404, "model_not_found", f"model {body['model']} is not loaded")
        model.in_flight += 1
        try:
            if body.get("stream"):
                return await self._stream(request, body, model)
            await asyncio.sleep(script.chunk_delay)
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "model": model.id,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"hi from {self.name}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage(),
                }
            )
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        finally:
            model.in_flight -= 1

    async def _stream(
        self, request: web.Request, body: dict, model: FakeModel
    ) -> web.StreamResponse:
        script = self.script
        response = web.StreamResponse(headers=sse.HEADERS)
        await response.prepare(request)
        for i in range(script.chunks):
            if script.cut_after is not None and i == script.cut_after:
                request.transport.close()
                return response
            if script.stall_after is not None and i == script.stall_after:
                await asyncio.sleep(3600)
            await response.write(sse.data(chunk(model.id, f"tok{i} ")))
            await asyncio.sleep(script.chunk_delay)
        await response.write(sse.data(chunk(model.id, None, finish="stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            final = chunk(model.id, None)
            final["choices"] = []
            final["usage"] = usage(script.chunks)
            await response.write(sse.data(final))
        await response.write(sse.DONE)
        return response


def usage(completion: int = 3) -> dict[str, Any]:
    return {
        "prompt_tokens": 5,
        "completion_tokens": completion,
        "total_tokens": 5 + completion,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


def chunk(model: str, text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        "usage": None,
    }


def make_config(
    neurons: list[FakeNeuron],
    models: list[ModelEntry] | None = None,
    aliases: dict[str, str] | None = None,
    **gateway: Any,
) -> CortexConfig:
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


@dataclass
class Running:
    """A gateway running in this process."""

    url: str
    app: web.Application
    http: aiohttp.ClientSession
    metrics_url: str

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    async def chat(self, model: str, stream: bool = False, **extra: Any) -> aiohttp.ClientResponse:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        if stream:
            body["stream"] = True
        return await self.http.post(self.url + "/v1/chat/completions", json=body)

    async def metrics(self) -> str:
        async with self.http.get(self.metrics_url) as r:
            return await r.text()

    async def settle(self, condition, timeout: float = 5.0) -> None:
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
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    metrics_runner = web.AppRunner(app[GATEWAY].metrics.app())
    await metrics_runner.setup()
    msite = web.TCPSite(metrics_runner, "127.0.0.1", 0)
    await msite.start()
    mport = msite._server.sockets[0].getsockname()[1]
    http = aiohttp.ClientSession()
    try:
        yield Running(f"http://127.0.0.1:{port}", app, http, f"http://127.0.0.1:{mport}/metrics")
    finally:
        await http.close()
        await metrics_runner.cleanup()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def fleet(*neurons: FakeNeuron) -> AsyncIterator[list[FakeNeuron]]:
    """Start fake neurons; stop them after."""
    for neuron in neurons:
        await neuron.start()
    try:
        yield list(neurons)
    finally:
        for neuron in neurons:
            await neuron.stop()
