"""The new architectures through the engine (`LLM`): continuous batching, chunked prefill and
the prefix cache give transformers' greedy tokens exactly (fp32).

Blocks of 4 tokens, prefill chunks of at most 7 tokens, four sequences of different lengths and
budgets joining and leaving the batch, two of them sharing a 12-token prefix; then the same
prompts again, served partly from the prefix cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.offline import LLM
from tests.architectures.tiny import ARCHS, hf_greedy, hf_reference, make_checkpoint

SHARED = [7, 300, 41, 5, 99, 12, 250, 3, 61, 17, 480, 33]
PROMPTS = [SHARED + [8, 9], [400, 4, 44], SHARED + [100, 101, 102, 103, 104], list(range(20, 37))]
BUDGETS = [20, 6, 14, 10]


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_greedy_equals_transformers(tmp_path: Path, arch: str) -> None:
    path = make_checkpoint(arch, tmp_path / arch, seed=2)
    config = EngineConfig(max_batch=4, block_size=4, max_num_batched_tokens=7, cuda_graphs=False)
    llm = LLM(path, "cpu", torch.float32, config=config)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in BUDGETS]
    first = llm.generate(PROMPTS, params)
    reference = hf_reference(path)
    for prompt, budget, out in zip(PROMPTS, BUDGETS, first, strict=True):
        assert out == hf_greedy(reference, prompt, budget)
    hits = llm.engine.blocks.hit_tokens
    assert llm.generate(PROMPTS, params) == first
    assert llm.engine.blocks.hit_tokens > hits  # the second round reused cached blocks
