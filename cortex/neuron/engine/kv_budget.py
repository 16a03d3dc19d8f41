"""How much memory a model's KV cache takes: one decision for every device, so several models
can share one.

- Every KV cache holds at most what `max_batch` sequences of `max_context` need: more would
  never be used.
- With a `memory` budget (models.toml `memory`, which the gateway passes in its load request,
  or `memory` in a direct `POST /models/load`), weights and KV cache stay within it: the KV
  cache takes at most `memory` minus the weights. 507 `insufficient_memory` when that leaves
  nothing, or when the cache needs more than `kv_cache_memory` of what the device has free once
  the weights are in (the budget was meant to fit; the device is fuller than planned).
- Without one: at most `kv_cache_memory` of the memory free once the weights are in (device
  memory on CUDA, available RAM on CPU), and on CPU at most `cpu_kv_cache_bytes` when set.

Either way a model takes what it can use and no more, the cache is allocated (and on CPU
written) at load, and the device's free memory in `/health` is what is left beside it for the
gateway to place the next model. When the budget holds less than one full-context sequence
the context shrinks to what it holds (logged); the manager's preflight, which runs the same
`kv_budget` on its estimate of the weights, refuses such a load before allocating anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from cortex.config import EngineConfig
from cortex.errors import InsufficientMemory
from cortex.neuron.engine.devices import describe as describe_device
from cortex.neuron.models.attention import KVCache
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.models.quantized import resident_bytes

log = logging.getLogger(__name__)


def kv_bytes(config: ModelConfig, block_size: int, dtype: torch.dtype, tokens: int) -> int:
    """Bytes of the KV blocks that `tokens` positions of one sequence take (K and V, every
    layer, rounded up to whole blocks)."""
    return -(-tokens // block_size) * KVCache.bytes_per_block(config, block_size, dtype)


def kv_budget(
    *,
    weights: int,
    free: int,
    need: int,
    share: float,
    memory: int | None = None,
    cap: int | None = None,
) -> int:
    """Bytes a model's KV cache may take (see the module docstring).

    `weights`: bytes the model's weights hold; `free`: bytes free on the device once they are
    in; `need`: bytes the KV cache of `max_batch` full-context sequences takes; `share`:
    `kv_cache_memory`; `memory`: the model's whole budget, when one was given; `cap`:
    `cpu_kv_cache_bytes` on CPU. Raises InsufficientMemory when `memory` cannot be honoured.
    """
    room = int(free * share)
    if memory is None:
        return min(need, room) if cap is None else min(need, room, cap)
    if memory <= weights:
        raise InsufficientMemory(
            f"a memory budget of {memory} bytes leaves no room for a KV cache beside"
            f" {weights} bytes of weights",
            required_bytes=weights + need,
            free_bytes=memory,
        )
    budget = min(memory - weights, need)
    if budget > room:
        raise InsufficientMemory(
            f"a memory budget of {memory} bytes needs {budget} bytes of KV cache beside the"
            f" weights; the device has room for {room}",
            required_bytes=weights + budget,
            free_bytes=weights + room,
        )
    return budget


@dataclass(frozen=True)
class KVPlan:
    """A model's KV cache: usable blocks (the scratch block not counted) and the context they
    allow."""

    num_blocks: int
    max_context: int


def plan_kv_cache(
    model: torch.nn.Module, config: EngineConfig, max_context: int, memory: int | None = None
) -> KVPlan:
    """The KV cache for `model`, measured on its device now that its weights are in (call it on
    the thread that owns the device)."""
    bs = config.block_size
    per_block = KVCache.bytes_per_block(model.config, bs, model.dtype)
    blocks_per_seq = -(-max_context // bs)
    budget = kv_budget(
        weights=resident_bytes(model),
        free=describe_device(str(model.device)).free_bytes,
        # One block more: the scratch block that padded rows of a decode batch write to.
        need=(blocks_per_seq * config.max_batch + 1) * per_block,
        share=config.kv_cache_memory,
        memory=memory,
        cap=config.cpu_kv_cache_bytes if model.device.type == "cpu" else None,
    )
    num_blocks = budget // per_block - 1
    if num_blocks < 1:
        raise InsufficientMemory(
            f"no room for a KV cache: one block needs {per_block} bytes, budget is {budget}",
            required_bytes=2 * per_block,
            free_bytes=budget,
        )
    if num_blocks < blocks_per_seq:
        log.warning(
            "KV cache holds %d tokens: max_context cut from %d", num_blocks * bs, max_context
        )
        max_context = num_blocks * bs
    return KVPlan(num_blocks, max_context)
