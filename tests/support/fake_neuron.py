"""A scripted neuron for every test area: a real aiohttp server on loopback that speaks the
neuron's HTTP API (README: "Talking to a neuron directly").

It is a fake on purpose: it lets a test force what a real neuron cannot be made to do on cue (a
load that hangs, a connection cut mid-stream, a refused connection, a stall, an error status, an
answer with reasoning and tool calls). Tests against the real `cortex neuron` use
tests/support/neuron_proc.py.

    neuron = FakeNeuron("a", loaded("m1"))
    async with fleet(neuron): ...                   # on the test's own event loop
    with LoopThread() as loop:                      # for synchronous clients
        loop.enter(fleet(neuron))

`fake_qwen()` is the one-model neuron the API translation tests (Anthropic, Responses, ACP) use;
tests/support/gateway_app.py and gateway_proc.py put a gateway in front of fakes.

What it does:
- lifecycle: `/health`, `/models`, `/models/load` (404 for an unknown model, 507 when it does not
  fit in `total_bytes`; `Script.load_gate` and `load_delay` make loads slow), `/models/unload`,
  `/models/{id}/endpoint` (naming `Script.endpoint_host`), `/memory/release`, `/tokenize`
  (always `TOKEN_COUNT`);
- `/v1/chat/completions` and `/v1/completions`: the next `Reply` queued in `replies`, else
  `script.reply` (an error; or text, reasoning and tool calls, whole or streamed as asked, a
  stream cut, dropped or stalled after its text), for loaded models only; `Script.refuse`
  closes the connection instead;
- it records every request (`requests`, `bodies(path)`) and counts what it did (`loads`,
  `unloads`, `releases`, `disconnects`). With a `token`, it requires `Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from cortex.api import openai, sse
from cortex.config import NeuronEntry
from tests.support.loop_thread import start_app

GiB = 2**30
TOKEN_COUNT = 4321  # what /tokenize answers
CHAT = "/v1/chat/completions"


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """An error in the OpenAI envelope the neuron and the gateway answer with."""
    error = {"message": message, "type": "error", "code": code, "param": None, **extra}
    return web.json_response({"error": error}, status=status)


@dataclass
class FakeModel:
    """A model the fake neuron has on disk."""

    id: str
    bytes: int = GiB
    state: str = "available"  # "loading" during a load, then "loaded"
    in_flight: int = 0
    arch: str = "llama"
    max_context: int = 512
    chat_template: bool = True  # False: chat requests answer 400, the probe's cue for a base model


def loaded(*ids: str) -> dict[str, FakeModel]:
    """Loaded models of the default size, by id (the `models` of a `FakeNeuron`)."""
    return {i: FakeModel(i, state="loaded") for i in ids}


@dataclass
class Reply:
    """One scripted answer: text and/or reasoning and tool calls, or an error, or a cut stream."""

    # None: "hi from <neuron name>", streamed as `Script.chunks` deltas "tok0 ", "tok1 "...
    # Other text streams in deltas of 5 characters.
    content: str | None = None
    reasoning: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: str | None = None  # the matched stop string, vLLM-style
    status: int = 200  # otherwise an error: `content` is its message ("scripted <status>")
    error_code: str = "fake_error"
    headers: dict[str, str] = field(default_factory=dict)  # of an error (e.g. Retry-After)
    # How a stream goes wrong after its content deltas (a whole answer ignores these):
    cut: bool = False  # the stream ends there, without a finish or [DONE]
    drop: bool = False  # the connection is closed there (the neuron died)
    stall: bool = False  # nothing more is sent, the connection stays open
    prompt_tokens: int = 5
    cached_tokens: int = 2
    completion_tokens: int | None = None  # None: one per content delta


@dataclass
class Script:
    """How the fake behaves from now on (tests flip these while it runs)."""

    reply: Reply = field(default_factory=Reply)  # the answer when no queued reply is left
    load_delay: float = 0.0
    load_gate: asyncio.Event | None = None  # loads wait until it is set
    chunks: int = 3  # content deltas of the default answer
    chunk_delay: float = 0.0  # after each streamed delta (and before a whole answer)
    refuse: bool = False  # close the connection before any answer
    refusals: int = 0  # as `refuse`, for this many of the next requests
    endpoint_host: str = "localhost"  # what /models/{id}/endpoint says (the gateway rewrites it)
    spaced_json: bool = False  # write chunks as `{"a": 1, "b": 2}`, as some OpenAI servers do


@dataclass
class Seen:
    """One request a fake server received."""

    method: str
    path: str
    body: bytes
    auth: str | None  # the Authorization header

    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return orjson.loads(self.body) if self.body else None


@dataclass
class RequestLog:
    """The requests an aiohttp fake received, in order; add `record` to its middlewares."""

    # Not in the repr: it holds every health poll, which would drown a failure's message.
    requests: list[Seen] = field(default_factory=list, kw_only=True, repr=False)

    @web.middleware
    async def record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.requests.append(Seen(request.method, request.path, await request.read(), auth))
        return await handler(request)

    def seen(self, path: str) -> list[Seen]:
        """The requests to `path`, in order."""
        return [r for r in self.requests if r.path == path]

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies sent to `path`, in order."""
        return [r.json() for r in self.seen(path)]


@dataclass
class FakeNeuron(RequestLog):
    """A scripted neuron named `name` on `host` (a free port unless `port` is set)."""

    name: str
    models: dict[str, FakeModel] = field(default_factory=dict)
    total_bytes: int = 8 * GiB
    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""
    script: Script = field(default_factory=Script)
    replies: list[Reply] = field(default_factory=list)  # answered first, in order
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    releases: int = 0
    disconnects: int = 0  # answers cancelled because the client went away
    runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def chats(self) -> list[Any]:
        """The chat completion bodies received, in order."""
        return self.bodies(CHAT)

    def entry(self) -> NeuronEntry:
        """This neuron in a gateway's configuration."""
        return NeuronEntry(name=self.name, endpoint=self.url, token=self.token)

    def free(self) -> int:
        """Bytes not taken by loaded models."""
        used = sum(m.bytes for m in self.models.values() if m.state == "loaded")
        return self.total_bytes - used

    def loaded(self) -> list[str]:
        """The ids of the loaded models, sorted."""
        return sorted(m.id for m in self.models.values() if m.state == "loaded")

    def app(self) -> web.Application:
        """The neuron's routes as an aiohttp app (bodies up to 64 MiB, like Claude Code's)."""
        app = web.Application(middlewares=[self.record], client_max_size=64 * 2**20)
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/models", self._models),
                web.post("/models/load", self._load),
                web.post("/models/unload", self._unload),
                web.get("/models/{id:.+}/endpoint", self._endpoint),
                web.post("/memory/release", self._release),
                web.post("/tokenize", self._tokenize),
                web.get("/v1/models", self._openai_models),
                web.post(CHAT, self._complete),
                web.post("/v1/completions", self._complete),
            ]
        )
        return app

    async def start(self, port: int = 0) -> FakeNeuron:
        """Serve on the running loop (on `port`, to come back where it was after `stop`)."""
        self.runner, self.port = await start_app(self.app(), self.host, port or self.port)
        return self

    async def stop(self) -> None:
        """Stop serving (a gateway then sees it down); `start` again to come back."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def _check(self, request: web.Request) -> None:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized()

    async def _health(self, request: web.Request) -> web.Response:
        device = {"id": "cpu", "name": "fake", "total_bytes": self.total_bytes}
        models = [
            {"id": m.id, "state": m.state, "device": "cpu", "bytes": m.bytes}
            | {"in_flight": m.in_flight, "waiting": 0}
            for m in self.models.values()
            if m.state != "available"
        ]
        body = {"status": "ok", "node": self.name, "version": "fake", "uptime_s": 1.0}
        return web.json_response(
            body | {"devices": [device | {"free_bytes": self.free()}], "models": models}
        )

    async def _models(self, request: web.Request) -> web.Response:
        self._check(request)
        data = [
            {"id": m.id, "state": m.state, "arch": m.arch, "params": 1000, "bytes": m.bytes}
            | {"max_context": m.max_context, "device": "cpu" if m.state == "loaded" else None}
            for m in self.models.values()
        ]
        return web.json_response({"object": "list", "data": data})

    async def _openai_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.loaded()]
        return web.json_response({"object": "list", "data": data})

    async def _load(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await request.json()
        model = self.models.get(body["model"])
        if model is None:
            return error_response(404, "model_not_found", f"no model {body['model']}")
        if model.state == "loaded":
            return web.json_response({"model": model.id, "state": "loaded", "device": "cpu"})
        if model.bytes > self.free():
            return error_response(
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
        answer = {"model": model.id, "state": "loaded", "device": "cpu", "bytes": model.bytes}
        return web.json_response(answer | {"load_seconds": self.script.load_delay})

    async def _unload(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await request.json()
        model = self.models.get(body["model"])
        if model is None or model.state != "loaded":
            return error_response(404, "model_not_found", "not loaded")
        self.unloads.append(model.id)
        model.state = "available"
        return web.json_response({"model": model.id, "state": "unloaded"})

    async def _endpoint(self, request: web.Request) -> web.Response:
        return web.json_response({"url": f"http://{self.script.endpoint_host}:{self.port}"})

    async def _release(self, request: web.Request) -> web.Response:
        self.releases += 1
        return web.json_response({"released_bytes": 0})

    async def _tokenize(self, request: web.Request) -> web.Response:
        return web.json_response({"count": TOKEN_COUNT})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        """`/v1/chat/completions` and `/v1/completions`: the next reply, as scripted."""
        self._check(request)
        body = await request.json()
        script = self.script
        if script.refuse or script.refusals > 0:
            script.refusals = max(0, script.refusals - 1)
            request.transport.close()
            return web.Response()
        reply = self.replies.pop(0) if self.replies else script.reply
        if reply.status != 200:
            message = reply.content if reply.content is not None else f"scripted {reply.status}"
            error = error_response(reply.status, reply.error_code, message)
            error.headers.update(reply.headers)
            return error
        model = self.models.get(body["model"])
        if model is None or model.state != "loaded":
            return error_response(404, "model_not_found", f"model {body['model']} is not loaded")
        chat = request.path == CHAT
        if chat and not model.chat_template:
            message = f"model {model.id!r} has no chat template; use /v1/completions"
            return error_response(400, "invalid_request", message)
        model.in_flight += 1
        try:
            answer = _Answer(self, reply, model.id, chat)
            if body.get("stream"):
                return await answer.stream(request, body)
            await asyncio.sleep(script.chunk_delay)
            return web.json_response(answer.whole())
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        finally:
            model.in_flight -= 1


@dataclass
class _Answer:
    """One reply rendered as an OpenAI chat or text completion, whole or streamed."""

    neuron: FakeNeuron
    reply: Reply
    model: str
    chat: bool
    rid: str = "cmpl-fake"

    def deltas(self) -> list[str]:
        if self.reply.content is None:
            return [f"tok{i} " for i in range(self.neuron.script.chunks)]
        text = self.reply.content
        return [text[i : i + 5] for i in range(0, len(text), 5)]

    def calls(self) -> list[dict[str, Any]]:
        return [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
            }
            for i, (name, args) in enumerate(self.reply.tool_calls)
        ]

    def usage(self) -> dict[str, Any]:
        reply = self.reply
        completion = reply.completion_tokens
        if completion is None:
            completion = len(self.deltas())
        return openai.usage(reply.prompt_tokens, completion, reply.cached_tokens)

    def whole(self) -> dict[str, Any]:
        reply, calls = self.reply, self.calls()
        text = reply.content if reply.content is not None else f"hi from {self.neuron.name}"
        finish = "tool_calls" if calls else reply.finish_reason
        choice = openai.ChoiceResult(0, text, reply.reasoning, calls, finish, reply.stop_reason)
        build = openai.chat_response if self.chat else openai.completion_response
        return build(self.rid, 0, self.model, [choice], self.usage())

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        stop = self.reply.stop_reason
        if self.chat:
            chunk = openai.chat_chunk(self.rid, 0, self.model, 0, delta, finish, stop_reason=stop)
        else:
            text = delta.get("content") or ""
            chunk = openai.completion_chunk(self.rid, 0, self.model, 0, text, finish, None, 0, stop)
        if self.neuron.script.spaced_json:
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"
        return sse.data(chunk)

    async def stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        reply, script, calls = self.reply, self.neuron.script, self.calls()
        prompt_tokens = {openai.PROMPT_TOKENS_HEADER: str(reply.prompt_tokens)}
        response = web.StreamResponse(headers={**sse.HEADERS, **prompt_tokens})
        await response.prepare(request)
        await response.write(sse.comment())  # like a neuron prefilling
        if self.chat:
            await response.write(self.chunk({"role": "assistant", "content": ""}))
        if reply.reasoning:
            await response.write(self.chunk({"reasoning_content": reply.reasoning}))
        for text in self.deltas():
            await response.write(self.chunk({"content": text}))
            await asyncio.sleep(script.chunk_delay)
        if reply.drop:
            request.transport.close()
            return response
        if reply.stall:
            await asyncio.sleep(3600)  # until the client goes away (cancelling this)
        if reply.cut:
            return response
        for i, call in enumerate(calls):
            fn = call["function"]
            first = openai.tool_call_delta(i, call["id"], fn["name"], "")
            await response.write(self.chunk({"tool_calls": [first]}))
            for j in range(0, len(fn["arguments"]), 16):
                more = openai.tool_call_delta(i, None, None, fn["arguments"][j : j + 16])
                await response.write(self.chunk({"tool_calls": [more]}))
        await response.write(self.chunk({}, "tool_calls" if calls else reply.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            kind = "chat" if self.chat else "text"
            final = openai.usage_chunk(kind, self.rid, 0, self.model, self.usage())
            await response.write(sse.data(final))
        await response.write(sse.DONE)
        return response


QWEN_MODEL = "fake-qwen"
QWEN_CONTEXT = 8192
GREETING = "Hi from the fake neuron."


def fake_qwen(*, loaded: bool = True, load_delay: float = 0.0) -> FakeNeuron:
    """The neuron behind the API translation tests (Anthropic, Responses, ACP): one Qwen-like
    model, `QWEN_MODEL`, answering `GREETING` (120 prompt tokens, 7 completion tokens) unless a
    test queues `Reply`s. `loaded=False` leaves it to a cold load of `load_delay` seconds."""
    model = FakeModel(QWEN_MODEL, arch="qwen3", max_context=QWEN_CONTEXT)
    model.state = "loaded" if loaded else "available"
    neuron = FakeNeuron("fake", {QWEN_MODEL: model})
    neuron.script.reply = Reply(GREETING, prompt_tokens=120, cached_tokens=0, completion_tokens=7)
    neuron.script.load_delay = load_delay
    return neuron


@contextlib.asynccontextmanager
async def fleet(*neurons: FakeNeuron) -> AsyncIterator[list[FakeNeuron]]:
    """Start fake neurons on the running loop; stop them after."""
    for neuron in neurons:
        await neuron.start()
    try:
        yield list(neurons)
    finally:
        for neuron in neurons:
            await neuron.stop()
