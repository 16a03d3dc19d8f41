"""CUDA-graph decode: bucket sizes everywhere; replay equals eager only where CUDA exists."""

from __future__ import annotations

import pytest
import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.cuda_graph import batch_buckets
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.offline import LLM
from tests.support.checkpoints import STORIES


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert batch_buckets(50) == [1, 2, 4, 8, 16, 24, 32, 48, 50]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_replay_equals_eager_for_every_bucket():
    config = EngineConfig(max_batch=16, block_size=16, cuda_graphs=True)
    graphs = LLM(STORIES, device="cuda", dtype="float32", config=config)
    assert graphs.engine.runner.graphs is not None
    eager = LLM(
        STORIES,
        device="cuda",
        dtype="float32",
        config=EngineConfig(max_batch=16, cuda_graphs=False),
    )
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for n in (*graphs.engine.runner.graphs.buckets, 3, 11):
        prompts = [[1, 300 + i, 400 + (i * 7) % 100] for i in range(n)]
        assert graphs.generate(prompts, params) == eager.generate(prompts, params)
