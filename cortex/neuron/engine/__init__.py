"""The neuron's engine: continuous batching over a paged KV cache, one thread per device.

`DeviceWorker` is what the server uses; `LLM` is the offline API for tests and scripts.
Names are imported on first use, so the pure-Python parts (sequence, block manager,
scheduler) import without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cortex.neuron.engine.config import EngineConfig
    from cortex.neuron.engine.engine import LLMEngine
    from cortex.neuron.engine.llm import LLM
    from cortex.neuron.engine.outputs import EngineStats, LoadedInfo, StepOutput
    from cortex.neuron.engine.request import RequestHandle
    from cortex.neuron.engine.worker import DeviceWorker

_EXPORTS = {
    "LLM": "llm",
    "DeviceWorker": "worker",
    "EngineConfig": "config",
    "EngineStats": "outputs",
    "LLMEngine": "engine",
    "LoadedInfo": "outputs",
    "RequestHandle": "request",
    "StepOutput": "outputs",
}
__all__ = [
    "LLM",
    "DeviceWorker",
    "EngineConfig",
    "EngineStats",
    "LLMEngine",
    "LoadedInfo",
    "RequestHandle",
    "StepOutput",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
