"""What one neuron process holds: config, registry, workers, loaded models, drain state.

Route handlers reach it through the typed `STATE` app key. `InFlight` counts generation
requests so that SIGTERM can drain them and `/health` can report them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

from aiohttp import web

from cortex.config import NeuronConfig
from cortex.neuron.manager import ModelManager
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.registry import ModelRegistry


@dataclass
class InFlight:
    """A counter of running generation requests that can be awaited down to zero."""

    count: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def enter(self) -> None:
        """One more request is running."""
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request finished (however it ended)."""
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request runs; False when `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass
class NeuronState:
    """Everything the routes share."""

    config: NeuronConfig
    registry: ModelRegistry
    devices: list[str]
    metrics: NeuronMetrics
    manager: ModelManager
    node: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.monotonic)
    draining: bool = False
    in_flight: InFlight = field(default_factory=InFlight)
    public_url: str = "http://127.0.0.1:13131"

    @property
    def uptime(self) -> float:
        """Seconds since the neuron started."""
        return time.monotonic() - self.started


STATE: web.AppKey[NeuronState] = web.AppKey("neuron_state", NeuronState)
