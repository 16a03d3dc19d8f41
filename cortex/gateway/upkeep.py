"""Upkeep in the background: pinned models kept loaded, idle unloads and defrag.

Every tick (the poll interval, at least 0.2 s):
- pins: a pinned model not loaded where its pin says (any allowed neuron, or the named one) and
  not already loading gets a load. A failed pin load is reported (logged once, and in `/fleet`
  as the model's `pin_error`) and retried after `PIN_RETRY_S`, doubling up to
  `PIN_RETRY_MAX_S`; a pin whose model no neuron has (404) is not retried until a poll shows
  the model on some neuron;
- `idle_unload_after` (> 0): a loaded, unpinned model with nothing in flight and no use for that
  long is unloaded (`cortex_evictions_total{reason="idle"}`);
- `defrag_after_cycles = N` (> 0): after N unloads the gateway made on a neuron (evictions, idle
  unloads, `/fleet/unload`; each ends one load/unload cycle), the gateway asks the neuron to
  release cached memory (`POST /memory/release`, see neuron_client.py) and then reloads each
  resident model one by one (unload, then load on the same device). While a model reloads,
  requests for it wait on that reload as on any cold load; the others keep serving. A neuron
  without the release route still gets the one-by-one reload, which frees and re-allocates
  every model's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cortex.config import CortexConfig
from cortex.errors import CortexError, ModelNotFound, printable
from cortex.gateway.fleet import Fleet, Neuron
from cortex.gateway.pins import Pins
from cortex.gateway.router import Router

log = logging.getLogger("cortex.gateway")
PIN_RETRY_S = 30.0
PIN_RETRY_MAX_S = 3600.0


class Upkeep:
    """Pins, idle unloads and defrag for the whole fleet."""

    def __init__(self, config: CortexConfig, fleet: Fleet, router: Router, pins: Pins) -> None:
        self.fleet = fleet
        self.router = router
        self.pins = pins
        self.tick = max(0.2, float(config.gateway.poll_interval))
        self.idle_after = float(config.eviction.idle_unload_after)
        self.defrag_after = config.eviction.defrag_after_cycles
        self._pin_next_try: dict[tuple[str, str | None], float] = {}
        self._pin_delay: dict[tuple[str, str | None], float] = {}
        self._pin_missing: set[tuple[str, str | None]] = set()
        self._defrags: dict[str, asyncio.Task] = {}
        router.on_cycle.append(self._cycled)

    async def run(self) -> None:
        """Tick forever (cancelled at shutdown)."""
        try:
            while True:
                await asyncio.sleep(self.tick)
                self.ensure_pins()
                await self.unload_idle()
        finally:
            for task in self._defrags.values():
                task.cancel()

    def pin_satisfied(self, model: str, neuron: str | None) -> bool:
        """Loaded (or loading) where the pin wants it."""
        for n in self.fleet:
            place = n.models.get(model)
            if (neuron is None or n.name == neuron) and place and place.state != "available":
                return True
        return False

    def ensure_pins(self) -> None:
        """Start loads for pinned models that are not loaded."""
        now = time.monotonic()
        for model, neuron in self.pins.items():
            if self.pin_satisfied(model, neuron) or self.router.loading(model):
                continue
            if self._pin_next_try.get((model, neuron), 0.0) > now:
                continue
            if (model, neuron) in self._pin_missing and not self.fleet.known(model):
                continue
            task = self.router.load(model, neuron)
            task.add_done_callback(lambda t, key=(model, neuron): self._pin_loaded(key, t))

    def _pin_loaded(self, key: tuple[str, str | None], task: asyncio.Task) -> None:
        # A failed pin load is reported and retried later, less and less often.
        error = None if task.cancelled() else task.exception()
        if not task.cancelled() and error is None:
            self._pin_next_try.pop(key, None)
            self._pin_delay.pop(key, None)
            self._pin_missing.discard(key)
            self.pins.problems.pop(key[0], None)
            return
        delay = self._pin_delay.get(key, PIN_RETRY_S / 2) * 2
        self._pin_delay[key] = min(delay, PIN_RETRY_MAX_S)
        self._pin_next_try[key] = time.monotonic() + self._pin_delay[key]
        if isinstance(error, ModelNotFound):
            self._pin_missing.add(key)
        if error is not None:
            why = getattr(error, "message", None) or str(error)
            if self.pins.problems.get(key[0]) != why:
                log.warning("pinned model %s cannot load: %s", printable(key[0]), why)
            self.pins.problems[key[0]] = why

    async def unload_idle(self) -> None:
        """Unload models idle longer than `idle_unload_after`."""
        if self.idle_after <= 0:
            return
        now = time.monotonic()
        for neuron in self.fleet.up():
            if not neuron.client.manages_models:
                continue
            for place in list(neuron.models.values()):
                idle = (
                    place.state == "loaded"
                    and not place.busy
                    and not place.draining
                    and now - place.last_used >= self.idle_after
                    and not self.pins.is_pinned(place.id, neuron.name)
                )
                if idle:
                    try:
                        await self.router.unload(neuron, place, reason="idle")
                    except CortexError as exc:
                        log.warning(
                            "idle unload of %s on %s failed: %s", place.id, neuron.name, exc
                        )

    def _cycled(self, neuron: Neuron) -> None:
        if self.defrag_after <= 0 or neuron.cycles < self.defrag_after:
            return
        if neuron.name not in self._defrags:
            task = asyncio.ensure_future(self.defrag(neuron))
            self._defrags[neuron.name] = task
            task.add_done_callback(lambda _: self._defrags.pop(neuron.name, None))

    async def defrag(self, neuron: Neuron) -> None:
        """Release the neuron's cached memory, then reload its resident models one by one."""
        neuron.cycles = 0
        try:
            released = await neuron.client.release_memory()
        except CortexError as exc:
            log.warning("defrag of %s: memory release failed: %s", neuron.name, exc)
            released = False
        resident = [p.id for p in neuron.models.values() if p.state == "loaded"]
        log.info(
            "defrag of %s: release %s, reloading %d model(s)",
            neuron.name,
            "done" if released else "unsupported",
            len(resident),
        )
        for model in resident:
            try:
                await self.router.reload(neuron, model)
            except CortexError as exc:
                log.warning("defrag of %s: reload of %s failed: %s", neuron.name, model, exc)
