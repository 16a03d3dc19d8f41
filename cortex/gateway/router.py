"""Routing and cold loads (README: "How the gateway places models").

`Router.route(model)` answers where a request goes:
1. the model is loaded on a healthy neuron -> the least busy such neuron (gateway in-flight
   count, then the neuron's reported count, then least recently used);
2. else a cold load on the best feasible neuron (evictor.py decides where and what goes first).
   Loads are single-flight per model: however many requests wait, one load runs, as an
   independent task, so a waiter that gives up (client gone, `cold_load_timeout`) neither
   cancels nor leaks it. Waiters get an `on_wait` call after `KEEPALIVE_S` and every
   `KEEPALIVE_S` after, so streams can send SSE comments (a load that fails at once is a plain
   HTTP error); past `cold_load_timeout` they get 503 with Retry-After.

Planning (fresh `/health` of the candidates, choosing victims, unloading them, reserving the
memory) runs under one lock so two concurrent cold loads never count the same free bytes; the
loads themselves run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from cortex.config import CortexConfig
from cortex.errors import (
    CortexError,
    InsufficientMemory,
    ModelNotFound,
    NotFound,
    Unavailable,
    UpstreamError,
    printable,
    quoted,
)
from cortex.gateway.catalogue import suggest
from cortex.gateway.evictor import Plan, plan_placement
from cortex.gateway.fleet import Fleet, Neuron, Placement
from cortex.gateway.metrics import Metrics
from cortex.gateway.pins import Pins
from cortex.gateway.poller import Poller

log = logging.getLogger("cortex.gateway")
KEEPALIVE_S = 1.0
OnWait = Callable[[], Awaitable[None]]


@dataclass
class Route:
    """Where one request goes: the neuron, the model's placement there and its base URL."""

    neuron: Neuron
    place: Placement
    base_url: str
    cold: bool = False


class Router:
    """Chooses neurons, runs cold loads and evictions."""

    def __init__(
        self, config: CortexConfig, fleet: Fleet, poller: Poller, metrics: Metrics, pins: Pins
    ) -> None:
        self.models = config.models
        self.strategy = config.eviction.strategy
        self.cold_load_timeout = float(config.gateway.cold_load_timeout)
        self.fleet = fleet
        self.poller = poller
        self.metrics = metrics
        self.pins = pins
        self.on_cycle: list[Callable[[Neuron], None]] = []
        self._loads: dict[tuple[str, str | None], asyncio.Task[tuple[Neuron, Placement]]] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._plan_lock = asyncio.Lock()

    def priority_of(self, model_id: str) -> int:
        entry = self.models.entry(model_id)
        return entry.priority if entry else 100

    def allowed(self, model_id: str, neuron: str) -> bool:
        """models.toml `neurons`: where the model may run (empty: anywhere)."""
        entry = self.models.entry(model_id)
        return not entry or not entry.neurons or neuron in entry.neurons

    async def route(
        self, model_id: str, *, exclude: frozenset[str] = frozenset(), on_wait: OnWait | None = None
    ) -> Route:
        """Where a request for `model_id` (already alias-resolved) goes; may cold-load."""
        places = [
            (n, p)
            for n, p in self.fleet.loaded_places(model_id)
            if n.name not in exclude and self.allowed(model_id, n.name)
        ]
        cold = not places
        if cold:
            task = self.load(model_id, exclude=exclude)
            places = [await self.wait(task, model_id, on_wait)]
        neuron, place = min(
            places, key=lambda np: (np[1].in_flight, np[1].remote_in_flight, np[1].last_used)
        )
        place.last_used = time.monotonic()
        if place.base_url is None:
            try:
                place.base_url = await neuron.client.model_endpoint(model_id)
            except (CortexError, aiohttp.ClientError, TimeoutError):
                return Route(neuron, place, neuron.client.endpoint, cold)
        return Route(neuron, place, place.base_url, cold)

    def load(
        self, model_id: str, neuron: str | None = None, exclude: frozenset[str] = frozenset()
    ) -> asyncio.Task[tuple[Neuron, Placement]]:
        """The single-flight load of `model_id` (on `neuron`, or wherever is best)."""
        return self._single_flight(
            (model_id, neuron), lambda: self._load(model_id, neuron, exclude)
        )

    def _single_flight(
        self,
        key: tuple[str, str | None],
        start: Callable[[], Awaitable[tuple[Neuron, Placement]]],
    ) -> asyncio.Task[tuple[Neuron, Placement]]:
        """The running task for `key`, or a new one from `start()` registered under it."""
        task = self._loads.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._loads[key] = task
            task.add_done_callback(lambda t: self._load_done(key, t))
        return task

    def _load_done(self, key: tuple[str, str | None], task: asyncio.Task) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            why = getattr(exc, "message", None) or str(exc)
            log.warning("load of %s failed: %s", printable(key[0]), printable(why, 2000))

    def loading(self, model_id: str) -> bool:
        return any(k[0] == model_id for k in self._loads)

    async def wait(
        self, task: asyncio.Task[tuple[Neuron, Placement]], model_id: str, on_wait: OnWait | None
    ) -> tuple[Neuron, Placement]:
        """Wait for a load up to `cold_load_timeout`, calling `on_wait` after the first
        `KEEPALIVE_S` and every `KEEPALIVE_S` after; cancelling the waiter leaves the load
        running."""
        deadline = time.monotonic() + self.cold_load_timeout
        first = True
        while True:
            # Not at once: a load that cannot even start (unknown model, no room) fails within
            # the first second and the client gets a plain HTTP error, not a 200 stream.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"model {quoted(model_id)} is still loading after {self.cold_load_timeout:.0f}s",
                    retry_after=30,
                )
            if on_wait is not None and not task.done() and not first:
                await on_wait()
            first = False
            step = min(KEEPALIVE_S, remaining) if on_wait else remaining
            done, _ = await asyncio.wait({task}, timeout=step)
            if done:
                return task.result()

    def _candidates(self, model_id: str, neuron: str | None, exclude: frozenset[str]) -> list:
        entry = self.models.entry(model_id)
        if neuron is not None and self.fleet.get(neuron) is None:
            raise NotFound(f"no neuron named {quoted(neuron)}")
        out = [
            n
            for n in self.fleet
            if n.routable
            and n.client.manages_models
            and n.name not in exclude
            and (neuron is None or n.name == neuron)
            and self.allowed(model_id, n.name)
            and (model_id in n.models or (entry is not None and n.name in entry.neurons))
        ]
        if not out:
            if entry is None and not self.fleet.known(model_id):
                hint = suggest(model_id, self.fleet, self.models)
                raise ModelNotFound(
                    f"model {quoted(model_id)} not found on any neuron{hint}", param="model"
                )
            where = f"neuron {quoted(neuron)}" if neuron else "healthy neuron"
            raise Unavailable(f"no {where} can load model {quoted(model_id)} now", retry_after=10)
        return out

    def _need(self, model_id: str) -> int:
        entry = self.models.entry(model_id)
        if entry is not None and entry.memory:
            return int(entry.memory)
        sizes = [n.models[model_id].bytes for n in self.fleet if model_id in n.models]
        return max(sizes, default=0)

    def budget_of(self, place: Placement) -> int:
        """Memory a placed model counts for: models.toml `memory`, at least its real bytes."""
        entry = self.models.entry(place.id)
        return max(place.bytes, int(entry.memory) if entry and entry.memory else 0)

    async def _load(
        self, model_id: str, neuron_name: str | None, exclude: frozenset[str]
    ) -> tuple[Neuron, Placement]:
        need = self._need(model_id)
        for attempt in range(2):
            plan = await self._plan(model_id, neuron_name, exclude, need)
            if isinstance(plan, tuple):
                return plan
            key = (plan.neuron.name, plan.device_id or "")
            self._reserved[key] = self._reserved.get(key, 0) + plan.need
            try:
                place = await self._do_load(plan, model_id)
                return plan.neuron, place
            except InsufficientMemory as exc:
                required = int(exc.extra.get("required_bytes") or 0)
                if attempt or required <= need:
                    raise
                need = required
            finally:
                self._reserved[key] -= plan.need
        raise AssertionError("unreachable")

    async def _plan(
        self, model_id: str, neuron_name: str | None, exclude: frozenset[str], need: int
    ) -> Plan | tuple[Neuron, Placement]:
        """Under the plan lock: a fresh look, then a plan with its victims already unloaded (or
        the placement, when someone else loaded the model meanwhile)."""
        async with self._plan_lock:
            candidates = self._candidates(model_id, neuron_name, exclude)
            await asyncio.gather(*(self.poller.poll(n) for n in candidates))
            candidates = [n for n in candidates if n.routable]
            for n in candidates:
                place = n.models.get(model_id)
                if place is not None and place.routable:
                    return n, place
            plan = plan_placement(
                model_id,
                need,
                candidates,
                strategy=self.strategy,
                priority_of=self.priority_of,
                is_pinned=self.pins.is_pinned,
                reserved=lambda n, d: self._reserved.get((n, d), 0),
                budget_of=self.budget_of,
            )
            if plan is None:
                raise Unavailable(
                    f"no neuron has room for model {quoted(model_id)} ({need} bytes), even after "
                    "evicting idle unpinned models",
                    retry_after=30,
                )
            for victim in plan.victims:
                victim.draining = True
            try:
                for victim in plan.victims:
                    await self.unload(plan.neuron, victim, reason="capacity")
            finally:
                for victim in plan.victims:
                    victim.draining = False
            return plan

    async def _do_load(self, plan: Plan, model_id: str) -> Placement:
        neuron = plan.neuron
        entry = self.models.entry(model_id)
        place = neuron.models.get(model_id)
        if place is None:
            place = neuron.models[model_id] = Placement(id=model_id)
        before, place.state = place.state, "loading"
        started = time.monotonic()
        try:
            answer = await neuron.client.load(
                model_id,
                device=plan.device_id if len(neuron.devices) > 1 else None,
                dtype=entry.dtype if entry else None,
                max_context=entry.max_context if entry else None,
                quantize=entry.quantize if entry else None,
                memory=int(entry.memory) if entry and entry.memory else None,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            place.state = before
            raise UpstreamError(f"neuron {neuron.name}: load of {model_id} failed: {exc}") from exc
        except BaseException:
            place.state = before
            raise
        seconds = float(answer.get("load_seconds") or time.monotonic() - started)
        self.metrics.cold_starts.labels(model_id, neuron.name).inc()
        self.metrics.load_duration.labels(model_id, neuron.name).observe(seconds)
        place.state = "loaded"
        place.device = answer.get("device") or place.device
        place.bytes = int(answer.get("bytes") or place.bytes)
        place.base_url = None
        place.last_used = time.monotonic()
        log.info("loaded %s on %s in %.1fs", model_id, neuron.name, seconds)
        # Fresh free memory for the next plan.
        await self.poller.poll(neuron)
        place = neuron.models.setdefault(model_id, place)
        # The load answered 200: a poll that raced with it cannot say otherwise.
        place.state = "loaded"
        return place

    def reload(self, neuron: Neuron, model_id: str) -> asyncio.Task[tuple[Neuron, Placement]]:
        """Unload and load `model_id` on `neuron` again (defrag). Registered as the model's
        single-flight load, so requests that find it draining wait for it."""
        return self._single_flight((model_id, None), lambda: self._reload(neuron, model_id))

    async def _reload(self, neuron: Neuron, model_id: str) -> tuple[Neuron, Placement]:
        place = neuron.models.get(model_id)
        if place is None or place.state != "loaded":
            raise ModelNotFound(f"model {quoted(model_id)} is not loaded on {neuron.name}")
        place.draining = True
        try:
            deadline = time.monotonic() + self.cold_load_timeout
            while place.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if place.remote_in_flight and not place.in_flight:
                    await self.poller.poll(neuron)
            await self.unload(neuron, place, count_cycle=False)
        finally:
            place.draining = False
        device = neuron.devices.get(place.device or "")
        return neuron, await self._do_load(Plan(neuron, device, place.bytes), model_id)

    def cancel_loads(self) -> None:
        """Cancel loads still running (gateway shutdown)."""
        for task in list(self._loads.values()):
            task.cancel()

    async def unload(
        self,
        neuron: Neuron,
        place: Placement,
        reason: str | None = None,
        count_cycle: bool = True,
    ) -> None:
        """Unload a model from a neuron; `reason` (`capacity`, `idle`) counts an eviction."""
        try:
            await neuron.client.unload(place.id)
        except ModelNotFound:
            pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(
                f"neuron {neuron.name}: unload of {place.id} failed: {exc}"
            ) from exc
        place.state = "available"
        place.base_url = None
        if reason:
            self.metrics.evictions.labels(reason, place.id, neuron.name).inc()
            log.info("evicted %s from %s (%s)", place.id, neuron.name, reason)
        if count_cycle:
            neuron.cycles += 1
            for hook in self.on_cycle:
                hook(neuron)
