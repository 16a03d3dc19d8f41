"""Paged attention over a block KV cache (nano-vllm style, plain torch SDPA).

The KV cache is a pool of fixed-size blocks per layer: `k[layer][num_blocks, block_size,
kv_heads, head_dim]`. A sequence owns a list of blocks (its row of `block_tables`); the token
at position p lives in slot `block_tables[seq][p // block_size] * block_size + p % block_size`.
The engine computes `slot_mapping` (the slot of each new token) and the block tables.

A step is either a prefill (any query lengths, sequences packed one after another in the flat
token batch: prompt chunks and, in a mixed step, decodes as one-token queries) or a decode
(every query length is 1). Prefill loops over sequences and may sync with the host; decode is
one batched gather + masked SDPA with static shapes and no host sync, so a CUDA graph can
capture it.

Each layer passes its own sliding window (None: global), score scale (None: 1/sqrt(head_dim))
and tanh soft-cap (Gemma 2); a window is only a mask over the blocks a sequence holds.

On CUDA, when Triton imports, both run as the paged kernels of triton_attention.py, which
read K/V through the block tables; this SDPA path is the CPU path and their reference. On the
CPU, decode runs as the C kernel of cpu_kernels.py where it is built and faster.
`CORTEX_ATTENTION=sdpa` in the environment keeps both devices on SDPA (for comparisons).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from types import ModuleType

import torch
import torch.nn.functional as F

from cortex.neuron.models import cpu_kernels
from cortex.neuron.models.model_config import ModelConfig


@dataclass
class AttentionMetadata:
    """Where the new tokens of one step go in the cache and what each sequence attends to."""

    slot_mapping: torch.Tensor  # LongTensor[T]: cache slot of each new token
    block_tables: torch.Tensor  # IntTensor[B, max_blocks], padded (any value; masked out)
    context_lens: torch.Tensor  # IntTensor[B]: tokens in cache after this step, new ones included
    query_start_loc: torch.Tensor  # IntTensor[B+1]: offsets of each sequence in the token batch
    is_decode: bool  # every query length is 1
    max_context_len: int  # python-side max of context_lens
    # Optional host copies, so that prefill need not read the device tensors back.
    query_start_loc_host: list[int] | None = None
    context_lens_host: list[int] | None = None
    # Set by `with_decode_inputs` at the start of a decode forward (never by the caller).
    decode: DecodeInputs | None = None

    @property
    def query_lens(self) -> torch.Tensor:
        """IntTensor[B]: new tokens per sequence."""
        return self.query_start_loc[1:] - self.query_start_loc[:-1]


@dataclass
class DecodeInputs:
    """What every layer's decode attention shares within one step, computed once per forward.

    Derived on the device from the metadata's tensors (no host sync), inside the forward, so
    a captured CUDA graph recomputes it from its static inputs at every replay.
    """

    blocks: torch.Tensor  # LongTensor[B * max_blocks]: the cache blocks to gather, row-major
    # By window (None: global): [B, 1, 1, S] additive mask in the model dtype, 0 visible, -inf not.
    biases: dict[int | None, torch.Tensor]


def with_decode_inputs(
    attn: AttentionMetadata,
    block_size: int,
    windows: Iterable[int | None],
    dtype: torch.dtype,
) -> AttentionMetadata:
    """A copy of decode metadata carrying its `DecodeInputs`: the block index and one key mask
    per distinct window among `windows` (the layers'). The kernels need none: `attn` itself."""
    if _kernels(attn.context_lens.device) is not None:
        return attn
    span = attn.block_tables.shape[1] * block_size
    positions = torch.arange(span, device=attn.context_lens.device)[None, :]  # [1, S]
    lens = attn.context_lens[:, None]  # [B, 1]
    biases = {}
    for window in set(windows):
        hidden = positions >= lens  # [B, S]: past the context
        if window is not None:
            hidden |= positions < lens - window
        # An additive mask: SDPA's CPU kernel takes it faster than a boolean one.
        bias = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device)
        biases[window] = bias.masked_fill_(hidden, float("-inf"))[:, None, None, :]
    blocks = _block_index(attn.block_tables, attn.block_tables.shape[1])
    return replace(attn, decode=DecodeInputs(blocks, biases))


@dataclass
class KVCache:
    """Per-layer K and V block pools; views into one allocation."""

    k: list[torch.Tensor]  # [layers] x [num_blocks, block_size, kv_heads, head_dim]
    v: list[torch.Tensor]
    block_size: int

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """Bytes one block takes across all layers, K and V."""
        elem = torch.empty((), dtype=dtype).element_size()
        per_layer = block_size * config.num_key_value_heads * config.head_dim * elem
        return 2 * config.num_hidden_layers * per_layer

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> KVCache:
        """One zeroed tensor [2, layers, num_blocks, block_size, kv_heads, head_dim]."""
        pool = torch.zeros(
            2,
            config.num_hidden_layers,
            num_blocks,
            block_size,
            config.num_key_value_heads,
            config.head_dim,
            device=device,
            dtype=dtype,
        )
        return cls(k=list(pool[0]), v=list(pool[1]), block_size=block_size)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Write new K/V [T, kv_heads, head_dim] into their cache slots (one scatter each)."""
    kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slots, v.to(v_cache.dtype))


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    attn: AttentionMetadata,
    window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens over each sequence's cached prefix plus themselves.

    q [T, H, D], k/v [T, KVH, D] (already stored in the cache) -> out [T, H, D]. With a
    sliding `window`, a query at position i sees keys i - window < j <= i.
    """
    starts = attn.query_start_loc_host or attn.query_start_loc.tolist()
    if k_cache is not None and (kernels := _kernels(q.device)) is not None:
        longest = max(e - s for s, e in itertools.pairwise(starts))
        return kernels.paged_prefill(
            q, k_cache, v_cache, attn.block_tables, attn.context_lens, attn.query_start_loc,
            longest, window, scale, softcap,
        )  # fmt: skip
    ctx_lens = attn.context_lens_host or attn.context_lens.tolist()
    out = torch.empty_like(q)
    for i, ctx in enumerate(ctx_lens):
        s, e = starts[i], starts[i + 1]
        new = e - s
        prefix = ctx - new
        qi = q[s:e].transpose(0, 1)  # [H, L, D]
        if prefix == 0:
            ki, vi = k[s:e], v[s:e]  # [L, KVH, D]
        else:
            assert k_cache is not None and v_cache is not None, "a cached prefix needs a KV cache"
            blocks = _block_index(attn.block_tables[i : i + 1], -(-ctx // k_cache.shape[1]))
            ki, vi = _gather(k_cache, v_cache, blocks, 1)
            ki, vi = ki[0, :ctx], vi[0, :ctx]  # [ctx, KVH, D]
        mask = None
        if prefix or (window is not None and window < ctx) or softcap is not None:
            # Query j sits at absolute position prefix + j and sees keys up to prefix + j.
            full = torch.ones(new, ctx, dtype=torch.bool, device=q.device)
            mask = full.tril(prefix)
            if window is not None and window < ctx:
                mask &= ~full.tril(prefix - window)
        # Grouped-query attention in 4D, the query heads that share a KV head grouped under it
        # and K/V broadcast over the group: SDPA's CPU flash kernel takes that, while 3D inputs
        # or enable_gqa fall back to its math path (4x slower on a 600-token prompt).
        kv_heads = ki.shape[1]
        group = qi.shape[0] // kv_heads
        qg = qi.view(kv_heads, group, new, -1)  # [KVH, G, L, D]
        ki = ki.transpose(0, 1)[:, None].expand(-1, group, -1, -1)  # [KVH, G, S, D]
        vi = vi.transpose(0, 1)[:, None].expand(-1, group, -1, -1)
        if softcap is None:
            oi = F.scaled_dot_product_attention(
                qg, ki, vi, attn_mask=mask, is_causal=mask is None, scale=scale
            )  # [KVH, G, L, D]
        else:
            bias = torch.zeros(mask.shape, dtype=qi.dtype, device=q.device)
            bias.masked_fill_(~mask, float("-inf"))
            oi = softcapped_attention(qg, ki, vi, bias, scale, softcap)
        out[s:e] = oi.reshape(-1, new, oi.shape[-1]).transpose(0, 1)  # [L, H, D]
    return out


def softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float | None,
    softcap: float,
) -> torch.Tensor:
    """Attention with Gemma 2's tanh soft-capping of the scores, which SDPA cannot do.

    q [..., L, D], k/v [..., S, D] (same heads, or broadcastable), additive `bias` [.., L, S].
    The scores are capped before the mask and the softmax runs in fp32, as transformers does.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale  # [..., L, S]
    scores = torch.tanh(scores / softcap) * softcap + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs @ v  # [..., L, D]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    attn: AttentionMetadata,
    window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One new token per sequence against its whole cached context; static shapes, no sync.

    q [B, H, D] -> out [B, H, D]. Keys past each sequence's context length (and, with a
    sliding `window`, those `window` or more positions back) are masked. The block index and
    mask come from `attn.decode` when the model computed them for the step.
    """
    if (kernels := _kernels(q.device)) is not None:
        return kernels.paged_decode(
            q, k_cache, v_cache, attn.block_tables, attn.context_lens, window, scale, softcap
        )
    if q.device.type == "cpu" and (lib := cpu_kernels.kernel_for(q, k_cache)) is not None:
        return cpu_kernels.paged_decode(
            lib, q, k_cache, v_cache, attn.block_tables, attn.context_lens, window, scale, softcap
        )
    if attn.decode is None or window not in attn.decode.biases:
        attn = with_decode_inputs(attn, k_cache.shape[1], [window], q.dtype)
    batch, heads, dim = q.shape
    ks, vs = _gather(k_cache, v_cache, attn.decode.blocks, batch)  # [B, S, KVH, D]
    kv_heads = k_cache.shape[2]
    # Grouped-query attention without repeating K/V: the query heads that share a KV head
    # become that head's query rows (head h uses KV head h // group, as HF's repeat_kv).
    qg = q.view(batch, kv_heads, heads // kv_heads, dim)  # [B, KVH, G, D]
    ks, vs = ks.transpose(1, 2), vs.transpose(1, 2)  # [B, KVH, S, D]
    bias = attn.decode.biases[window]  # [B, 1, 1, S]
    if softcap is None:
        out = F.scaled_dot_product_attention(qg, ks, vs, attn_mask=bias, scale=scale)
    else:
        out = softcapped_attention(qg, ks, vs, bias, scale, softcap)  # [B, KVH, G, D]
    return out.reshape(batch, heads, dim)


def reads_block_tables(device: torch.device) -> bool:
    """Whether decode attention on `device` reads K/V through the block tables (the Triton
    kernels), so that its cost follows `context_lens` whatever the tables' width; the SDPA path
    gathers every position the tables span."""
    return _kernels(device) is not None


def _kernels(device: torch.device) -> ModuleType | None:
    """The Triton kernels' module when attention on `device` runs them, else None (SDPA)."""
    if device.type != "cuda" or os.environ.get("CORTEX_ATTENTION") == "sdpa":
        return None
    return _triton_attention()


@cache
def _triton_attention() -> ModuleType | None:
    try:
        from cortex.neuron.models import triton_attention
    except ImportError:  # a CUDA torch without Triton
        return None
    return triton_attention


def _block_index(block_tables: torch.Tensor, blocks: int) -> torch.Tensor:
    """LongTensor[B * blocks]: the first `blocks` entries of each row of the block tables."""
    # Padding entries may be -1; clamp them to a real block (their positions are masked).
    return block_tables[:, :blocks].clamp(min=0).long().flatten()


def _gather(
    k_cache: torch.Tensor, v_cache: torch.Tensor, blocks: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of `blocks` (B rows of equally many blocks): [B, S, KVH, D] each."""
    shape = (batch, -1, k_cache.shape[2], k_cache.shape[3])
    # index_select, not k_cache[table]: advanced indexing is ~100x slower on CPU.
    return k_cache.index_select(0, blocks).view(shape), v_cache.index_select(0, blocks).view(shape)
