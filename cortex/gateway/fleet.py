"""Fleet state: what every neuron is, has and is doing, as the gateway knows it.

The poller writes it (`Neuron.apply_poll`, `Neuron.poll_failed`); the router, evictor,
lifecycle and routes read it. A neuron goes `down` after `down_after_failures` failed polls in a
row and back `up` on one success (hysteresis: a single slow poll does not flap it). Every
failed poll also wakes the requests waiting on the neuron's `stall_signal` (see exchange.py). Per model and
neuron the gateway keeps its own in-flight count (exact, updated on every proxied request), the
neuron's reported count (from the last poll), and the last use (for LRU eviction and
`idle_unload_after`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cortex.gateway.neuron_client import NeuronClient


@dataclass
class Device:
    """One device of a neuron, with memory from its last `/health`."""

    id: str
    name: str = ""
    total_bytes: int = 0
    free_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
        }


@dataclass
class Placement:
    """A model on a neuron: `available` (on disk), `loading` or `loaded`."""

    id: str
    state: str = "available"
    device: str | None = None
    bytes: int = 0
    max_context: int | None = None
    arch: str | None = None
    remote_in_flight: int = 0
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    draining: bool = False
    base_url: str | None = None

    @property
    def busy(self) -> bool:
        """Requests in flight, by the gateway's count or the neuron's last report."""
        return self.in_flight > 0 or self.remote_in_flight > 0

    @property
    def routable(self) -> bool:
        return self.state == "loaded" and not self.draining

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "device": self.device,
            "bytes": self.bytes,
            "in_flight": max(self.in_flight, self.remote_in_flight),
            "idle_s": round(time.monotonic() - self.last_used, 3),
        }


class Neuron:
    """One neuron: its client, up/down state, devices and models."""

    def __init__(self, client: NeuronClient, down_after_failures: int) -> None:
        self.client = client
        self.name = client.name
        self.up = False
        self.status = "unknown"
        self.failures = 0
        self.down_after_failures = max(1, down_after_failures)
        self.last_seen: float | None = None
        self.version: str | None = None
        self.devices: dict[str, Device] = {}
        self.models: dict[str, Placement] = {}
        self.cycles = 0
        self._stall: asyncio.Future[str] | None = None

    def stall_signal(self) -> asyncio.Future[str]:
        """A future that resolves (with why) at the next failed poll of this neuron: what a
        request waiting on it without a read timeout (a non-streaming answer) watches."""
        if self._stall is None or self._stall.done():
            self._stall = asyncio.get_running_loop().create_future()
        return self._stall

    def stalled(self, why: str) -> None:
        """A poll failed: wake every request waiting on `stall_signal`."""
        if self._stall is not None and not self._stall.done():
            self._stall.set_result(why)
        self._stall = None

    @property
    def routable(self) -> bool:
        """Up and not draining: new requests and loads may go here."""
        return self.up and self.status != "draining"

    def apply_poll(self, health: dict[str, Any], models: list[dict[str, Any]]) -> None:
        """Merge one successful poll; the gateway's own counters survive it."""
        self.up = True
        self.failures = 0
        self.last_seen = time.time()
        self.status = str(health.get("status", "ok"))
        self.version = health.get("version")
        self.devices = {
            str(d.get("id")): Device(
                id=str(d.get("id")),
                name=str(d.get("name", "")),
                total_bytes=int(d.get("total_bytes") or 0),
                free_bytes=int(d.get("free_bytes") or 0),
            )
            for d in health.get("devices", [])
        }
        seen: set[str] = set()
        for place in self.models.values():
            place.remote_in_flight = 0
        for entry in models:
            self._merge(entry, seen)
        for entry in health.get("models", []):
            self._merge(entry, seen, health=True)
        for model_id in list(self.models):
            if model_id not in seen:
                del self.models[model_id]

    def _merge(self, entry: dict[str, Any], seen: set[str], health: bool = False) -> None:
        model_id = str(entry.get("id"))
        place = self.models.get(model_id)
        if place is None:
            place = self.models[model_id] = Placement(id=model_id)
        if not (health and model_id in seen):
            # /models is the catalogue; /health only adds what /models did not list.
            state = str(entry.get("state") or "available")
            if state != "loaded":
                place.base_url = None
            elif place.state != "loaded":
                place.last_used = time.monotonic()
            place.state = state
            place.device = entry.get("device") or place.device
            place.bytes = int(entry.get("bytes") or place.bytes or 0)
            place.max_context = entry.get("max_context") or place.max_context
            place.arch = entry.get("arch") or place.arch
        if health:
            place.remote_in_flight = int(entry.get("in_flight") or 0) + int(
                entry.get("waiting") or 0
            )
        seen.add(model_id)

    def poll_failed(self) -> bool:
        """Count a failed poll (or a refused connection); True if this just took it down."""
        self.failures += 1
        if self.up and self.failures >= self.down_after_failures:
            self.up = False
            return True
        return False

    def loaded(self) -> Iterator[Placement]:
        """Models loaded (or loading) here."""
        return (p for p in self.models.values() if p.state in ("loaded", "loading"))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.client.endpoint,
            "kind": self.client.kind,
            "state": "up" if self.up else "down",
            "status": self.status,
            "version": self.version,
            "devices": [d.to_json() for d in self.devices.values()],
            "models": [p.to_json() for p in self.loaded()],
            "available": sorted(p.id for p in self.models.values() if p.state == "available"),
            "last_seen": self.last_seen,
            "cycles": self.cycles,
        }


class Fleet:
    """All neurons, by name, in config order."""

    def __init__(self, neurons: list[Neuron]) -> None:
        self.neurons: dict[str, Neuron] = {n.name: n for n in neurons}

    def __iter__(self) -> Iterator[Neuron]:
        return iter(self.neurons.values())

    def get(self, name: str) -> Neuron | None:
        return self.neurons.get(name)

    def up(self) -> list[Neuron]:
        return [n for n in self.neurons.values() if n.up]

    def loaded_places(self, model_id: str) -> list[tuple[Neuron, Placement]]:
        """Routable placements of a model on routable neurons."""
        out = []
        for neuron in self.neurons.values():
            place = neuron.models.get(model_id)
            if place is not None and place.routable and neuron.routable:
                out.append((neuron, place))
        return out

    def known(self, model_id: str) -> bool:
        """Some neuron had the model at its last good poll (a down one may come back)."""
        return any(model_id in n.models for n in self.neurons.values())
