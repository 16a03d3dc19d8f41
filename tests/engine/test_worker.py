"""DeviceWorker driven from asyncio, as the neuron's aiohttp app drives it."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
import torch

from cortex.config import EngineConfig
from cortex.errors import (
    ContextLengthExceeded,
    EngineFailure,
    ModelNotFound,
    ShuttingDown,
    Unavailable,
)
from cortex.neuron.engine.outputs import StepOutput
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.engine.worker import DeviceWorker, LoadOptions
from cortex.neuron.models.loading import load_model
from cortex.neuron.offline import LLM
from tests.support.checkpoints import STORIES

CONFIG = EngineConfig(block_size=8, max_batch=16, max_num_batched_tokens=128, cuda_graphs=False)
PROMPTS = [[1, 403, 407], [1, 260, 261, 262, 263, 264, 265], [1, 300], [1, 410, 411, 412, 413]]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
    SamplingParams(temperature=0.9, top_k=30, seed=3, max_tokens=15, ignore_eos=True),
    SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True, logprobs=True, top_logprobs=2),
    SamplingParams(temperature=1.0, seed=4, max_tokens=25, ignore_eos=True),
]
LONG = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def collect(handle) -> tuple[list[int], list[StepOutput]]:
    outs = [out async for out in handle]
    return [t for o in outs for t in o.token_ids], outs


async def settled(worker: DeviceWorker, model_id: str):
    """Wait until the worker has dropped every request of the model; return its stats."""
    while True:
        stats = worker.stats(model_id)
        if stats.running == 0 and stats.waiting == 0:
            return stats
        await asyncio.sleep(0.01)


class ThreadRecorder:
    """A loader that loads the real model and records which threads run its forwards."""

    def __init__(self, fail_paths: tuple[str, ...] = ()) -> None:
        self.threads: set[str] = set()
        self.fail_paths = fail_paths

    def __call__(self, path: Path, device: torch.device, dtype, quantize=None):
        model = load_model(path.resolve(), device, dtype, quantize)
        self.threads.add(threading.current_thread().name)
        failing = path.name in self.fail_paths

        def hook(module, args):
            self.threads.add(threading.current_thread().name)
            if failing:
                raise RuntimeError("injected fault")

        model.register_forward_pre_hook(hook)
        return model


@pytest.fixture(scope="module")
def expected() -> list[list[int]]:
    return LLM(STORIES, dtype="float32", config=CONFIG).generate(PROMPTS, PARAMS)


def test_concurrent_submits_on_the_device_thread(expected):
    recorder = ThreadRecorder()

    async def main():
        worker = DeviceWorker("cpu", CONFIG, loader=recorder)
        worker.start()
        info = await worker.load("stories", STORIES, LoadOptions(dtype="float32"))
        assert (info.dtype, info.max_context) == ("float32", 512)
        assert info.kv_blocks > 0 and info.bytes > 0
        assert await worker.load("stories", STORIES) == info  # already loaded
        handles = [worker.submit("stories", p, sp) for p, sp in zip(PROMPTS, PARAMS, strict=True)]
        results = await asyncio.gather(*(collect(h) for h in handles))
        stats = await settled(worker, "stories")
        memory = worker.memory()
        await worker.shutdown()
        return results, stats, memory.total_bytes, memory.free_bytes

    results, stats, total, free = run(main())
    assert [tokens for tokens, _ in results] == expected
    for (_, outs), prompt, params in zip(results, PROMPTS, PARAMS, strict=True):
        assert outs[-1].finish_reason == "length"
        assert all(o.finish_reason is None for o in outs[:-1])
        assert {o.prompt_tokens for o in outs} == {len(prompt)}
        if params.logprobs:
            assert all(len(o.logprobs) == 1 and len(o.top_logprobs[0]) == 2 for o in outs)
            assert all(o.logprobs[0] <= 0 for o in outs)
    assert recorder.threads == {"cpu-0"}
    assert stats.kv_blocks_used == 0 and stats.kv_blocks_total > 0
    assert stats.generation_tokens == sum(p.max_tokens for p in PARAMS)
    assert stats.prompt_tokens == sum(map(len, PROMPTS))
    assert total >= free > 0


def test_cancel_and_thousands_of_cancelled_requests():
    async def main():
        worker = DeviceWorker("cpu", CONFIG)
        worker.start()
        await worker.load("stories", STORIES, LoadOptions(dtype="float32"))
        handle = worker.submit("stories", PROMPTS[0], LONG)
        got = []
        async for out in handle:
            got += out.token_ids
            if len(got) == 3:
                handle.cancel()
        assert len(got) == 3
        for i in range(1500):
            h = worker.submit("stories", PROMPTS[i % 4] + [i % 500], LONG)
            if i % 5 == 0:
                await h.__anext__()  # cancel some after their first token
            h.cancel()
            assert [o async for o in h] == []
        stats = await settled(worker, "stories")
        await worker.shutdown()
        return stats

    stats = run(main())
    assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0


def test_unload_with_requests_in_flight_and_errors():
    async def main():
        worker = DeviceWorker("cpu", CONFIG)
        worker.start()
        await worker.load("stories", STORIES, LoadOptions(dtype="float32"))
        with pytest.raises(ContextLengthExceeded):
            worker.submit("stories", [1] * 512, LONG)
        with pytest.raises(ModelNotFound):
            worker.submit("other", [1], LONG)
        handles = [worker.submit("stories", p, LONG) for p in PROMPTS]
        for h in handles:
            await h.__anext__()
        await worker.unload("stories")
        for h in handles:
            with pytest.raises(Unavailable):
                async for _ in h:
                    pass
        with pytest.raises(ModelNotFound):
            worker.submit("stories", [1], LONG)
        with pytest.raises(ModelNotFound):
            await worker.unload("stories")
        # Loading again works, and shutdown fails what is still running.
        await worker.load("stories", STORIES, LoadOptions(dtype="float32"))
        pending = worker.submit("stories", PROMPTS[0], LONG)
        await pending.__anext__()
        await worker.shutdown()
        with pytest.raises(ShuttingDown):
            async for _ in pending:
                pass
        with pytest.raises(ShuttingDown):
            worker.submit("stories", [1], LONG)

    run(main())


def test_failing_step_fails_only_that_models_requests(tmp_path, expected):
    (tmp_path / "broken").symlink_to(STORIES, target_is_directory=True)
    recorder = ThreadRecorder(fail_paths=("broken",))

    async def main():
        worker = DeviceWorker("cpu", CONFIG, loader=recorder)
        worker.start()
        await worker.load("good", STORIES, LoadOptions(dtype="float32"))
        await worker.load("bad", tmp_path / "broken", LoadOptions(dtype="float32"))
        good = [worker.submit("good", p, sp) for p, sp in zip(PROMPTS, PARAMS, strict=True)]
        bad = [worker.submit("bad", p, LONG) for p in PROMPTS]
        results = await asyncio.gather(*(collect(h) for h in good + bad), return_exceptions=True)
        bad_stats = await settled(worker, "bad")
        # Both models keep serving after the failure.
        again = await collect(worker.submit("good", PROMPTS[0], PARAMS[0]))
        bad_again = await asyncio.gather(
            collect(worker.submit("bad", [1], LONG)), return_exceptions=True
        )
        await worker.shutdown()
        return results, bad_stats, again, bad_again

    results, bad_stats, again, bad_again = run(main())
    assert [r[0] for r in results[:4]] == expected
    for error in results[4:] + bad_again:
        assert isinstance(error, EngineFailure) and "injected fault" in error.message
    assert bad_stats.kv_blocks_used == 0
    assert again[0] == expected[0]


def test_cpu_threads_follow_the_engine_setting_else_every_core() -> None:
    from cortex.neuron.engine.worker import cpu_threads

    assert cpu_threads(3) == 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpu_threads() == cores


def test_a_cuda_worker_owns_its_device_and_its_memory_queries(monkeypatch):
    """Without CUDA, the driver calls are recorded: the worker sets its device on its own thread
    before anything else, and every memory query (the snapshot `/health` reads, a fresh one for
    a load's preflight, the release after unloads) runs there, never on the event loop."""
    calls: list[tuple[str, str, object]] = []

    def record(name: str, result=None):
        def call(*args):
            calls.append((name, threading.current_thread().name, args))
            return result

        return call

    monkeypatch.setattr(torch.cuda, "set_device", record("set_device"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", record("mem_get_info", (3 * 2**30, 8 * 2**30)))
    monkeypatch.setattr(torch.cuda, "get_device_name", record("get_device_name", "Fake GPU"))
    monkeypatch.setattr(torch.cuda, "memory_reserved", record("memory_reserved", 0))
    monkeypatch.setattr(torch.cuda, "empty_cache", record("empty_cache"))

    async def main():
        worker = DeviceWorker("cuda:1", CONFIG)
        worker.start()
        snapshot = worker.memory()
        fresh = await worker.measure_memory()
        released = await worker.release_memory()
        await worker.shutdown()
        return snapshot, fresh, released

    snapshot, fresh, released = run(main())
    assert snapshot.to_dict() == {
        "id": "cuda:1",
        "name": "Fake GPU",
        "total_bytes": 8 * 2**30,
        "free_bytes": 3 * 2**30,
    }
    assert fresh == snapshot and released == 0
    assert calls[0] == ("set_device", "cuda-dev-1", (torch.device("cuda", 1),))
    assert {thread for _, thread, _ in calls} == {"cuda-dev-1"}
    assert {args for name, _, args in calls if name == "mem_get_info"} == {(1,)}
    assert sum(name == "mem_get_info" for name, _, _ in calls) >= 3
