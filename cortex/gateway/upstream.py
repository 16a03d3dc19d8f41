"""The proxy core: route a request, cold-load if needed, open the neuron's answer, retry.

Both API dialects plug in here: the OpenAI passthrough (proxy.py) and the Anthropic routes
(messages.py) call `open_upstream` and relay `Upstream.response` their own way.

    async def on_wait() -> None:          # called at once and every second while a cold load runs
        ...write an SSE comment or an Anthropic `ping` (prepare the response on first call)...

    upstream = await open_upstream(request, "qwen", "/v1/chat/completions", body, stream=True,
                                   on_wait=on_wait)
    async with upstream:                  # always: it releases the in-flight count and connection
        async for chunk in upstream.response.content.iter_any(): ...
        upstream.note_first_token()       # when the first token goes to the client (TTFT)
        upstream.note_usage(usage)        # the OpenAI `usage` object, for token metrics

A neuron that refuses the connection, breaks it or answers 503 before the first byte is
retried on another neuron (up to `MAX_ATTEMPTS` in all); one that no longer has a model the
gateway believed loaded there (404 `model_not_found`: it restarted) gets the model loaded
again. Other error answers are raised as the `cortex.errors` class the neuron's envelope names
(message and status kept), so each route renders them in its own dialect. The neuron's own
`Retry-After` (on a 429 or 503) is kept too; when every neuron was busy, the client is told the
soonest of their delays. Overhead (`x-cortex-overhead-ms`) is the gateway's own time before the
answer's headers: arrival to headers, minus cold-load waiting and the neuron's time.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cortex.errors import CortexError, Unavailable, UpstreamError
from cortex.gateway.context import ARRIVED, GATEWAY, MODEL, NEURON, Gateway
from cortex.gateway.neuron_client import error_from_response
from cortex.gateway.router import OnWait, Route

MAX_ATTEMPTS = 3


class Upstream:
    """A neuron's 2xx answer to one proxied request. Use it as `async with`: leaving closes it,
    and leaving on an exception (client gone, relay failed) drops the connection so the neuron
    sees the disconnect and cancels the generation."""

    def __init__(
        self,
        gw: Gateway,
        route: Route,
        response: aiohttp.ClientResponse,
        model: str,
        arrived: float,
        sent: float,
        waited: float,
    ) -> None:
        self.gw = gw
        self.route = route
        self.response = response
        self.model = model
        self.neuron = route.neuron.name
        self.arrived = arrived
        self.sent = sent
        self.headers_at = time.perf_counter()
        self.overhead_ms = max(0.0, (self.headers_at - arrived - waited) * 1000)
        self.first_token_at: float | None = None
        self.completion_tokens = 0
        self._closed = False

    def headers(self) -> dict[str, str]:
        """Response headers the gateway adds: the chosen neuron and its own overhead."""
        return {"x-cortex-neuron": self.neuron, "x-cortex-overhead-ms": f"{self.overhead_ms:.3f}"}

    def note_first_token(self) -> None:
        """Record time to first token (once)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            ttft = self.first_token_at - self.arrived
            metrics = self.gw.metrics
            metrics.of(metrics.ttft, self.model, self.neuron).observe(ttft)

    def note_usage(self, usage: Any) -> None:
        """Count tokens from an OpenAI `usage` object."""
        self.completion_tokens += self.gw.metrics.usage(self.model, self.neuron, usage)

    def close(self, broken: bool = False) -> None:
        """Release the in-flight count and the connection (dropped when `broken`)."""
        if self._closed:
            return
        self._closed = True
        now = time.perf_counter()
        place = self.route.place
        place.in_flight -= 1
        place.last_used = time.monotonic()
        if broken:
            self.response.close()
        else:
            self.response.release()
        metrics = self.gw.metrics
        metrics.of(metrics.duration, self.model, self.neuron).observe(now - self.arrived)
        # Streams: decode speed after the first token; whole answers: tokens over their time.
        start = self.first_token_at or self.sent
        if self.completion_tokens > 1 and now > start:
            tps = self.completion_tokens / (now - start)
            metrics.of(metrics.tps, self.model, self.neuron).observe(tps)

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(broken=exc_type is not None)


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


async def open_upstream(
    request: web.Request,
    model: str,
    path: str,
    body: bytes | dict[str, Any],
    stream: bool,
    on_wait: OnWait | None = None,
) -> Upstream:
    """Route `model` (an alias or id), cold-load it if needed, and POST `body` to `path` (e.g.
    `/v1/chat/completions`) on the chosen neuron; return its 2xx answer with headers read.

    `body`: bytes are forwarded untouched (the caller already put the resolved model id in
    them); a dict is encoded with `model` set to the resolved id and, when `stream`,
    `stream_options.include_usage` true (strip the final usage chunk yourself if your client
    did not ask for it). `on_wait` is awaited when a cold load starts and every second while it
    runs (only then), e.g. to prepare a streaming response and send keep-alives.
    Raises a `cortex.errors` error: ModelNotFound, Unavailable (no capacity, or still loading
    after `cold_load_timeout`; has Retry-After), the neuron's own error (InvalidRequest,
    ContextLengthExceeded's code...), or, when every attempt failed, Unavailable if each
    neuron answered 503 and UpstreamError (502) otherwise.
    """
    gw = request.app[GATEWAY]
    arrived = request.get(ARRIVED) or time.perf_counter()
    resolved = gw.models.resolve(model)
    payload = encode_body(body, resolved, stream)
    exclude: frozenset[str] = frozenset()
    failures: list[str] = []
    only_busy = True  # every failure so far was a 503: the fleet is busy, not broken
    delays: list[float] = []  # Retry-After of each busy answer
    waited = 0.0
    for _ in range(MAX_ATTEMPTS):
        started = time.perf_counter()
        try:
            route = await gw.router.route(resolved, exclude=exclude, on_wait=on_wait)
        except CortexError as exc:
            if not failures:
                raise
            raise _gave_up([*failures, exc.message], only_busy, delays) from None
        if route.cold:
            waited += time.perf_counter() - started
        neuron = route.neuron
        # Labels only once routed: a made-up model name must not become a metrics series.
        request[MODEL] = resolved
        request[NEURON] = neuron.name
        route.place.in_flight += 1
        sent = time.perf_counter()
        try:
            response = await neuron.client.post(route.base_url, path, payload, gw.proxy_timeout)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            route.place.in_flight -= 1
            only_busy = False
            failures.append(f"neuron {neuron.name} failed: {exc or type(exc).__name__}")
            exclude |= {neuron.name}
            gw.poller.poke(neuron)
            continue
        waited += time.perf_counter() - sent
        if response.status < 400:
            return Upstream(gw, route, response, resolved, arrived, sent, waited)
        try:
            raw = await response.read()
        finally:
            response.release()
            route.place.in_flight -= 1
        error = error_from_response(response.status, raw, neuron.name)
        delay = retry_after(response.headers)
        if delay is not None:
            error.retry_after = delay
        if error.code == "model_not_found" and route.place.state == "loaded":
            # The neuron lost the model (restart, unload behind our back): load it again.
            route.place.state = "available"
            route.place.base_url = None
            gw.poller.poke(neuron)
            failures.append(f"neuron {neuron.name}: {error.message}")
            continue
        if response.status != 503:
            raise error
        failures.append(f"neuron {neuron.name}: {error.message}")
        if error.retry_after is not None:
            delays.append(error.retry_after)
        exclude |= {neuron.name}
    raise _gave_up(failures, only_busy, delays)


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
