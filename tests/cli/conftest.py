"""Fixtures for the CLI tests: protocol fakes of the gateway and the neuron.

The fake gateway is an aiohttp app that answers the gateway's `/fleet` routes with documented
shapes (README: "Using the API"); the fake neuron is the shared one (tests/support/fake_neuron.py).
They test the CLI's side of the protocol (bodies sent, answers rendered, error paths) without
models; the tests in `test_real_servers.py` run the same commands against the real gateway and
neuron.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from cortex.api import openai
from tests.conftest import free_port
from tests.support.fake_neuron import (
    FakeModel,
    FakeNeuron,
    Reply,
    RequestLog,
    error_response,
    fleet,
)
from tests.support.loop_thread import LoopThread


@dataclass
class FakeGateway(RequestLog):
    """The fake gateway on loopback: its URL, its state, and the requests it saw."""

    url: str
    state: dict[str, Any]


FLEET = {
    "neurons": [
        {
            "name": "beast",
            "endpoint": "http://beast.internal:13131",
            "state": "up",
            "devices": [
                {
                    "id": "cuda:0",
                    "name": "NVIDIA H100",
                    "total_bytes": 80 << 30,
                    "free_bytes": 60 << 30,
                }
            ],
            "models": [
                {
                    "id": "Qwen/Qwen3-8B",
                    "state": "loaded",
                    "device": "cuda:0",
                    "bytes": 16 << 30,
                    "in_flight": 2,
                    "idle_s": 0.5,
                }
            ],
            "available": ["Qwen/Qwen3-8B", "tiny"],
            "last_seen": None,
        },
        {
            "name": "spare",
            "endpoint": "http://spare.internal:13131",
            "state": "down",
            "devices": [],
            "models": [],
            "last_seen": None,
        },
    ],
    "models": [
        {
            "id": "Qwen/Qwen3-8B",
            "pinned": True,
            "locations": [{"neuron": "beast", "state": "loaded"}],
        }
    ],
}


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    """A fake gateway: `/health`, `/fleet`, `/fleet/load|unload|pin`, `/v1/...`.

    `state["load_seconds"]` delays loads (meanwhile `/fleet` reports the model `loading`);
    `state["known"]` is the set of loadable model ids; others answer 404 model_not_found.
    """
    server = FakeGateway(
        "", {"load_seconds": 0.0, "known": {"tiny", "Qwen/Qwen3-8B"}, "loading": None}
    )
    fleet = json.loads(json.dumps(FLEET))
    server.state["fleet"] = fleet

    async def get_fleet(request: web.Request) -> web.Response:
        doc = json.loads(json.dumps(fleet))
        if server.state["loading"]:
            doc["neurons"][0]["models"].append(
                {"id": server.state["loading"], "state": "loading", "device": "cuda:0", "bytes": 0}
            )
        return web.json_response(doc)

    async def load(request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        if model not in server.state["known"]:
            return error_response(404, "model_not_found", f"model {model!r} not found")
        server.state["loading"] = model
        await asyncio.sleep(server.state["load_seconds"])
        server.state["loading"] = None
        loaded = fleet["neurons"][0]["models"]
        if all(m["id"] != model for m in loaded):
            loaded.append({"id": model, "state": "loaded", "device": "cuda:0", "bytes": 1 << 20})
        return web.json_response({"model": model, "neuron": "beast", "state": "loaded"})

    async def unload(request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        fleet["neurons"][0]["models"] = [
            m for m in fleet["neurons"][0]["models"] if m["id"] != model
        ]
        return web.json_response({"model": model, "neuron": "beast", "state": "unloaded"})

    async def pin(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {"model": body["model"], "pinned": body["pinned"], "state": "loaded"}
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "neurons": {"up": 1, "total": 2}})

    async def models(request: web.Request) -> web.Response:
        loaded = {m["id"] for m in fleet["neurons"][0]["models"]}
        data = [
            {
                "id": m,
                "object": "model",
                "cortex": {"state": "loaded" if m in loaded else "available"},
            }
            for m in sorted(server.state["known"])
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(request: web.Request) -> web.Response:
        choice = openai.ChoiceResult(0, "The capital is Paris.", finish_reason="length")
        return web.json_response(openai.chat_response("x", 0, "m", [choice], openai.usage(9, 5, 0)))

    app = web.Application(middlewares=[server.record])
    app.router.add_get("/health", health)
    app.router.add_get("/fleet", get_fleet)
    app.router.add_post("/fleet/load", load)
    app.router.add_post("/fleet/unload", unload)
    app.router.add_post("/fleet/pin", pin)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    with LoopThread() as loop:
        server.url = loop.serve(app)
        yield server


@pytest.fixture
def fake_neuron() -> Iterator[FakeNeuron]:
    """A fake neuron with model `tiny` (not loaded) that answers "Paris"; a model's
    `chat_template = False` makes chat a 400."""
    neuron = FakeNeuron("fake", {"tiny": FakeModel("tiny")})
    neuron.script.reply = Reply("Paris", finish_reason="length")
    with LoopThread() as loop:
        loop.enter(fleet(neuron))
        yield neuron


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
