"""Paged KV caches for the attention tests: every sequence's K/V in shuffled blocks, unused
slots NaN (a kernel that reads past a context or a table shows it), with the step's metadata,
and the shapes and variants (window, scale, soft-cap) both kernels' tests run over."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cortex.neuron.models import cpu_kernels
from cortex.neuron.models.attention import AttentionMetadata, store_kv


def paged_cache(
    lengths: list[int],
    new: list[int],
    block_size: int,
    kv_heads: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
):
    """A paged cache holding every sequence's K/V in shuffled blocks (tables padded with -1),
    the new tokens' K/V [T, KVH, D] (stored too) and the step's metadata."""
    gen = torch.Generator().manual_seed(seed)
    tables = []
    needed = [-(-n // block_size) for n in lengths]
    free = torch.randperm(sum(needed) + 3, generator=gen).tolist()  # a few blocks stay unused
    width = max(needed) + 1  # padding past every table
    for count in needed:
        blocks = [free.pop() for _ in range(count)]
        tables.append(blocks + [-1] * (width - count))
    shape = (len(free) + sum(needed), block_size, kv_heads, dim)
    # Unused slots hold NaN: a kernel that reads past a context or a table shows it.
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    slots = torch.tensor(
        [tables[i][p // block_size] * block_size + p % block_size
         for i, n in enumerate(lengths) for p in range(n)]
    )  # fmt: skip
    total = sum(lengths)
    keys = torch.randn(total, kv_heads, dim, generator=gen).to(dtype)
    values = torch.randn(total, kv_heads, dim, generator=gen).to(dtype)
    store_kv(keys, values, k_cache, v_cache, slots)
    # The new tokens are each sequence's last ones.
    ends = torch.tensor(lengths).cumsum(0).tolist()
    rows = torch.tensor([p for e, m in zip(ends, new, strict=True) for p in range(e - m, e)])
    starts = torch.tensor([0, *new]).cumsum(0).int()
    attn = AttentionMetadata(
        slot_mapping=slots[rows].to(device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        context_lens=torch.tensor(lengths, dtype=torch.int32, device=device),
        query_start_loc=starts.to(device),
        is_decode=all(m == 1 for m in new),
        max_context_len=max(lengths),
    )
    return (
        k_cache.to(device),
        v_cache.to(device),
        keys[rows].to(device),
        values[rows].to(device),
        attn,
    )


def queries(
    tokens: int,
    heads: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(tokens, heads, dim, generator=gen).to(dtype).to(device)


def on_cpu(q, k_cache, v_cache, attn: AttentionMetadata):
    """fp32 CPU copies for the SDPA reference. Its cache is NaN-free: SDPA reads whole blocks
    (padding included) and masks after the product, where NaN would survive."""
    meta = AttentionMetadata(
        slot_mapping=attn.slot_mapping.cpu(),
        block_tables=attn.block_tables.cpu(),
        context_lens=attn.context_lens.cpu(),
        query_start_loc=attn.query_start_loc.cpu(),
        is_decode=attn.is_decode,
        max_context_len=attn.max_context_len,
    )
    return (
        q.float().cpu(),
        k_cache.nan_to_num().float().cpu(),
        v_cache.nan_to_num().float().cpu(),
        meta,
    )


@dataclass(frozen=True)
class Shape:
    lengths: list[int]  # context length of each sequence, new tokens included
    new: list[int]  # new tokens of each sequence in a prefill step (the last ones)
    heads: int
    kv_heads: int
    dim: int
    block_size: int

    def __str__(self) -> str:
        lens = "-".join(f"{n}:{m}" for n, m in zip(self.lengths, self.new, strict=True))
        return f"len{lens}_h{self.heads}kv{self.kv_heads}_d{self.dim}_b{self.block_size}"

    def step(self, decode: bool, dtype: torch.dtype, device: torch.device):
        """A decode step (one new token per sequence) or this prefill step on its cache:
        `paged_cache`'s five results, then the step's queries [T, heads, dim]."""
        new = [1] * len(self.lengths) if decode else self.new
        cache = paged_cache(
            self.lengths, new, self.block_size, self.kv_heads, self.dim, dtype, device=device
        )
        return *cache, queries(sum(new), self.heads, self.dim, dtype, device)


# Ragged lengths of 1, one block, a block +- 1 and several blocks; prefill of whole prompts
# and of chunks over a cached prefix (prefix-cache hits, chunked prefill), crossing blocks or
# not; GQA ratios 1, 2, 4, 8 and 7 (not a power of two, as Qwen2-7B's).
SHAPES = [
    Shape([1, 16, 17, 40], [1, 16, 17, 40], 4, 4, 32, 16),
    Shape([5, 31, 32, 33, 64], [5, 3, 1, 33, 30], 4, 2, 16, 16),
    Shape([1, 70, 9], [1, 38, 1], 8, 2, 64, 32),
    Shape([45, 2], [20, 2], 8, 1, 16, 32),
    # A block size and a head_dim (as Phi-3's 96) that are not powers of two.
    Shape([20, 3, 36], [4, 3, 36], 14, 2, 24, 12),
]
# (window, scale, softcap)
VARIANTS = [
    (None, None, None),
    (7, None, None),
    (None, 0.3, 20.0),
    (20, 0.5, 5.0),
]


def variant_id(variant) -> str:
    window, scale, softcap = variant
    return f"w{window}_s{scale}_cap{softcap}"


@contextmanager
def sdpa_only() -> Iterator[None]:
    """attention.py on torch's SDPA path within the block, whatever kernels the host has: the
    references the kernels are held to."""
    before = os.environ.get("CORTEX_ATTENTION")
    os.environ["CORTEX_ATTENTION"] = "sdpa"
    cpu_kernels.reread_settings()
    try:
        yield
    finally:
        if before is None:
            del os.environ["CORTEX_ATTENTION"]
        else:
            os.environ["CORTEX_ATTENTION"] = before
        cpu_kernels.reread_settings()
