"""DeviceWorker: the one OS thread that owns every tensor on one device.

The event loop never touches a tensor. It posts commands (load, unload, submit, cancel) to
the worker's queue; the worker thread runs them between engine steps, steps every loaded
model that has work, and hands results back with `loop.call_soon_threadsafe`, one call per
step. An exception inside one model's step fails that model's requests and nothing else.

A CUDA worker's thread really owns its device: it makes it the thread's current device before
anything else (so allocations, kernels and graph captures land there, whatever another device's
thread does meanwhile), and only this thread asks the driver about its memory. It measures the
device after every load, unload and memory release, and between steps or while idle at most
every `MEMORY_REFRESH_S`; `/health` and the manager's placement read that snapshot (`memory()`)
or ask for a fresh one through the queue (`measure_memory()`), never the driver themselves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cortex.config import EngineConfig
from cortex.errors import (
    CortexError,
    EngineFailure,
    ModelNotFound,
    ShuttingDown,
    Unavailable,
)
from cortex.neuron.engine.devices import DeviceInfo
from cortex.neuron.engine.devices import describe as describe_device
from cortex.neuron.engine.llm_engine import LLMEngine, check_prompt
from cortex.neuron.engine.outputs import EngineStats, LoadedInfo, StepOutput
from cortex.neuron.engine.request import RequestHandle
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.models.loading import load_model
from cortex.neuron.models.quantized import resident_bytes

log = logging.getLogger(__name__)


#: Seconds between the memory measurements of a busy or idle worker (loads and unloads measure
#: at once).
MEMORY_REFRESH_S = 0.5


@dataclass(frozen=True)
class LoadOptions:
    """How one model is loaded: the dtype to run in (None: the default for the device and
    checkpoint), the context to size it for (None: the model's own), weight quantization
    ("int8", "int4", "none"; None: the checkpoint's own, quantized GGUF types kept), and the
    bytes it may take in all, weights and KV cache (None: see engine/kv_budget.py)."""

    dtype: str | None = None
    max_context: int | None = None
    quantize: str | None = None
    memory: int | None = None


# (path, device, dtype, quantize) -> model
Loader = Callable[[Path, torch.device, str | None, str | None], torch.nn.Module]


@dataclass
class _Loaded:
    """A model on this worker (worker thread only): its engine and live request handles."""

    engine: LLMEngine
    info: LoadedInfo
    handles: dict[int, RequestHandle] = field(default_factory=dict)


def cpu_threads(configured: int = 0) -> int:
    """Intra-op threads for a CPU worker: `configured` (`[engine] threads`) if set, else every
    core this process may run on.

    Decode at batch 1 is bound by memory bandwidth, which one core cannot saturate; the event
    loop's work (HTTP, detokenizing, streaming) is light beside a step and fits between them.
    """
    if configured > 0:
        return configured
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may run on
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_name(device: torch.device) -> str:
    """`cpu-0` or `cuda-dev-N`."""
    if device.type == "cuda":
        return f"cuda-dev-{device.index or 0}"
    return f"{device.type}-{device.index or 0}"


class DeviceWorker:
    """Serves the models loaded on one device from one thread."""

    def __init__(self, device: str, config: EngineConfig, *, loader: Loader = load_model) -> None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)
        self.device = dev
        self.config = config
        self.name = thread_name(dev)
        self._loader = loader
        self._inbox: queue.SimpleQueue[tuple[Callable[..., Any], tuple, asyncio.Future | None]]
        self._inbox = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # Event-loop side: what is loaded (for fast validation) and the latest stats.
        self._infos: dict[str, LoadedInfo] = {}
        self._stats: dict[str, EngineStats] = {}
        # Written by the worker thread only: the device's latest memory measurement.
        self._memory: DeviceInfo | None = None
        self._measured = 0.0
        self._ready = threading.Event()
        # Worker-thread side.
        self._models: dict[str, _Loaded] = {}
        self._stop = False

    # Event-loop API

    def start(self) -> None:
        """Start the device thread; returns once it owns the device and has measured it."""
        self._thread.start()
        self._ready.wait()

    async def shutdown(self) -> None:
        """Fail every request with ShuttingDown, unload every model, stop the thread."""
        if self._closing:
            return
        self._closing = True
        if self._thread.is_alive():
            await self._call(self._shutdown_all)
            await asyncio.to_thread(self._thread.join)
        self._infos.clear()
        self._stats.clear()

    async def load(
        self, model_id: str, path: str | Path, options: LoadOptions | None = None
    ) -> LoadedInfo:
        """Load a model onto this device (a no-op answer if it is already loaded)."""
        self._check_open()
        if model_id in self._infos:
            return self._infos[model_id]
        info, stats = await self._call(self._load, model_id, Path(path), options or LoadOptions())
        self._infos[model_id] = info
        self._stats[model_id] = stats
        return info

    async def unload(self, model_id: str) -> None:
        """Cancel the model's requests (they raise Unavailable) and free its memory."""
        if self._infos.pop(model_id, None) is None:
            raise ModelNotFound(f"model {model_id!r} is not loaded on {self.device}")
        self._stats.pop(model_id, None)
        await self._call(self._unload, model_id)

    def submit(self, model_id: str, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Start generating; iterate the handle for outputs. Validates before queueing."""
        self._check_open()
        info = self._infos.get(model_id)
        if info is None:
            raise ModelNotFound(f"model {model_id!r} is not loaded on {self.device}")
        check_prompt(prompt_ids, info.max_context)
        handle = RequestHandle(model_id, len(prompt_ids), self.cancel_request)
        self._post(self._add_request, handle, list(prompt_ids), params)
        return handle

    def cancel_request(self, handle: RequestHandle) -> None:
        """Drop a request at the next step (RequestHandle.cancel calls this)."""
        if not self._stop:
            self._post(self._cancel, handle)

    def stats(self, model_id: str) -> EngineStats:
        """The model's latest engine stats (updated after every step)."""
        if model_id not in self._infos:
            raise ModelNotFound(f"model {model_id!r} is not loaded on {self.device}")
        return self._stats.get(model_id, EngineStats())

    async def release_memory(self) -> int:
        """Return the allocator's cached, unused memory to the device; the bytes released."""
        self._check_open()
        return await self._call(self._release_memory)

    def memory(self) -> DeviceInfo:
        """The device's latest memory measurement (host RAM for the CPU), at most
        `MEMORY_REFRESH_S` old while the thread runs; taken on the device thread."""
        assert self._memory is not None, "start() the worker first"
        return self._memory

    async def measure_memory(self) -> DeviceInfo:
        """A fresh measurement of the device, taken by the device thread between steps."""
        self._check_open()
        return await self._call(self._measure)

    def loaded(self) -> dict[str, LoadedInfo]:
        """The models loaded on this worker."""
        return dict(self._infos)

    # Plumbing between the threads

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown("the neuron is shutting down")

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._inbox.put((fn, args, None))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._loop = asyncio.get_running_loop()
        future = self._loop.create_future()
        self._inbox.put((fn, args, future))
        return await future

    def _reply(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop (from the worker thread)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            log.debug("%s: event loop closed, dropping %s", self.name, fn.__name__)

    @staticmethod
    def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    @staticmethod
    def _deliver(items: list[tuple[RequestHandle, StepOutput | BaseException]]) -> None:
        for handle, item in items:
            handle.deliver(item)

    def _deliver_step(
        self,
        model_id: str,
        stats: EngineStats,
        items: list[tuple[RequestHandle, StepOutput | BaseException]],
    ) -> None:
        if model_id in self._infos:
            self._stats[model_id] = stats
        self._deliver(items)

    # The device thread

    def _run(self) -> None:
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            else:
                torch.set_num_threads(cpu_threads(self.config.threads))
            self._measure()
        finally:
            self._ready.set()  # start() returns even when the device cannot be used
        while not self._stop:
            busy = any(m.engine.has_work for m in self._models.values())
            try:
                # Idle, wake up now and then to keep the memory measurement fresh.
                command = self._inbox.get(block=not busy, timeout=MEMORY_REFRESH_S)
            except queue.Empty:
                command = None
            while command is not None:
                self._execute(*command)
                try:
                    command = self._inbox.get_nowait()
                except queue.Empty:
                    command = None
            for model_id, loaded in list(self._models.items()):
                if loaded.engine.has_work and not self._stop:
                    self._step(model_id, loaded)
            if time.monotonic() - self._measured >= MEMORY_REFRESH_S:
                self._measure()

    def _measure(self) -> DeviceInfo:
        """Measure the device's memory now and publish it (device thread only)."""
        self._memory = describe_device(str(self.device))
        self._measured = time.monotonic()
        return self._memory

    def _execute(self, fn: Callable[..., Any], args: tuple, future: asyncio.Future | None) -> None:
        try:
            result, error = fn(*args), None
        except CortexError as exc:
            result, error = None, exc
        except Exception as exc:
            log.exception("%s: %s failed", self.name, fn.__name__)
            result, error = None, EngineFailure(f"{fn.__name__.strip('_')} failed: {exc}")
        if future is not None:
            self._reply(self._settle, future, result, error)

    def _step(self, model_id: str, loaded: _Loaded) -> None:
        try:
            outputs = loaded.engine.step()
        except Exception as exc:
            log.exception("%s: a step of model %s failed", self.name, model_id)
            error = EngineFailure(f"model {model_id} failed during generation: {exc}")
            self._fail(loaded, error)
            self._publish(model_id, loaded)
            return
        items: list[tuple[RequestHandle, StepOutput | BaseException]] = []
        for seq, out in outputs:
            handle = loaded.handles.get(seq.seq_id)
            if handle is not None:
                if out.error is not None:  # this request failed alone; the batch went on
                    log.error("%s: a request on %s failed: %s", self.name, model_id, out.error)
                    failure = EngineFailure(f"the request failed during generation: {out.error}")
                    items.append((handle, failure))
                else:
                    items.append((handle, out))
                if out.finish_reason is not None:
                    del loaded.handles[seq.seq_id]
        self._reply(self._deliver_step, model_id, loaded.engine.stats(), items)

    def _fail(self, loaded: _Loaded, error: BaseException) -> None:
        """Abort all of a model's requests and raise `error` from each of their iterators."""
        loaded.engine.abort_all()
        items = [(handle, error) for handle in loaded.handles.values()]
        loaded.handles.clear()
        if items:
            self._reply(self._deliver, items)

    def _publish(self, model_id: str, loaded: _Loaded) -> None:
        self._reply(self._deliver_step, model_id, loaded.engine.stats(), [])

    # Commands (run on the device thread)

    def _load(
        self, model_id: str, path: Path, options: LoadOptions
    ) -> tuple[LoadedInfo, EngineStats]:
        if model_id in self._models:
            loaded = self._models[model_id]
            return loaded.info, loaded.engine.stats()
        start = time.perf_counter()
        model = self._loader(path, self.device, options.dtype, options.quantize)
        try:
            engine = LLMEngine(model, self.config, options.max_context, options.memory)
        except BaseException:
            del model
            self._release_memory()
            raise
        info = LoadedInfo(
            bytes=resident_bytes(model) + engine.runner.kv_cache_bytes,
            max_context=engine.max_context,
            dtype=str(model.dtype).removeprefix("torch."),
            load_seconds=time.perf_counter() - start,
            kv_blocks=engine.blocks.num_blocks,
        )
        self._models[model_id] = _Loaded(engine, info)
        self._measure()
        return info, engine.stats()

    def _unload(self, model_id: str) -> None:
        loaded = self._models.pop(model_id, None)
        if loaded is None:
            return
        self._fail(loaded, Unavailable(f"model {model_id} was unloaded", retry_after=1.0))
        loaded.engine.close()
        del loaded
        self._release_memory()

    def _shutdown_all(self) -> None:
        for model_id in list(self._models):
            loaded = self._models.pop(model_id)
            self._fail(loaded, ShuttingDown("the neuron is shutting down"))
            loaded.engine.close()
        self._release_memory()
        self._stop = True

    def _add_request(
        self, handle: RequestHandle, prompt_ids: list[int], params: SamplingParams
    ) -> None:
        if handle.done:
            return  # cancelled before it reached the device
        loaded = self._models.get(handle.model_id)
        try:
            if loaded is None:
                raise ModelNotFound(f"model {handle.model_id!r} is not loaded")
            seq = loaded.engine.add_request(prompt_ids, params)
        except Exception as exc:
            if not isinstance(exc, CortexError):
                log.exception("%s: adding a request failed", self.name)
                exc = EngineFailure(f"the request could not be queued: {exc}")
            self._reply(self._deliver, [(handle, exc)])
            return
        handle._seq = seq
        loaded.handles[seq.seq_id] = handle
        self._publish(handle.model_id, loaded)

    def _cancel(self, handle: RequestHandle) -> None:
        loaded = self._models.get(handle.model_id)
        seq = handle._seq
        if loaded is None or seq is None or loaded.handles.pop(seq.seq_id, None) is None:
            return
        loaded.engine.abort(seq)
        self._publish(handle.model_id, loaded)

    def _release_memory(self) -> int:
        gc.collect()
        released = 0
        if self.device.type == "cuda":
            reserved = torch.cuda.memory_reserved(self.device)
            torch.cuda.empty_cache()
            released = reserved - torch.cuda.memory_reserved(self.device)
        self._measure()
        return released
