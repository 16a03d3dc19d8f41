"""Fixtures for the CLI tests: small protocol fakes of the gateway and the neuron.

The fakes are aiohttp apps that answer the gateway's `/fleet` routes and the neuron's lifecycle
and OpenAI routes with documented shapes (DESIGN.md sections 4 and 5). They test the CLI's side
of the protocol (bodies sent, answers rendered, error paths) without models; the tests in
`test_real_servers.py` run the same commands against the real gateway and neuron.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import free_port


@dataclass
class FakeServer:
    """A fake server on loopback: its URL, its state, and the requests it saw."""

    url: str
    state: dict[str, Any]
    requests: list[dict[str, Any]] = field(default_factory=list)

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies posted to `path`, in order."""
        return [r["body"] for r in self.requests if r["path"] == path]


def _serve(app: web.Application) -> Iterator[str]:
    """Run `app` on a loopback port in a thread; yield its URL."""
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(app)
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _recorder(server: FakeServer) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        server.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "body": body,
                "auth": request.headers.get("Authorization"),
            }
        )
        return await handler(request)

    return record


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(body | {"error": body["error"] | {"param": None}}, status=status)


def _completion(answer: str, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": answer, "refusal": None}
    else:
        choice["text"] = answer
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}


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
def fake_gateway() -> Iterator[FakeServer]:
    """A fake gateway: `/health`, `/fleet`, `/fleet/load|unload|pin`, `/v1/...`.

    `state["load_seconds"]` delays loads (meanwhile `/fleet` reports the model `loading`);
    `state["known"]` is the set of loadable model ids; others answer 404 model_not_found.
    """
    server = FakeServer(
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
            return _error(404, "model_not_found", f"model {model!r} not found")
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
        return web.json_response(_completion("The capital is Paris.", chat=True))

    app = web.Application(middlewares=[_recorder(server)])
    app.router.add_get("/health", health)
    app.router.add_get("/fleet", get_fleet)
    app.router.add_post("/fleet/load", load)
    app.router.add_post("/fleet/unload", unload)
    app.router.add_post("/fleet/pin", pin)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    for url in _serve(app):
        server.url = url
        yield server


@pytest.fixture
def fake_neuron() -> Iterator[FakeServer]:
    """A fake neuron serving model `tiny`; `state["chat_template"]` False makes chat a 400."""
    server = FakeServer("", {"chat_template": True, "loaded": False, "answer": "Paris"})

    async def health(request: web.Request) -> web.Response:
        models = (
            [{"id": "tiny", "state": "loaded", "device": "cpu"}] if server.state["loaded"] else []
        )
        return web.json_response(
            {
                "status": "ok",
                "node": "fake",
                "version": "0",
                "uptime_s": 1,
                "devices": [],
                "models": models,
            }
        )

    async def models(request: web.Request) -> web.Response:
        state = "loaded" if server.state["loaded"] else "available"
        return web.json_response({"object": "list", "data": [{"id": "tiny", "state": state}]})

    async def load(request: web.Request) -> web.Response:
        server.state["loaded"] = True
        return web.json_response(
            {"model": "tiny", "state": "loaded", "device": "cpu", "bytes": 1, "load_seconds": 0.1}
        )

    async def chat(request: web.Request) -> web.Response:
        if not server.state["chat_template"]:
            return _error(
                400, "invalid_request", "model 'tiny' has no chat template; use /v1/completions"
            )
        return web.json_response(_completion(server.state["answer"], chat=True))

    async def completions(request: web.Request) -> web.Response:
        return web.json_response(_completion(" " + server.state["answer"] + " is", chat=False))

    app = web.Application(middlewares=[_recorder(server)])
    app.router.add_get("/health", health)
    app.router.add_get("/models", models)
    app.router.add_post("/models/load", load)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    for url in _serve(app):
        server.url = url
        yield server


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
