"""Model lifecycle on one neuron: load (single-flight, preflight, placement) and unload.

- Loads of one model share one task: every caller awaits the same result, and a caller that goes
  away does not cancel the load for the others.
- Loads on one device run one at a time, so two loads cannot both pass the memory preflight and
  then overcommit the device together.
- Preflight, before anything is allocated: the weights (from safetensors or GGUF headers, as
  they will be held: quantized layers at their quantized size, the rest in the dtype they run
  in) and the KV budget that engine/kv_budget.py gives them (the load's `memory` minus the
  weights, else `kv_cache_memory` of what is free beside them) must fit the device, and the
  budget must hold one full-context sequence; else 507 `insufficient_memory` with
  `required_bytes` and `free_bytes`. The engine then sizes its KV cache by the same rule.
- `quantize` ("int8", "int4", "none") defaults to `[engine] quantize`.
- Placement: the `device` asked for, else the device with the most free memory. Free memory
  always comes from the device's own worker thread (engine/worker.py).
- Unload removes the model from routing first, cancels its in-flight requests (their streams end
  with an error event, non-streaming requests get 503 with Retry-After), then frees memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cortex.config import EngineConfig
from cortex.errors import (
    CortexError,
    InsufficientMemory,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    printable,
    quoted,
)
from cortex.neuron.engine import devices
from cortex.neuron.engine.kv_budget import kv_budget, kv_bytes
from cortex.neuron.engine.outputs import EngineStats, LoadedInfo
from cortex.neuron.engine.request import RequestHandle
from cortex.neuron.engine.worker import DeviceWorker, LoadOptions
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.models.dtypes import default_dtype, parse_dtype, resolve_dtype
from cortex.neuron.models.gguf import gguf_config
from cortex.neuron.models.loading import model_weight_bytes
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.registry import ModelLocation, ModelRegistry, check_id
from cortex.neuron.text import load_tokenizer
from cortex.neuron.text.tokenizer import Tokenizer, generation_defaults

log = logging.getLogger("cortex.neuron")


@dataclass
class LoadedModel:
    """A model resident on one device, with what requests need to use it."""

    id: str
    location: ModelLocation
    device: str
    worker: DeviceWorker
    tokenizer: Tokenizer
    defaults: dict[str, Any]
    info: LoadedInfo
    arch: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    handles: set[RequestHandle] = field(default_factory=set)
    unloaded: bool = False

    @property
    def max_context(self) -> int:
        """Usable context (the engine may cut it to what its KV cache holds)."""
        return int(self.info.max_context)

    def stats(self) -> EngineStats:
        """The engine's stats snapshot for this model."""
        return self.worker.stats(self.id)


class ModelManager:
    """Loaded models of this neuron and the load/unload operations on them."""

    def __init__(
        self,
        registry: ModelRegistry,
        workers: dict[str, DeviceWorker],
        engine_config: EngineConfig,
        metrics: NeuronMetrics,
    ) -> None:
        self.registry = registry
        self.workers = workers
        self.engine_config = engine_config
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.loading: dict[str, str] = {}  # model id -> device being loaded onto
        self._tasks: dict[str, asyncio.Task[LoadedModel]] = {}
        self._device_locks = {d: asyncio.Lock() for d in workers}

    def get(self, model_id: str) -> LoadedModel:
        """A loaded model; 400 for an id that could escape the roots, else 404 when absent."""
        check_id(model_id)
        model = self.models.get(model_id) or self.models.get(self.registry.canonical_id(model_id))
        if model is None:
            raise ModelNotFound(
                f"model {quoted(model_id)} is not loaded on this neuron (POST /models/load loads it)",
                param="model",
            )
        return model

    def stats(self) -> dict[str, EngineStats]:
        """Engine stats per loaded model (for metrics)."""
        return {m.id: m.stats() for m in list(self.models.values())}

    async def load(
        self, model_id: str, device: str | None = None, options: LoadOptions | None = None
    ) -> tuple[LoadedModel, bool]:
        """Load `model_id` (or join the load in progress); returns (model, was_already_loaded).
        A GGUF file's id loads under its directory's when that is the same model."""
        model_id = self.registry.canonical_id(model_id)
        if model_id in self.models:
            return self.models[model_id], True
        if device is not None:
            device = devices.normalize(device)
            if device not in self.workers:
                raise InvalidRequest(
                    f"device {device} is not served here (devices: {', '.join(self.workers)})",
                    param="device",
                )
        task = self._tasks.get(model_id)
        if task is None:
            options = options or LoadOptions()
            options = replace(options, quantize=options.quantize or self.engine_config.quantize)
            task = asyncio.ensure_future(self._load(model_id, device, options))
            self._tasks[model_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(model_id, None))
        return await asyncio.shield(task), False

    async def _load(self, model_id: str, device: str | None, options: LoadOptions) -> LoadedModel:
        """One load, logged when it fails; what the client sees names the model id, never a
        file path (a symlink's target, a models dir): those are in the neuron's log only."""
        try:
            return await self._load_found(model_id, device, options)
        except (InvalidRequest, ModelNotFound) as exc:
            log.warning("load of %s refused: %s", printable(model_id), exc.message)
            raise
        except CortexError as exc:
            log.error("load of %s failed: %s", printable(model_id), printable(exc.message, 2000))
            if isinstance(exc, InsufficientMemory) or exc.status == 422:
                exc.message = without_paths(exc.message)
                raise
            raise ModelLoadFailed(
                f"model {quoted(model_id)} could not be loaded (the neuron's log says why)"
            ) from None
        except Exception:
            log.exception("load of %s failed", printable(model_id))
            raise ModelLoadFailed(
                f"model {quoted(model_id)} could not be loaded (the neuron's log says why)"
            ) from None

    async def _load_found(
        self, model_id: str, device: str | None, options: LoadOptions
    ) -> LoadedModel:
        try:
            location = self.registry.resolve(model_id)
        except ModelNotFound:
            if not self.registry.hub_download:
                raise
            location = await asyncio.to_thread(self.registry.download, model_id)
        device = device or self._most_free_device()
        async with self._device_locks[device]:
            self.loading[model_id] = device
            try:
                return await self._load_on(location, device, options)
            finally:
                self.loading.pop(model_id, None)

    def _most_free_device(self) -> str:
        return max(self.workers, key=lambda d: self.workers[d].memory().free_bytes)

    async def _load_on(
        self, location: ModelLocation, device: str, options: LoadOptions
    ) -> LoadedModel:
        worker = self.workers[device]
        free = (await worker.measure_memory()).free_bytes
        arch = await asyncio.to_thread(self._preflight, location, device, options, free)
        tokenizer = await asyncio.to_thread(load_tokenizer, location.path)
        defaults = _generation_defaults(location)
        info = await worker.load(location.id, location.path, options)
        model = LoadedModel(
            id=location.id,
            location=location,
            device=device,
            worker=worker,
            tokenizer=tokenizer,
            defaults=defaults,
            info=info,
            arch=arch,
        )
        self.models[location.id] = model
        self.metrics.load_seconds.labels(location.id).set(info.load_seconds)
        log.info(
            "loaded model=%s device=%s bytes=%d max_context=%d dtype=%s seconds=%.2f",
            location.id,
            device,
            info.bytes,
            info.max_context,
            info.dtype,
            info.load_seconds,
        )
        return model

    def _preflight(
        self, location: ModelLocation, device: str, options: LoadOptions, free: int
    ) -> str | None:
        """Check the model fits in `free` bytes of `device`; returns its architecture. Raises
        422/507 before allocating."""
        config, run_dtype, weights = weight_footprint(
            location, device, options.dtype, options.quantize
        )
        limit = config.max_position_embeddings
        context = min(options.max_context or limit, limit)
        share = self.engine_config.kv_cache_memory
        one = kv_bytes(config, self.engine_config.block_size, run_dtype, context)
        budget = kv_budget(
            weights=weights, free=free - weights, need=one, share=share, memory=options.memory
        )
        if budget < one:
            if options.memory is not None:
                required, room, where = weights + one, options.memory, "its memory budget"
            else:  # the KV cache may take `kv_cache_memory` of what is free beside the weights
                required, room, where = weights + math.ceil(one / share), free, "free"
            raise InsufficientMemory(
                f"{location.id} needs {required} bytes on {device} ({weights} for the weights,"
                f" the rest for the KV cache of one {context}-token sequence); {where}: {room}",
                required_bytes=required,
                free_bytes=room,
            )
        return config.model_type

    async def unload(self, model_id: str) -> None:
        """Cancel the model's requests, then free its memory; 404 when it is not loaded."""
        model = self.models.pop(model_id, None)
        if model is None:
            raise ModelNotFound(f"model {quoted(model_id)} is not loaded", param="model")
        model.unloaded = True
        # The worker fails the model's requests with Unavailable (503, Retry-After) as it unloads.
        await model.worker.unload(model_id)
        log.info("unloaded model=%s device=%s", model_id, model.device)

    async def release_memory(self) -> int:
        """Drop every device's cached allocator memory (the gateway's defrag); bytes released."""
        released = 0
        for worker in self.workers.values():
            released += await worker.release_memory()
        log.info("released %d bytes of cached device memory", released)
        return released

    async def unload_all(self) -> None:
        """Unload every model (shutdown)."""
        for model_id in list(self.models):
            try:
                await self.unload(model_id)
            except Exception:  # shutting down: keep freeing the others
                log.exception("unload of %s failed during shutdown", model_id)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\":,;()]+)+[/\\]?")


def without_paths(message: str) -> str:
    """`message` with absolute file paths replaced by `<path>` (for answers to clients)."""
    return _PATH.sub("<path>", message)


def weight_footprint(
    location: ModelLocation, device: str, dtype: str | None, quantize: str | None = None
) -> tuple[ModelConfig, torch.dtype, int]:
    """(ModelConfig, torch dtype it will run in, bytes its weights will hold), reading headers
    only: quantized layers at their quantized size. Raises `UnsupportedArchitecture` (422) for a
    model the decoder cannot run."""
    if location.format == "gguf":
        config = gguf_config(location.path)
        run_dtype = parse_dtype(dtype) if dtype else default_dtype(torch.device(device))
        weights = model_weight_bytes(location.path, dtype, quantize, device)
    else:
        config = ModelConfig.from_dir(location.path)
        run_dtype = resolve_dtype(config, device, dtype)
        weights = model_weight_bytes(location.path, run_dtype, quantize, device)
    return config, run_dtype, weights


def _generation_defaults(location: ModelLocation) -> dict[str, Any]:
    if location.format == "gguf" or not location.path.is_dir():
        return {}
    return generation_defaults(location.path)
