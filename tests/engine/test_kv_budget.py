"""The one KV-budget decision (engine/kv_budget.py), pure and on a real CPU engine."""

from __future__ import annotations

import pytest
import torch

from cortex.config import EngineConfig
from cortex.errors import InsufficientMemory
from cortex.neuron.engine.kv_budget import kv_budget, kv_bytes, plan_kv_cache
from cortex.neuron.models.attention import KVCache
from cortex.neuron.models.loading import load_model
from cortex.neuron.models.quantized import resident_bytes
from cortex.neuron.offline import LLM
from tests.support.checkpoints import STORIES

MiB = 2**20
GiB = 2**30


def test_without_memory_the_need_within_a_share_of_free():
    assert kv_budget(weights=GiB, free=10 * GiB, need=2 * GiB, share=0.85) == 2 * GiB
    assert kv_budget(weights=GiB, free=2 * GiB, need=4 * GiB, share=0.5) == GiB
    assert kv_budget(weights=GiB, free=10 * GiB, need=4 * GiB, share=0.85, cap=MiB) == MiB


def test_memory_bounds_weights_and_kv_together():
    # models.toml memory = "18GiB" beside 16 GiB of weights: at most 2 GiB of KV, even if more
    # is free; less when max_batch full-context sequences need less.
    budget = kv_budget(weights=16 * GiB, free=60 * GiB, need=100 * GiB, share=0.85, memory=18 * GiB)
    assert budget == 2 * GiB
    assert kv_budget(weights=16 * GiB, free=60 * GiB, need=GiB, share=0.85, memory=18 * GiB) == GiB
    # cpu_kv_cache_bytes caps only the default sizing.
    assert kv_budget(weights=0, free=GiB, need=GiB, share=1.0, memory=MiB, cap=1) == MiB


def test_memory_that_cannot_be_honoured_is_insufficient_memory():
    with pytest.raises(InsufficientMemory) as small:
        kv_budget(weights=16 * GiB, free=60 * GiB, need=GiB, share=0.85, memory=16 * GiB)
    assert small.value.status == 507
    assert small.value.extra["required_bytes"] == 17 * GiB
    with pytest.raises(InsufficientMemory) as big:
        kv_budget(weights=16 * GiB, free=4 * GiB, need=3 * GiB, share=0.5, memory=20 * GiB)
    assert big.value.extra == {"required_bytes": 19 * GiB, "free_bytes": 18 * GiB}


def test_kv_bytes_rounds_up_to_whole_blocks():
    model = load_model(STORIES, torch.device("cpu"), torch.float32)
    per_block = KVCache.bytes_per_block(model.config, 16, torch.float32)
    assert kv_bytes(model.config, 16, torch.float32, 1) == per_block
    assert kv_bytes(model.config, 16, torch.float32, 33) == 3 * per_block


def test_cpu_engine_sizes_its_cache_by_memory_or_by_max_batch():
    model = load_model(STORIES, torch.device("cpu"), torch.float32)
    per_block = KVCache.bytes_per_block(model.config, 16, torch.float32)
    config = EngineConfig(max_batch=3, block_size=16, cuda_graphs=False)
    # Without memory: 3 sequences of 512 tokens, 32 blocks each.
    assert plan_kv_cache(model, config, 512).num_blocks == 96
    memory = resident_bytes(model) + 41 * per_block  # 40 usable blocks and the scratch block
    plan = plan_kv_cache(model, config, 512, memory)
    assert (plan.num_blocks, plan.max_context) == (40, 512)
    assert plan_kv_cache(model, config, 512, 2**40).num_blocks == 96  # no more than it can use
    tight = plan_kv_cache(model, config, 512, resident_bytes(model) + 11 * per_block)
    assert (tight.num_blocks, tight.max_context) == (10, 160)  # the context shrinks to fit
    llm = LLM(model=model, config=config, max_context=512)
    assert llm.engine.runner.kv_cache_bytes == 97 * per_block
