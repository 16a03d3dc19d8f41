"""CUDA-graph decode: buckets, and the graph bookkeeping on CPU; replay equals eager where CUDA
exists.

On CPU, `cuda_graph.capture` is replaced by a stand-in whose "graph" re-runs the captured
function at replay, reading the same static buffers as a real replay: the bucketing, padding and
buffer handling of `DecodeGraphs` then run for real against eager decode. The CUDA calls of
`capture` itself (stream, error mode, thread) are checked with recording stand-ins.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cortex.config import EngineConfig
from cortex.neuron.engine import cuda_graph
from cortex.neuron.engine.cuda_graph import DecodeGraphs, batch_buckets, bucket, width_buckets
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.models.loading import load_model
from cortex.neuron.offline import LLM
from tests.support.checkpoints import STORIES, make_tiny_checkpoint

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
CONFIG = EngineConfig(max_batch=4, block_size=16, max_num_batched_tokens=512, cuda_graphs=False)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert batch_buckets(50) == [1, 2, 4, 8, 16, 24, 32, 48, 50]


def test_width_buckets_are_powers_of_two_then_the_longest_context():
    assert width_buckets(1) == [1]
    assert width_buckets(3) == [1, 2, 3]
    assert width_buckets(4) == [1, 2, 4]
    # 40960 tokens in blocks of 16: a step at context 300 (19 blocks) pads to 32 blocks.
    widths = width_buckets(2560)
    assert widths == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 2560]
    assert bucket(19, widths) == 32
    assert bucket(2049, widths) == 2560
    assert bucket(2561, widths) is None
    assert bucket(3, batch_buckets(32)) == 4


class Recompute:
    """A CPU stand-in for a captured graph: replay re-runs the function into its output."""

    def __init__(self, fn: Callable[[], torch.Tensor], out: torch.Tensor) -> None:
        self.fn, self.out = fn, out

    def replay(self) -> None:
        self.out.copy_(self.fn())


def recompute_capture(fn: Callable[[], torch.Tensor], device, pool):
    out = fn()
    return Recompute(fn, out), out


def failing_capture(fn: Callable[[], torch.Tensor], device, pool):
    raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama with a 40960-token context (as Qwen3's), so max_context is 2560 blocks."""
    path = tmp_path_factory.mktemp("long") / "m"
    return make_tiny_checkpoint("llama", path, max_position_embeddings=40960)


def with_graphs(
    monkeypatch: pytest.MonkeyPatch, path: Path, capture: Callable = recompute_capture
) -> LLM:
    """An engine on CPU (full default context) whose decode goes through DecodeGraphs."""
    monkeypatch.setattr(cuda_graph, "capture", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, 0))
    llm = LLM(model=load_model(path, torch.device("cpu"), torch.float32), config=CONFIG)
    runner = llm.engine.runner
    runner.graphs = DecodeGraphs(
        runner.model, CONFIG.max_batch, runner.max_blocks_per_seq, 16, runner.scratch_block
    )
    return llm


def prompts(lengths: list[int]) -> list[list[int]]:
    return [[1, *((7 * i + j) % 250 + 3 for j in range(n - 1))] for i, n in enumerate(lengths)]


def test_sdpa_graphs_follow_the_live_context_not_max_context(monkeypatch, long_model):
    llm = with_graphs(monkeypatch, long_model)
    runner = llm.engine.runner
    assert runner.max_context == 40960 and runner.max_blocks_per_seq == 2560
    assert runner.graphs.widths == width_buckets(2560)  # SDPA: bucketed by width, lazily
    assert runner.graphs.graphs == {}
    batch = prompts([300, 290, 5])  # 3 rows pad to a batch bucket of 4
    eager = LLM(long_model, dtype="float32", config=CONFIG)
    assert llm.generate(batch, GREEDY) == eager.generate(batch, GREEDY)
    # Contexts 290..312 span 19-20 blocks: every replay gathered 32 blocks (512 positions).
    captured = set(runner.graphs.graphs)
    assert (4, 32) in captured and {w for _, w in captured} == {32}
    assert runner.graphs_state == "captured"
    alone = prompts([20])
    assert llm.generate(alone, GREEDY) == eager.generate(alone, GREEDY)
    assert set(runner.graphs.graphs) - captured == {(1, 2)}  # contexts 20..32: 2 blocks


def test_a_failed_capture_is_reported_and_decode_goes_on_eagerly(monkeypatch, caplog):
    llm = with_graphs(monkeypatch, STORIES, failing_capture)
    batch = prompts([9, 4])
    with caplog.at_level(logging.ERROR, logger="cortex.neuron.engine.cuda_graph"):
        got = llm.generate(batch, GREEDY)
    assert got == LLM(STORIES, dtype="float32", config=CONFIG).generate(batch, GREEDY)
    state = llm.engine.runner.graphs_state
    assert state == "failed: RuntimeError: operation not permitted when stream is capturing"
    assert llm.engine.stats().graphs == state
    (record,) = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert llm.engine.runner.graphs.graphs == {}  # tried once, not at every step


def test_cpu_and_disabled_graphs_decode_eagerly():
    llm = LLM(STORIES, dtype="float32", config=CONFIG)
    assert llm.engine.runner.graphs is None
    assert llm.engine.stats().graphs == "eager"


class FakeStream:
    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def wait_stream(self, other: FakeStream) -> None:
        pass


class FakeGraph:
    pass


def test_capture_runs_on_the_devices_own_stream_thread_local(monkeypatch):
    """Two device threads capture at once: each on its device's one side stream, errors
    thread-local, the warm-up runs on that stream too."""
    seen: list[tuple[str, str, object, object, str]] = []
    current: dict[str, FakeStream] = {}

    @contextlib.contextmanager
    def on_stream(stream: FakeStream):
        current[threading.current_thread().name] = stream
        yield

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None, capture_error_mode="global"):
        seen.append(("capture", threading.current_thread().name, stream, pool, capture_error_mode))
        yield

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(device))
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    cuda_graph.capture_stream.cache_clear()
    barrier = threading.Barrier(2)
    results = {}

    def device_thread(index: int) -> None:
        device = torch.device("cuda", index)
        barrier.wait()
        for _ in range(2):
            results.setdefault(index, []).append(
                cuda_graph.capture(lambda: torch.ones(1), device, ("pool", index))
            )

    threads = [
        threading.Thread(target=device_thread, args=(i,), name=f"cuda-dev-{i}") for i in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cuda_graph.capture_stream.cache_clear()
    streams = {i: {s for _, name, s, _, _ in seen if name == f"cuda-dev-{i}"} for i in (0, 1)}
    assert all(len(s) == 1 for s in streams.values())  # one side stream per device, reused
    for i in (0, 1):
        (stream,) = streams[i]
        assert stream.device == torch.device("cuda", i)
        assert current[f"cuda-dev-{i}"] is stream  # warm-up on the same stream
    assert {(name, pool, mode) for _, name, _, pool, mode in seen} == {
        ("cuda-dev-0", ("pool", 0), "thread_local"),
        ("cuda-dev-1", ("pool", 1), "thread_local"),
    }
    assert all(isinstance(g, FakeGraph) for r in results.values() for g, _ in r)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_replay_equals_eager_for_every_bucket():
    config = EngineConfig(max_batch=16, block_size=16, cuda_graphs=True)
    graphs = LLM(STORIES, device="cuda", dtype="float32", config=config)
    assert graphs.engine.runner.graphs_state == "captured"
    eager = LLM(
        STORIES,
        device="cuda",
        dtype="float32",
        config=EngineConfig(max_batch=16, cuda_graphs=False),
    )
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for n in (*graphs.engine.runner.graphs.batches, 3, 11):
        prompts = [[1, 300 + i, 400 + (i * 7) % 100] for i in range(n)]
        assert graphs.generate(prompts, params) == eager.generate(prompts, params)
