"""A `[[neurons]]` entry with `kind = "openai"`: any OpenAI-compatible server (vLLM, SGLang,
llama.cpp's server, Ollama) without cortex's lifecycle API.

Its `/v1/models` is its catalogue: every model listed there counts as loaded. It is polled and
routed to like a neuron, but `manages_models` is False, so the router never loads or evicts on
it, and `/fleet/load|unload` refuse it.
"""

from __future__ import annotations

from typing import Any

from cortex.errors import InvalidRequest
from cortex.gateway.neuron_client import NeuronClient


class OpenAIBackend(NeuronClient):
    """`NeuronClient` for a plain OpenAI-compatible server."""

    kind = "openai"
    manages_models = False

    async def _listed(self) -> list[dict[str, Any]]:
        answer = await self._call("GET", "/v1/models")
        data = answer.get("data", []) if isinstance(answer, dict) else []
        return [m for m in data if isinstance(m, dict) and m.get("id")]

    async def health(self) -> dict[str, Any]:
        """Up when `/v1/models` answers; no devices, every listed model loaded and idle."""
        models = await self._listed()
        return {"status": "ok", "devices": [], "models": [{"id": m["id"]} for m in models]}

    async def models(self) -> list[dict[str, Any]]:
        """`/v1/models` as the catalogue, every model `loaded`."""
        return [{"id": m["id"], "state": "loaded"} for m in await self._listed()]

    async def load(self, model: str, **options: Any) -> dict[str, Any]:
        """Refused: this upstream manages its own models."""
        raise InvalidRequest(f"neuron {self.name} is an OpenAI upstream: it cannot load models")

    async def unload(self, model: str) -> dict[str, Any]:
        """Refused: this upstream manages its own models."""
        raise InvalidRequest(f"neuron {self.name} is an OpenAI upstream: it cannot unload models")

    async def model_endpoint(self, model: str) -> str:
        """The server itself serves `/v1/...`."""
        return self.endpoint

    async def release_memory(self) -> bool:
        """Nothing to release from here."""
        return False
