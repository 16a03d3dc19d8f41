"""Where a cold model can go, and what must be unloaded first (README: "How the gateway places models").

`plan_placement` looks at every candidate neuron's devices: a device fits when its free memory
(minus memory reserved by loads in progress) holds the model's estimate; otherwise it may fit
after evicting models that are loaded there, unpinned, idle (no request in flight by the
gateway's count or the neuron's), not draining, and of priority lower than or equal to the
incoming model's. Victims are taken in strategy order (`lru`: least recently used first;
`priority`: lowest priority first, then least recently used) until the model fits. The best plan
evicts the fewest models, then leaves the most memory free.

A model's budget is models.toml `memory` (the operator's figure, KV cache included), else the
bytes the neuron reports for it (0 when unknown: the neuron's own preflight then answers 507
with `required_bytes`, and the router plans again with that figure). A device's free memory is
the smaller of what the neuron reports and its total minus the budgets of the models loaded on
it, so budgets hold even where the reported figure lags (CPU hosts, allocator caches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cortex.gateway.fleet import Device, Neuron, Placement


@dataclass
class Plan:
    """Load `model` on `neuron` (`device`), after unloading `victims`."""

    neuron: Neuron
    device: Device | None
    need: int
    victims: list[Placement] = field(default_factory=list)
    free_after: int = 0

    @property
    def device_id(self) -> str | None:
        return self.device.id if self.device else None


def victim_order(strategy: str, priority_of: Callable[[str], int]) -> Callable[[Placement], tuple]:
    """Sort key: who goes first under `strategy` (`lru` or `priority`)."""
    if strategy == "priority":
        return lambda p: (priority_of(p.id), p.last_used)
    return lambda p: (p.last_used,)


def plan_device(
    neuron: Neuron,
    device: Device | None,
    need: int,
    reserved: int,
    evictable: list[Placement],
    budget_of: Callable[[Placement], int],
) -> Plan | None:
    """A plan for one device: no victims if it fits now, else the shortest prefix of
    `evictable` (already in eviction order) that makes room; None if nothing does."""
    if device is None:
        return Plan(neuron, None, need, [], 0)
    on_device = [
        p
        for p in neuron.models.values()
        if p.state in ("loaded", "loading") and p.device in (None, device.id)
    ]
    budgeted = device.total_bytes - sum(budget_of(p) for p in on_device)
    free = min(device.free_bytes, budgeted) - reserved
    if need <= free:
        return Plan(neuron, device, need, [], free - need)
    victims: list[Placement] = []
    for place in evictable:
        victims.append(place)
        free += budget_of(place)
        if need <= free:
            return Plan(neuron, device, need, victims, free - need)
    return None


def plan_placement(
    model_id: str,
    need: int,
    candidates: list[Neuron],
    *,
    strategy: str,
    priority_of: Callable[[str], int],
    is_pinned: Callable[[str, str], bool],
    reserved: Callable[[str, str], int],
    budget_of: Callable[[Placement], int],
) -> Plan | None:
    """The best plan over `candidates`, or None when no neuron has room even after eviction."""
    order = victim_order(strategy, priority_of)
    my_priority = priority_of(model_id)
    plans: list[Plan] = []
    for neuron in candidates:
        devices: list[Device | None] = list(neuron.devices.values()) or [None]
        single = len(devices) == 1
        for dev in devices:
            evictable = sorted(
                (
                    p
                    for p in neuron.models.values()
                    if p.state == "loaded"
                    and p.id != model_id
                    and not p.busy
                    and not p.draining
                    and not is_pinned(p.id, neuron.name)
                    and priority_of(p.id) <= my_priority
                    and (single or dev is None or p.device in (None, dev.id))
                ),
                key=order,
            )
            taken = reserved(neuron.name, dev.id) if dev else 0
            plan = plan_device(neuron, dev, need, taken, evictable, budget_of)
            if plan is not None:
                plans.append(plan)
    if not plans:
        return None
    return min(plans, key=lambda p: (len(p.victims), -p.free_after))
