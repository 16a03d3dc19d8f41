"""A minimal greedy decoding loop over the decoder's model: one prefill, then one token a step.

Independent of the engine (scheduler, batching), so the GGUF tests check the loaded weights and
nothing else. The KV cache uses an identity block table: position p lives in slot p.
"""

from __future__ import annotations

import torch

from cortex.neuron.models.attention import AttentionMetadata, KVCache

BLOCK = 16


def step_metadata(positions: torch.Tensor, table: torch.Tensor, decode: bool) -> AttentionMetadata:
    context = int(positions[-1]) + 1
    return AttentionMetadata(
        slot_mapping=positions,
        block_tables=table,
        context_lens=torch.tensor([context], dtype=torch.int32),
        query_start_loc=torch.tensor([0, len(positions)], dtype=torch.int32),
        is_decode=decode,
        max_context_len=context,
    )


@torch.no_grad()
def greedy(model: torch.nn.Module, prompt: list[int], max_new: int, stop: set[int]) -> list[int]:
    """Up to `max_new` argmax tokens after `prompt`, ending after the first one in `stop`."""
    blocks = -(-(len(prompt) + max_new) // BLOCK)
    cache = KVCache.allocate(model.config, blocks, BLOCK, model.device, model.dtype)
    table = torch.arange(blocks, dtype=torch.int32)[None]
    model.bind_kv_cache(cache)
    try:
        tokens, positions = torch.tensor(prompt), torch.arange(len(prompt))
        out: list[int] = []
        while len(out) < max_new:
            hidden = model(tokens, positions, step_metadata(positions, table, bool(out)))
            token = int(model.compute_logits(hidden[-1:]).argmax(-1))
            out.append(token)
            if token in stop:
                break
            tokens, positions = torch.tensor([token]), positions[-1:] + 1
        return out
    finally:
        model.bind_kv_cache(None)
