"""Pinned models: loaded at start, kept loaded, never evicted (README: "How the gateway places models").

A pin is `(model, neuron)` where `neuron` None means "wherever it runs" (models.toml `pin =
true`, or `/fleet/pin` without a neuron). Pins set through `/fleet/pin` live in memory: a
restarted gateway starts from models.toml again, which is where permanent pins belong.
"""

from __future__ import annotations

from cortex.config import ModelsConfig


class Pins:
    """The set of pins, seeded from models.toml."""

    def __init__(self, models: ModelsConfig) -> None:
        self._pins: set[tuple[str, str | None]] = {(m.id, None) for m in models.models if m.pin}
        #: model -> why its pin cannot be honoured now (the last failed load), for /fleet.
        self.problems: dict[str, str] = {}

    def pin(self, model: str, neuron: str | None) -> None:
        """Pin `model` (on `neuron`, or wherever it runs)."""
        self._pins.add((model, neuron))

    def unpin(self, model: str, neuron: str | None) -> None:
        """Remove the pin on `neuron`, or every pin of `model` when `neuron` is None."""
        if neuron is None:
            self._pins = {p for p in self._pins if p[0] != model}
            self.problems.pop(model, None)
        else:
            self._pins.discard((model, neuron))

    def is_pinned(self, model: str, neuron: str | None = None) -> bool:
        """Pinned anywhere (`neuron` None), or pinned in a way that covers `neuron`."""
        if (model, None) in self._pins:
            return True
        if neuron is None:
            return any(p[0] == model for p in self._pins)
        return (model, neuron) in self._pins

    def items(self) -> list[tuple[str, str | None]]:
        """Every pin, sorted for stable output."""
        return sorted(self._pins, key=lambda p: (p[0], p[1] or ""))
