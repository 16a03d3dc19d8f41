"""The agent's one connection to the gateway: streamed `/v1/chat/completions` with tools.

Each request streams; text and reasoning deltas go to a callback as they arrive (the editor
shows them live), and the streamed tool-call fragments are assembled into whole calls. Every
failure comes back as a `cortex.errors` class, so the agent can tell the editor what happened in
words: a gateway that cannot be reached is `Unreachable`, an error answer (before or inside the
stream) is the class its envelope's `code` names, as for the CLI's client commands.

Without `--model` the agent uses the first model of the gateway's catalogue that is loaded
somewhere, else the first one listed.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

from cortex.api.openai import reasoning_text
from cortex.api.sse import SSEParser
from cortex.commands.client import remote_error
from cortex.errors import ModelNotFound, Unreachable, UpstreamError

DeltaKind = Literal["text", "reasoning"]
OnDelta = Callable[[DeltaKind, str], Awaitable[None]]

# A cold load can keep a request waiting for minutes; the gateway sends SSE comments meanwhile,
# so a long read timeout only trips on a gateway that went silent.
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)


@dataclass
class ToolCall:
    """A whole tool call from the model; `arguments` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass
class Answer:
    """The assistant's answer to one request."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None

    def message(self) -> dict[str, Any]:
        """The answer as an OpenAI assistant message, for the conversation history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


class ChatClient:
    """Chat completions from one gateway, with `$CORTEX_API_KEY`-style bearer auth."""

    def __init__(self, base_url: str, api_key: str | None, model: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._http is not None:
            await self._http.close()

    async def model(self) -> str:
        """The model to talk to: `--model`, else one from the gateway's catalogue."""
        if self._model is None:
            catalogue = await self._json("GET", "/v1/models")
            models = catalogue.get("data") or []
            if not models:
                raise ModelNotFound(f"the gateway at {self.base_url} lists no model")
            loaded = [m for m in models if (m.get("cortex") or {}).get("state") == "loaded"]
            self._model = (loaded or models)[0]["id"]
        return self._model

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_delta: OnDelta
    ) -> Answer:
        """Stream one chat completion; `on_delta` sees each text and reasoning piece."""
        body = {"model": await self.model(), "messages": messages, "tools": tools, "stream": True}
        url = self.base_url + "/v1/chat/completions"
        answer = Answer()
        calls: dict[int, ToolCall] = {}
        try:
            async with self._session().post(url, data=orjson.dumps(body)) as response:
                if response.status >= 400:
                    raise remote_error(response.status, await _body(response), url)
                parser = SSEParser()
                async for raw in response.content.iter_any():
                    for event in parser.feed(raw):
                        if event.done:
                            answer.tool_calls = _whole(calls)
                            return answer
                        if event.data is not None:
                            await _apply(event.json(), answer, calls, on_delta, url)
        except aiohttp.ClientError as exc:
            raise _unreachable(url, exc) from None
        except TimeoutError:
            raise Unreachable(f"no answer from {url} in {_TIMEOUT.sock_read:g}s", url=url) from None
        raise UpstreamError(f"the stream from {url} ended before [DONE]")

    async def _json(self, method: str, path: str) -> Any:
        url = self.base_url + path
        try:
            async with self._session().request(method, url) as response:
                data = await _body(response)
                if response.status >= 400:
                    raise remote_error(response.status, data, url)
                return data
        except aiohttp.ClientError as exc:
            raise _unreachable(url, exc) from None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            headers = {"Content-Type": "application/json", **self._headers}
            self._http = aiohttp.ClientSession(headers=headers, timeout=_TIMEOUT)
        return self._http


def _unreachable(url: str, exc: aiohttp.ClientError) -> Unreachable:
    reason: object = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        reason = "connection refused" if refused else exc.os_error
    hint = "is `cortex serve` running there? (--gateway or $CORTEX_GATEWAY)"
    return Unreachable(f"could not reach {url}: {reason}; {hint}", url=url)


async def _apply(
    chunk: dict[str, Any], answer: Answer, calls: dict[int, ToolCall], on_delta: OnDelta, url: str
) -> None:
    """Fold one stream chunk into `answer` (tool-call fragments into `calls`)."""
    if "error" in chunk:
        raise remote_error(502, chunk, url)
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if reasoning := reasoning_text(delta):
            answer.reasoning += reasoning
            await on_delta("reasoning", reasoning)
        if text := delta.get("content"):
            answer.content += text
            await on_delta("text", text)
        for fragment in delta.get("tool_calls") or []:
            function = fragment.get("function") or {}
            call = calls.setdefault(fragment.get("index", 0), ToolCall("", "", ""))
            call.id = call.id or fragment.get("id") or ""
            call.name += function.get("name") or ""
            call.arguments += function.get("arguments") or ""
        if choice.get("finish_reason"):
            answer.finish_reason = choice["finish_reason"]


def _whole(calls: dict[int, ToolCall]) -> list[ToolCall]:
    """The assembled calls in order; a call the model sent without an id gets one, since the
    tool results must name the call they answer."""
    ordered = [calls[i] for i in sorted(calls)]
    for call in ordered:
        call.id = call.id or f"call_{uuid.uuid4().hex[:24]}"
    return ordered


async def _body(response: aiohttp.ClientResponse) -> Any:
    try:
        return orjson.loads(await response.read())
    except orjson.JSONDecodeError:
        return None
