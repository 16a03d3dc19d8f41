"""The CUDA engine at a real model's context and beside other models: a 40960-token model at its
default max_context, graph replay against eager at long context on both attention paths, a second
model on the same GPU within its budget, and a capture on one GPU while another serves.

Skipped without CUDA (the two-device test without two GPUs); on a GPU host
`pytest -q tests/gpu` runs them (bench/decode_gpu.py's docstring says how to get there).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.cuda_graph import width_buckets
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.engine.worker import DeviceWorker, LoadOptions
from cortex.neuron.models.attention import reads_block_tables
from cortex.neuron.offline import LLM
from tests.engine.test_worker import collect
from tests.support.checkpoints import STORIES, make_tiny_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is false)",
    ),
]

LONG_CONTEXT = 40960  # Qwen3's max_position_embeddings
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
CONFIG = EngineConfig(max_batch=8, cuda_graphs=True)
MiB = 2**20


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Qwen3 (4 layers, 128-wide heads) with a 40960-token context."""
    return make_tiny_checkpoint(
        "qwen3",
        tmp_path_factory.mktemp("long") / "qwen3",
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=LONG_CONTEXT,
    )


def long_prompts(lengths: list[int]) -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 4096, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("attention", ["triton", "sdpa"])
def test_graph_replay_equals_eager_at_long_context(
    monkeypatch: pytest.MonkeyPatch, long_model: Path, attention: str
) -> None:
    """Contexts of 5000, 4000 and 300 tokens in a model sized for 40960 (its default): graph
    decode gives eager's tokens, and on SDPA no replay gathers more than its context's bucket."""
    if attention == "sdpa":
        monkeypatch.setenv("CORTEX_ATTENTION", "sdpa")
    elif not reads_block_tables(torch.device("cuda", 0)):
        pytest.skip("Triton is not installed")
    graphs = LLM(long_model, device="cuda", dtype="float32", config=CONFIG)
    runner = graphs.engine.runner
    assert graphs.engine.max_context == LONG_CONTEXT  # not shrunk to the prompts
    assert runner.graphs_state == "captured"
    eager_config = EngineConfig(max_batch=8, cuda_graphs=False)
    eager = LLM(long_model, device="cuda", dtype="float32", config=eager_config)
    prompts = long_prompts([5000, 4000, 300])
    assert graphs.generate(prompts, GREEDY) == eager.generate(prompts, GREEDY)
    assert graphs.generate(prompts[:1], GREEDY) == eager.generate(prompts[:1], GREEDY)
    widths = {w for _, w in runner.graphs.graphs}
    if attention == "sdpa":
        # 5032 tokens are 315 blocks of 16: the widest replay gathered 512 blocks, not 2560.
        assert max(widths) == 512 < runner.max_blocks_per_seq
        assert set(runner.graphs.widths) == set(width_buckets(runner.max_blocks_per_seq))
    else:
        assert widths == {runner.max_blocks_per_seq}  # one graph per batch, any context


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 600))


def test_a_second_model_loads_beside_the_first_on_one_gpu(long_model: Path) -> None:
    """The first model takes its `memory` budget, not 85% of the GPU; the second loads with the
    default sizing beside it; both serve at once; free memory drops by each one's bytes."""

    async def scenario():
        worker = DeviceWorker("cuda:0", CONFIG)
        worker.start()
        try:
            before = worker.memory().free_bytes
            first = await worker.load("long", long_model, LoadOptions(memory=512 * MiB))
            after_first = worker.memory().free_bytes
            second = await worker.load("stories", STORIES, LoadOptions(dtype="bfloat16"))
            after_second = worker.memory().free_bytes
            handles = [
                worker.submit("long", long_prompts([3000])[0], GREEDY),
                worker.submit("stories", [1, 300, 400], GREEDY),
            ]
            outputs = await asyncio.gather(*(collect(h) for h in handles))
            stats = [worker.stats("long"), worker.stats("stories")]
            return before, first, after_first, second, after_second, outputs, stats
        finally:
            await worker.shutdown()

    before, first, after_first, second, after_second, outputs, stats = run(scenario())
    assert 511 * MiB < first.bytes <= 512 * MiB
    assert first.max_context == LONG_CONTEXT
    assert before - after_first >= first.bytes - 64 * MiB  # what the allocator rounds
    assert after_first - after_second >= second.bytes - 64 * MiB
    assert after_second > before // 2  # the first model left the GPU to others
    assert [len(tokens) for tokens, _ in outputs] == [GREEDY.max_tokens] * 2
    assert [s.graphs for s in stats] == ["captured", "captured"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_one_gpu_captures_while_the_other_serves(long_model: Path) -> None:
    """cuda:1 loads (and captures its graphs) while cuda:0 decodes a long request: both work,
    each model's tensors stay on its GPU, and cuda:0's tokens are what it makes alone."""
    prompt = long_prompts([2000])[0]
    params = SamplingParams(temperature=0.0, max_tokens=6000, ignore_eos=True)
    alone = LLM(long_model, device="cuda:0", dtype="float32", config=CONFIG)
    expected = alone.generate([prompt], params)[0]
    alone.engine.close()
    del alone
    torch.cuda.empty_cache()

    async def scenario():
        workers = [DeviceWorker(f"cuda:{i}", CONFIG) for i in (0, 1)]
        for worker in workers:
            worker.start()
        try:
            await workers[0].load("a", long_model, LoadOptions(dtype="float32"))
            serving = asyncio.ensure_future(collect(workers[0].submit("a", prompt, params)))
            while workers[0].stats("a").generation_tokens < 50:  # decoding from graphs
                await asyncio.sleep(0.01)
            await workers[1].load("b", long_model, LoadOptions(dtype="float32"))
            assert not serving.done(), "cuda:0 finished before cuda:1 captured; lengthen it"
            tokens, _ = await serving
            other, _ = await collect(workers[1].submit("b", prompt[:100], GREEDY))
            memory = [w.memory() for w in workers]
            return tokens, other, [w.stats(m) for w, m in zip(workers, "ab", strict=True)], memory
        finally:
            for worker in workers:
                await worker.shutdown()

    tokens, other, stats, memory = run(scenario())
    assert tokens == expected
    assert len(other) == GREEDY.max_tokens
    assert [s.graphs for s in stats] == ["captured", "captured"]
    assert [m.id for m in memory] == ["cuda:0", "cuda:1"]
