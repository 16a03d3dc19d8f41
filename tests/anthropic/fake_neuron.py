"""A small scripted neuron for the Anthropic route tests (a real aiohttp server on loopback).

It speaks the neuron HTTP API the gateway polls (`/health`, `/models`, `/models/load`,
`/tokenize`) and answers `/v1/chat/completions` from a queue of `Reply` scripts (a default text
reply when the queue is empty), shaped with the neuron's own OpenAI builders
(`cortex.api.openai`). It records every chat and tokenize body it got. It runs on its own event
loop thread (`servers.LoopThread`) so that synchronous clients (the SDK, the Claude Code CLI)
can drive it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from cortex.api import openai, sse

MODEL = "fake-qwen"
MAX_CONTEXT = 8192
TOKEN_COUNT = 4321  # what /tokenize answers


@dataclass
class Reply:
    """One scripted answer: text and/or reasoning and tool calls, or an error, or a cut stream."""

    content: str = "Hi from the fake neuron."
    reasoning: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: str | None = None  # the matched stop string, vLLM-style
    status: int = 200
    error_code: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False  # stream: stop after the first delta, without finish or [DONE]
    prompt_tokens: int = 120
    cached_tokens: int = 0


class FakeNeuron:
    """The scripted neuron's state and routes; serve `app()` with `servers.LoopThread`.

    `loaded=False` makes the model only available until a `/models/load`, which then takes
    `load_delay` seconds (a cold load)."""

    def __init__(self, *, loaded: bool = True, load_delay: float = 0.0) -> None:
        self.url = ""
        self.loaded = loaded
        self.load_delay = load_delay
        self.replies: list[Reply] = []
        self.chats: list[dict[str, Any]] = []
        self.tokenized: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/models", self._models),
                web.post("/models/load", self._load),
                web.post("/tokenize", self._tokenize),
                web.post("/v1/chat/completions", self._chat),
            ]
        )
        return app

    @property
    def state(self) -> str:
        return "loaded" if self.loaded else "available"

    async def _health(self, request: web.Request) -> web.Response:
        model = {"id": MODEL, "state": self.state, "device": "cpu", "bytes": 1, "in_flight": 0}
        models = [model] if self.loaded else []
        device = {"id": "cpu", "name": "cpu", "total_bytes": 2**34, "free_bytes": 2**33}
        body = {"status": "ok", "node": "fake", "version": "0", "uptime_s": 1.0}
        return web.json_response({**body, "devices": [device], "models": models})

    async def _models(self, request: web.Request) -> web.Response:
        entry = {"id": MODEL, "state": self.state, "arch": "qwen3", "params": 1, "bytes": 1}
        entry |= {"max_context": MAX_CONTEXT, "device": "cpu"}
        return web.json_response({"object": "list", "data": [entry]})

    async def _load(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.load_delay)
        self.loaded = True
        return web.json_response({"model": MODEL, "state": "loaded", "device": "cpu", "bytes": 1})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenized.append(body)
        return web.json_response({"count": TOKEN_COUNT})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.chats.append(body)
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.status != 200:
            error = {"message": reply.content, "type": "error", "code": reply.error_code}
            envelope = {"error": {**error, "param": None}}
            return web.json_response(envelope, status=reply.status, headers=reply.headers)
        usage = openai.usage(reply.prompt_tokens, 7, reply.cached_tokens)
        calls = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": n, "arguments": orjson.dumps(a).decode()},
            }
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
        if not body.get("stream"):
            choice = openai.ChoiceResult(
                0, reply.content, reply.reasoning, calls, reply.finish_reason, reply.stop_reason
            )
            answer = openai.chat_response("chatcmpl-fake", 0, MODEL, [choice], usage)
            return web.json_response(answer)
        prompt_tokens = {openai.PROMPT_TOKENS_HEADER: str(reply.prompt_tokens)}
        response = web.StreamResponse(headers={**sse.HEADERS, **prompt_tokens})
        await response.prepare(request)
        await response.write(sse.comment())  # like a neuron prefilling

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = openai.chat_chunk(
                "chatcmpl-fake", 0, MODEL, 0, delta, finish, stop_reason=reply.stop_reason
            )
            await response.write(sse.data(chunk))

        await send({"role": "assistant", "content": ""})
        if reply.reasoning:
            await send({"reasoning_content": reply.reasoning})
        if reply.cut:
            await send({"content": reply.content})
            return response
        for piece in (reply.content[i : i + 5] for i in range(0, len(reply.content), 5)):
            await send({"content": piece})
        for i, call in enumerate(calls):
            fn = call["function"]
            await send({"tool_calls": [openai.tool_call_delta(i, call["id"], fn["name"], "")]})
            for j in range(0, len(fn["arguments"]), 16):
                delta = openai.tool_call_delta(i, None, None, fn["arguments"][j : j + 16])
                await send({"tool_calls": [delta]})
        await send({}, reply.finish_reason if not calls else "tool_calls")
        await response.write(sse.data(openai.usage_chunk("chat", "chatcmpl-fake", 0, MODEL, usage)))
        await response.write(sse.DONE)
        return response
