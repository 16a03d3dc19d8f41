"""`ProxiedRequest`: the one owner of a client request on its way to a neuron and back.

Every dialect plugs in here: the OpenAI passthrough (openai_proxy.py), the Anthropic translation
(anthropic_proxy.py) and the Responses API. A proxied request resolves the model name once
(aliases), routes it, cold-loads if needed, opens the neuron's answer, retries, keeps the
placement's in-flight count, records every metric, and ends broken streams and gone clients the
same way for all of them.

    px = ProxiedRequest(request, body["model"])
    await px.open("/v1/chat/completions", body, stream=True, on_wait=on_wait)
    async with px:                        # always: releases the in-flight count and connection
        async for chunk in px.response.content.iter_any(): ...
        px.note_first_token()             # when the first token goes to the client (TTFT)
        px.note_usage(usage)              # the OpenAI `usage` object, for token metrics
        error = px.broken(why)            # the neuron broke off mid-stream: counted, re-polled
        px.client_gone()                  # the client left: counted, connection dropped

`on_wait` is awaited when a cold load has run for a second and every second after (only
then), e.g. to prepare a streaming response and send keep-alives; a request no neuron can take
fails before that, as a plain HTTP error.

Timeouts and stalls (README: "Timeouts"): a stream from a cortex neuron that sends no byte (not
even its half-second heartbeat) for `stall_timeout` is stalled: before its first byte it is
retried on another neuron, after it the client's stream ends with an error event. A
non-streaming answer has no read timeout (the neuron sends nothing until it is done, however
long that takes); instead the wait for it (`open`, then `read`) ends when a poll of that neuron
fails (no `/health` answer within `stall_timeout`, see poller.py), and is retried or ends with
a clear 502. Either way, and when the client goes away (the handler is cancelled), the
upstream connection is closed, which cancels the generation on the neuron at once.

A neuron that refuses the connection, breaks it or answers 503 before the first byte is retried
on another neuron (up to `MAX_ATTEMPTS` in all); one that closes the connection before any
answer is first tried once more itself, as that is what a pooled keep-alive connection looks
like when the neuron closed it as idle just as it was reused; one that no longer has a model
the gateway believed loaded there (404 `model_not_found`: it restarted) gets the model loaded
again. Other error answers are raised as the `cortex.errors` class the neuron's envelope names
(message and status kept), so each route renders them in its own dialect. The neuron's own
`Retry-After` (on a 429 or 503) is kept too; when every neuron was busy, the client is told the
soonest of their delays. Overhead (`x-cortex-overhead-ms`) is the gateway's own time before
the answer's headers: arrival to headers, minus cold-load waiting and the neuron's time.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from cortex.errors import CortexError, Unavailable, UpstreamError
from cortex.gateway.fleet import Neuron
from cortex.gateway.neuron_client import error_from_response
from cortex.gateway.router import OnWait, Route
from cortex.gateway.state import ARRIVED, GATEWAY, MODEL, NEURON

MAX_ATTEMPTS = 3
T = TypeVar("T")


class NeuronStalled(TimeoutError):
    """The neuron stopped answering its polls while a request waited on it."""


# A generated token in an OpenAI chunk, whatever the JSON spacing of the backend that wrote it.
_TOKEN_RE = re.compile(rb'"(?:content|reasoning_content|text)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[')
USAGE_RE = re.compile(rb'"usage"\s*:\s*\{')


def has_token(events: bytes) -> bool:
    """Whether raw OpenAI stream events carry a generated token (text or a tool call)."""
    return _TOKEN_RE.search(events) is not None


def encode_body(body: bytes | dict[str, Any], model: str, stream: bool) -> bytes:
    """The request body for the neuron. A dict gets `model` and, for streams,
    `stream_options.include_usage` set; bytes are sent exactly as given."""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    body = {**body, "model": model}
    if stream:
        options = body.get("stream_options")
        body["stream"] = True
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return orjson.dumps(body)


class ProxiedRequest:
    """One client request proxied to a neuron (see the module docstring)."""

    def __init__(self, request: web.Request, model: str) -> None:
        self.request = request
        self.gw = request.app[GATEWAY]
        self.requested = model  # as the client named it: an alias stays an alias in answers
        self.model = self.gw.models.resolve(model)
        self.arrived = request.get(ARRIVED) or time.perf_counter()
        self.route: Route | None = None
        self._response: aiohttp.ClientResponse | None = None
        self.sent = self.headers_at = self.arrived
        self.overhead_ms = 0.0
        self.first_token_at: float | None = None
        self.completion_tokens = 0
        self._closed = False

    @property
    def response(self) -> aiohttp.ClientResponse:
        """The neuron's 2xx answer, headers read (after `open`)."""
        assert self._response is not None, "open() first"
        return self._response

    @property
    def neuron(self) -> str:
        """The name of the neuron serving the request ("" before it is routed)."""
        return self.route.neuron.name if self.route else ""

    def max_context(self) -> int | None:
        """The largest context any neuron (or models.toml) gives the model, if known."""
        known = [n.models[self.model].max_context for n in self.gw.fleet if self.model in n.models]
        entry = self.gw.models.entry(self.model)
        known.append(entry.max_context if entry else None)
        return max((int(k) for k in known if k), default=None)

    async def open(
        self, path: str, body: bytes | dict[str, Any], stream: bool, on_wait: OnWait | None = None
    ) -> None:
        """Route the model, cold-load it if needed, POST `body` to `path` on the chosen neuron
        and keep its 2xx answer as `response`.

        `body`: bytes are forwarded untouched (the caller already put the resolved model id in
        them); a dict is encoded with `model` set to the resolved id and, when `stream`,
        `stream_options.include_usage` true (strip the final usage chunk yourself if your client
        did not ask for it). Raises a `cortex.errors` error: ModelNotFound, Unavailable (no
        capacity, or still loading after `cold_load_timeout`; has Retry-After), the neuron's own
        error, or, when every attempt failed, Unavailable if each neuron answered 503 and
        UpstreamError (502) otherwise.
        """
        gw = self.gw
        payload = encode_body(body, self.model, stream)
        exclude: frozenset[str] = frozenset()
        disconnected: frozenset[str] = frozenset()  # neurons that closed a connection unanswered
        failures: list[str] = []
        only_busy = True  # every failure so far was a 503: the fleet is busy, not broken
        delays: list[float] = []  # Retry-After of each busy answer
        waited = 0.0
        for _ in range(MAX_ATTEMPTS):
            started = time.perf_counter()
            try:
                route = await gw.router.route(self.model, exclude=exclude, on_wait=on_wait)
            except CortexError as exc:
                if not failures:
                    raise
                raise _gave_up([*failures, exc.message], only_busy, delays) from None
            if route.cold:
                waited += time.perf_counter() - started
            neuron = route.neuron
            # Labels only once routed: a made-up model name must not become a metrics series.
            self.request[MODEL] = self.model
            self.request[NEURON] = neuron.name
            self.sent = time.perf_counter()
            try:
                answer = await self._attempt(route, path, payload, stream)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
                only_busy = False
                failures.append(f"neuron {neuron.name} failed: {e or type(e).__name__}")
                stale = isinstance(e, aiohttp.ServerDisconnectedError)
                if stale and neuron.name not in disconnected:
                    # Closed before any answer: most often a pooled keep-alive connection the
                    # neuron closed as idle just as it was reused. Once, the same neuron again.
                    disconnected |= {neuron.name}
                    continue
                exclude |= {neuron.name}
                gw.poller.poke(neuron)
                continue
            waited += time.perf_counter() - self.sent
            if isinstance(answer, aiohttp.ClientResponse):
                self.route, self._response = route, answer
                self.headers_at = time.perf_counter()
                self.overhead_ms = max(0.0, (self.headers_at - self.arrived - waited) * 1000)
                return
            if answer.code == "model_not_found" and route.place.state == "loaded":
                # The neuron lost the model (restart, unload behind our back): load it again.
                route.place.state = "available"
                route.place.base_url = None
                gw.poller.poke(neuron)
                failures.append(f"neuron {neuron.name}: {answer.message}")
                continue
            if answer.status != 503:
                raise answer
            failures.append(f"neuron {neuron.name}: {answer.message}")
            if answer.retry_after is not None:
                delays.append(answer.retry_after)
            exclude |= {neuron.name}
        raise _gave_up(failures, only_busy, delays)

    async def _attempt(
        self, route: Route, path: str, payload: bytes, stream: bool
    ) -> aiohttp.ClientResponse | CortexError:
        """One POST: the 2xx answer (the request now counts in flight there) or the error the
        neuron answered; raises on connection failures."""
        place = route.place
        place.in_flight += 1
        kept = False
        try:
            client = route.neuron.client
            timeout = self.gw.proxy_timeout(client, stream)
            post = client.post(route.base_url, path, payload, timeout)
            response = await until_stalled(route.neuron, post)
            if response.status < 400:
                kept = True
                return response
            try:
                raw = await response.read()
            finally:
                response.release()
            error = error_from_response(response.status, raw, route.neuron.name)
            delay = retry_after(response.headers)
            if delay is not None:
                error.retry_after = delay
            return error
        finally:
            if not kept:
                place.in_flight -= 1

    async def read(self) -> bytes:
        """The whole body of a non-streaming answer; a neuron that breaks off or stalls
        meanwhile is an UpstreamError (502) and the connection is dropped."""
        try:
            return await until_stalled(self.route.neuron, self.response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.close(broken=True)
            raise UpstreamError(
                f"neuron {self.neuron} broke off its answer: {exc or type(exc).__name__}"
            ) from exc

    def headers(self) -> dict[str, str]:
        """Response headers the gateway adds: the chosen neuron and its own overhead."""
        return {"x-cortex-neuron": self.neuron, "x-cortex-overhead-ms": f"{self.overhead_ms:.3f}"}

    def note_first_token(self) -> None:
        """Record time to first token (once)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            metrics = self.gw.metrics
            ttft = self.first_token_at - self.arrived
            metrics.of(metrics.ttft, self.model, self.neuron).observe(ttft)

    def note_usage(self, usage: Any) -> None:
        """Count tokens from an OpenAI `usage` object."""
        self.completion_tokens += self.gw.metrics.usage(self.model, self.neuron, usage)

    def count(self, reason: str) -> None:
        """Count an error of this request by `reason` (the request itself is counted by the
        error middleware when the handler returns)."""
        self.gw.count_request(self.request, reason, None)

    def broken(self, why: str) -> UpstreamError:
        """The neuron broke off mid-answer: count it, drop the connection, have the neuron
        polled now; returns the error to give the client in-band."""
        self.count("upstream_broken")
        self.close(broken=True)
        if self.route is not None:
            self.gw.poller.poke(self.route.neuron)
        return UpstreamError(f"neuron {self.neuron} failed mid-stream: {why}")

    def client_gone(self) -> None:
        """The client left: count it and drop the connection, which cancels the generation."""
        self.count("client_disconnect")
        self.close(broken=True)

    def close(self, broken: bool = False) -> None:
        """Release the in-flight count and the connection (dropped when `broken`)."""
        if self._closed or self.route is None or self._response is None:
            return
        self._closed = True
        now = time.perf_counter()
        place = self.route.place
        place.in_flight -= 1
        place.last_used = time.monotonic()
        if broken:
            self._response.close()
        else:
            self._response.release()
        metrics = self.gw.metrics
        metrics.of(metrics.duration, self.model, self.neuron).observe(now - self.arrived)
        # Streams: decode speed after the first token; whole answers: tokens over their time.
        start = self.first_token_at or self.sent
        if self.completion_tokens > 1 and now > start:
            tps = self.completion_tokens / (now - start)
            metrics.of(metrics.tps, self.model, self.neuron).observe(tps)

    async def __aenter__(self) -> ProxiedRequest:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Leaving on an exception (client gone, relay failed) drops the connection so the
        # neuron sees the disconnect and cancels the generation.
        self.close(broken=exc_type is not None)


async def until_stalled(neuron: Neuron, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless a poll of `neuron` fails first (NeuronStalled); the awaited
    work is cancelled then, and when the caller is cancelled (a request's connection closes)."""
    task = asyncio.ensure_future(awaitable)
    stall = neuron.stall_signal()
    try:
        await asyncio.wait({task, stall}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        task.add_done_callback(_discard)
        raise
    if task.done():
        return task.result()
    task.cancel()
    task.add_done_callback(_discard)
    raise NeuronStalled(f"neuron {neuron.name} stalled: {stall.result()}")


def _discard(task: asyncio.Future) -> None:
    """Retrieve a cancelled helper's outcome so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), if any."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _gave_up(failures: list[str], only_busy: bool, delays: list[float]) -> CortexError:
    """After every attempt failed: 503 (come back later, after the soonest Retry-After the
    neurons gave) if each neuron only said it was busy or shutting down, else 502."""
    message = "; ".join(failures)
    if not only_busy:
        return UpstreamError(message)
    return Unavailable(message, retry_after=min(delays)) if delays else Unavailable(message)
