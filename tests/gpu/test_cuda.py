"""The CUDA path on a real GPU: bf16 numerics, graph decode, memory across loads, /health.

Every test here needs CUDA and is skipped without it, so CPU runs only collect them. On a GPU
host: `pytest -q tests/gpu tests/engine/test_cuda_graph.py` (bench/decode_gpu.py's docstring
says how to get the project and its fixtures onto the device machine).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.engine.worker import DeviceWorker, LoadOptions
from cortex.neuron.models.loading import load_model
from cortex.neuron.offline import LLM
from tests.decoder.paged import PagedRunner
from tests.decoder.test_models import ARCHS, PROMPTS, hf_model
from tests.engine.test_worker import collect
from tests.support.checkpoints import STORIES, make_tiny_checkpoint
from tests.support.neuron_proc import Session, start_neuron

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is false)",
    ),
]

CUDA = torch.device("cuda", 0)
# Two bf16 computations of the same logits differ by a few units in the last place: bf16 keeps
# 8 significant bits, so 0.03 of the largest logit is about four ulps (on CPU the sides differ
# by about 1%).
BF16_TOLERANCE = 0.03
# Decode-step input appended to every prompt.
NEXT_TOKEN = 123
# Load/unload cycles, and how far device memory may drift over them (the model's bf16 weights
# alone are 232 MB, its KV cache 128 MiB: leaking either would show).
CYCLES = 20
DRIFT_BYTES = 64 * 2**20
GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_checkpoint(arch, root / arch) for arch in ARCHS}


@torch.inference_mode()
def logits_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """transformers' logits [len(ids), V] (fp32) of one prompt on the model's device."""
    return model(torch.tensor([ids], device=model.device)).logits[0].float()


def assert_bf16_close(ours: torch.Tensor, bf16: torch.Tensor, fp32: torch.Tensor) -> None:
    """Ours (bf16) is as close to transformers' bf16 and fp32 logits as bf16 allows."""
    bound = BF16_TOLERANCE * fp32.abs().max().item()
    assert (ours - bf16).abs().max().item() <= bound
    assert (ours - fp32).abs().max().item() <= bound


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_logits_match_transformers(tiny: dict[str, Path], arch: str) -> None:
    """A packed bf16 prefill of three prompts, then one batched decode step, on cuda:0."""
    path = tiny[arch]
    runner = PagedRunner(load_model(path, CUDA, torch.bfloat16))
    prefill = runner.step(list(enumerate(PROMPTS)))
    decode = runner.step([(i, [NEXT_TOKEN]) for i in range(len(PROMPTS))])
    fp32 = hf_model(path).to(CUDA)
    bf16 = hf_model(path).to(CUDA, torch.bfloat16)
    start = 0
    for i, prompt in enumerate(PROMPTS):
        rows = prefill[start : start + len(prompt)]
        start += len(prompt)
        assert_bf16_close(rows, logits_of(bf16, prompt), logits_of(fp32, prompt))
        ids = [*prompt, NEXT_TOKEN]
        assert_bf16_close(decode[i], logits_of(bf16, ids)[-1], logits_of(fp32, ids)[-1])


def test_bf16_graph_decode_equals_eager_for_every_bucket() -> None:
    """Greedy bf16 decode replayed from CUDA graphs equals eager decode, token for token."""
    config = EngineConfig(max_batch=16, cuda_graphs=True)
    graphs = LLM(STORIES, device="cuda", dtype="bfloat16", config=config)
    assert graphs.engine.runner.graphs_state == "captured"
    eager = LLM(
        STORIES,
        device="cuda",
        dtype="bfloat16",
        config=EngineConfig(max_batch=16, cuda_graphs=False),
    )
    for n in (*graphs.engine.runner.graphs.batches, 3, 11):
        prompts = [[1, 300 + i, 400 + (i * 7) % 100, 260 + i % 5] for i in range(n)]
        assert graphs.generate(prompts, GREEDY) == eager.generate(prompts, GREEDY), f"batch {n}"


def device_memory() -> tuple[int, int]:
    """(allocated, reserved) bytes of the caching allocator on cuda:0."""
    return torch.cuda.memory_allocated(CUDA), torch.cuda.memory_reserved(CUDA)


async def load_generate_unload(worker: DeviceWorker, path: Path) -> int:
    """One cycle through the worker; returns the bytes allocated while the model was loaded."""
    await worker.load("m", path, LoadOptions(dtype="bfloat16"))
    loaded = torch.cuda.memory_allocated(CUDA)
    tokens, _ = await collect(worker.submit("m", [1, 2, 3], GREEDY))
    assert len(tokens) == GREEDY.max_tokens
    await worker.unload("m")
    return loaded


def test_load_unload_twenty_times_keeps_memory_flat(tmp_path: Path) -> None:
    """A real DeviceWorker on cuda:0 (graphs on) loads, generates and unloads 20 times; the
    allocator's allocated and reserved bytes return to where the first cycle left them."""
    path = make_tiny_checkpoint(
        "qwen3",
        tmp_path / "m",
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=128,
        max_position_embeddings=4096,
    )

    async def scenario() -> None:
        worker = DeviceWorker("cuda:0", EngineConfig(max_batch=4, cuda_graphs=True))
        worker.start()
        try:
            # The first cycle makes the process-lifetime allocations (cuBLAS workspaces, ...).
            await load_generate_unload(worker, path)
            allocated, reserved = device_memory()
            for cycle in range(CYCLES):
                loaded = await load_generate_unload(worker, path)
                assert loaded - allocated > 4 * DRIFT_BYTES, "the model did not load on cuda:0"
                now_allocated, now_reserved = device_memory()
                assert now_allocated - allocated <= DRIFT_BYTES, f"allocated grew by cycle {cycle}"
                assert now_reserved - reserved <= DRIFT_BYTES, f"reserved grew by cycle {cycle}"
        finally:
            await worker.shutdown()

    asyncio.run(scenario())


def test_health_reports_the_cuda_device_and_serves_on_it(tmp_path: Path) -> None:
    """A real neuron on cuda:0: /health names the GPU and its memory; a model loads there."""
    (tmp_path / "stories260k").symlink_to(STORIES)
    neuron = start_neuron(tmp_path, ["--device", "cuda:0"])
    try:
        client = Session(neuron.url)
        free, total = torch.cuda.mem_get_info(CUDA)
        (device,) = client.get("/health").json()["devices"]
        assert device["id"] == "cuda:0"
        assert device["name"] == torch.cuda.get_device_name(CUDA)
        assert device["total_bytes"] == total
        assert 0 < device["free_bytes"] <= total
        loaded = client.post("/models/load", json={"model": "stories260k", "device": "cuda:0"})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["device"] == "cuda:0"
        (model,) = client.get("/health").json()["models"]
        assert (model["id"], model["device"]) == ("stories260k", "cuda:0")
        body = {"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 8}
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"]
    finally:
        neuron.stop()
