"""Health poller: every neuron's `/health` and `/models`, concurrently, every `poll_interval`.

One failed poll (connection refused, no answer within `stall_timeout`, bad answer) counts toward
the neuron's down hysteresis and ends the waits of its non-streaming requests (they are retried
elsewhere before their first byte, or end with a clear error); one good poll brings it back up. `poll(neuron)` is also called on demand by the
router (fresh memory before planning a load) and after loads and unloads.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from cortex.errors import CortexError
from cortex.gateway.fleet import Fleet, Neuron

log = logging.getLogger("cortex.gateway")


class Poller:
    """Keeps `fleet` fresh."""

    def __init__(self, fleet: Fleet, interval: float) -> None:
        self.fleet = fleet
        self.interval = max(0.05, interval)
        self._inflight: dict[str, asyncio.Task[bool]] = {}

    def poke(self, neuron: Neuron) -> asyncio.Task[bool]:
        """Start a poll of one neuron now, or join the one running (without waiting)."""
        task = self._inflight.get(neuron.name)
        if task is None:
            task = asyncio.ensure_future(self._poll(neuron))
            self._inflight[neuron.name] = task
            task.add_done_callback(lambda _: self._inflight.pop(neuron.name, None))
        return task

    async def poll(self, neuron: Neuron) -> bool:
        """Poll one neuron now (concurrent callers share one poll); True if it answered."""
        return await asyncio.shield(self.poke(neuron))

    async def _poll(self, neuron: Neuron) -> bool:
        client = neuron.client
        try:
            health, models = await asyncio.gather(client.health(), client.models())
        except (aiohttp.ClientError, TimeoutError, CortexError, ValueError) as exc:
            went_down = neuron.poll_failed()
            why = str(exc) or type(exc).__name__
            neuron.stalled(f"its /health failed: {why}")
            if neuron.failures == 1:
                # A neuron never seen yet (still starting, e.g. the local one) is no news.
                level = logging.WARNING if neuron.last_seen else logging.DEBUG
                log.log(level, "neuron %s: poll failed (%s)", neuron.name, why)
            if went_down:
                log.warning("neuron %s is down", neuron.name)
            return False
        was_up = neuron.up
        neuron.apply_poll(health, models)
        if not was_up:
            log.info("neuron %s is up (%s)", neuron.name, client.endpoint)
        return True

    async def poll_all(self) -> None:
        """Poll every neuron concurrently."""
        await asyncio.gather(*(self.poll(n) for n in self.fleet))

    async def run(self) -> None:
        """Poll forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.poll_all()
