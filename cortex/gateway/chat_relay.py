"""The neuron's chat answer relayed to a translated dialect (Anthropic Messages, OpenAI Responses).

Both translating routes send the neuron an OpenAI chat request through `ProxiedRequest` and turn
its answer into their own: `read_completion` reads a whole JSON answer; `relay_stream` runs a
live translation. A `LiveTranslator` (`cortex.api.anthropic.StreamTranslator`,
`cortex.api.response_events.ResponseStream`) turns chat chunks into the dialect's events; the
`Dialect` says how those go on the wire and which of them carry a token (time to first token).

`relay_stream`: while a cold load runs the client already gets the stream's opening events and a
keep-alive every second (`translator.ping()`); SSE comments the neuron sends while a long prompt
prefills become keep-alives too. Nothing is buffered: each neuron chunk is translated and
written as it arrives. An error before the stream started is raised (the app renders it as an
HTTP error in the route's envelope); after it started it ends the stream in-band
(`translator.fail`). `before_end` runs once the answer is complete, before its last events go
out (the Responses route stores the response there, so that a client that saw it finish can
continue it at once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from cortex.api import sse
from cortex.api.openai import PROMPT_TOKENS_HEADER
from cortex.errors import CortexError, UpstreamError
from cortex.gateway.exchange import ProxiedRequest
from cortex.gateway.neuron_client import error_from_response
from cortex.gateway.router import OnWait
from cortex.web import CLIENT_GONE, end_sse, start_sse

CHAT_PATH = "/v1/chat/completions"
UPSTREAM_BROKE = (aiohttp.ClientError, TimeoutError)
Events = list[dict[str, Any]]
Opener = Callable[[ProxiedRequest, dict[str, Any], bool, OnWait | None], Awaitable[None]]


class LiveTranslator(Protocol):
    """Chat chunks in, a dialect's events out (each call returns the events to send)."""

    def start(self, prompt_usage: dict[str, Any] | None = None) -> Events: ...
    def ping(self) -> Events: ...
    def feed(self, chunk: dict[str, Any]) -> Events: ...
    def finish(self) -> Events: ...
    def fail(self, error: CortexError) -> Events: ...


@dataclass(frozen=True)
class Dialect:
    """How a translated stream's events are written, and which carry a generated token."""

    encode: Callable[[Events], bytes]
    has_token: Callable[[Events], bool]


async def open_chat(
    px: ProxiedRequest, chat: dict[str, Any], stream: bool, on_wait: OnWait | None = None
) -> None:
    """`px.open` of the neuron's chat route (the default `Opener`)."""
    await px.open(CHAT_PATH, chat, stream, on_wait)


async def read_completion(px: ProxiedRequest) -> dict[str, Any]:
    """The neuron's whole chat completion (after `open`), its usage counted."""
    async with px:
        try:
            answer = orjson.loads(await px.read())
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"neuron {px.neuron} answered something else than JSON") from exc
    if not isinstance(answer, dict):
        raise UpstreamError(f"neuron {px.neuron} answered something else than a completion")
    px.note_usage(answer.get("usage"))
    return answer


async def relay_stream(
    request: web.Request,
    px: ProxiedRequest,
    chat: dict[str, Any],
    translator: LiveTranslator,
    dialect: Dialect,
    *,
    opener: Opener = open_chat,
    headers: dict[str, str] | None = None,
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """Open the neuron's chat stream and translate it live to the client (module docstring);
    `headers` are added to the stream's own."""
    out: web.StreamResponse | None = None

    async def send(events: Events) -> None:
        if events:
            await out.write(dialect.encode(events))

    async def on_wait() -> None:
        nonlocal out
        if out is None:
            out = await start_sse(request, headers or {})
        await send(translator.ping())

    try:
        await opener(px, chat, True, on_wait)
    except CortexError as exc:
        if out is None:
            raise
        px.count(exc.code)
        await end_sse(out, dialect.encode(translator.fail(exc)))
        return out
    async with px:
        out = out or await start_sse(request, {**px.headers(), **(headers or {})})
        try:
            await send(translator.start(_prompt_usage(px)))
            await _relay(px, translator, dialect, send)
            events = translator.finish()
            if before_end is not None:
                await before_end()
        except CLIENT_GONE:
            px.client_gone()
            return out
        except CortexError as exc:
            px.close(broken=True)
            events = translator.fail(exc)
        except UPSTREAM_BROKE as exc:
            events = translator.fail(px.broken(f"{exc or type(exc).__name__}"))
        await end_sse(out, dialect.encode(events))
    return out


def _prompt_usage(px: ProxiedRequest) -> dict[str, int] | None:
    """The prompt's token count from the neuron's stream headers, as an OpenAI `usage`."""
    value = px.response.headers.get(PROMPT_TOKENS_HEADER, "")
    return {"prompt_tokens": int(value)} if value.isdigit() else None


async def _relay(
    px: ProxiedRequest,
    translator: LiveTranslator,
    dialect: Dialect,
    send: Callable[[Events], Awaitable[None]],
) -> None:
    """Translate the neuron's chunks as they come until `[DONE]` or the end of the body."""
    parser = sse.SSEParser()
    async for data in px.response.content.iter_any():
        for event in parser.feed(data):
            if event.data is None:
                await send(translator.ping())  # the neuron's keep-alive while prefilling
                continue
            if event.done:
                return
            chunk = event.json()
            if not isinstance(chunk, dict):
                raise UpstreamError(f"neuron {px.neuron} sent a malformed chunk")
            if "error" in chunk:
                raise error_from_response(500, event.data.encode(), px.neuron)
            if chunk.get("usage"):
                px.note_usage(chunk["usage"])
            events = translator.feed(chunk)
            if dialect.has_token(events):
                px.note_first_token()
            await send(events)
