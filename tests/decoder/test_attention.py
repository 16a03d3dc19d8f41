"""Paged attention against a naive per-sequence reference, with scattered, padded block tables."""

from __future__ import annotations

import pytest
import torch

from cortex.neuron.models.attention import (
    AttentionMetadata,
    decode_attention,
    prefill_attention,
    store_kv,
)

BLOCK, BLOCKS, HEADS, KV_HEADS, DIM = 4, 40, 4, 2, 8


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, first: int, window=None):
    """q [L, H, D] at positions first.., k/v [S, KVH, D] at 0..S-1 -> [L, H, D]."""
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = torch.einsum("lhd,shd->hls", q, k) / DIM**0.5
    qpos = torch.arange(first, first + q.shape[0])[:, None]
    kpos = torch.arange(k.shape[0])[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hls,shd->lhd", scores.softmax(-1), v)


def setup(lengths: list[int], new: list[int], width: int):
    """A cache holding each sequence's first (length - new) tokens in shuffled blocks."""
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.zeros(BLOCKS, BLOCK, KV_HEADS, DIM)
    v_cache = torch.zeros_like(k_cache)
    free = torch.randperm(BLOCKS, generator=gen).tolist()
    tables, keys, values = [], [], []
    for n in lengths:
        blocks = [free.pop() for _ in range(-(-n // BLOCK))]
        tables.append(blocks + [-1] * (width - len(blocks)))
        keys.append(torch.randn(n, KV_HEADS, DIM, generator=gen))
        values.append(torch.randn(n, KV_HEADS, DIM, generator=gen))

    def slot(i: int, p: int) -> int:
        return tables[i][p // BLOCK] * BLOCK + p % BLOCK

    for i, (n, m) in enumerate(zip(lengths, new, strict=True)):
        old = torch.tensor([slot(i, p) for p in range(n - m)], dtype=torch.long)
        store_kv(keys[i][: n - m], values[i][: n - m], k_cache, v_cache, old)
    slots = torch.tensor(
        [
            slot(i, p)
            for i, (n, m) in enumerate(zip(lengths, new, strict=True))
            for p in range(n - m, n)
        ]
    )
    starts = torch.tensor([0, *new]).cumsum(0).int()
    attn = AttentionMetadata(
        slot_mapping=slots,
        block_tables=torch.tensor(tables, dtype=torch.int32),
        context_lens=torch.tensor(lengths, dtype=torch.int32),
        query_start_loc=starts,
        is_decode=all(m == 1 for m in new),
        max_context_len=max(lengths),
    )
    return k_cache, v_cache, keys, values, attn


@pytest.mark.parametrize("window", [None, 5])
def test_decode_matches_naive(window) -> None:
    lengths = [1, 7, 13, 30]
    k_cache, v_cache, keys, values, attn = setup(lengths, [1] * 4, width=9)
    new_k = torch.stack([k[-1] for k in keys])
    new_v = torch.stack([v[-1] for v in values])
    store_kv(new_k, new_v, k_cache, v_cache, attn.slot_mapping)
    q = torch.randn(4, HEADS, DIM, generator=torch.Generator().manual_seed(1))
    out = decode_attention(q, k_cache, v_cache, attn, window)
    for i, n in enumerate(lengths):
        expected = naive(q[i : i + 1], keys[i], values[i], n - 1, window)
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5)


@pytest.mark.parametrize("window", [None, 5])
def test_prefill_over_cached_prefix_matches_naive(window) -> None:
    lengths, new = [6, 17, 9], [6, 5, 3]  # first sequence has no prefix
    k_cache, v_cache, keys, values, attn = setup(lengths, new, width=6)
    k = torch.cat([kk[n - m :] for kk, n, m in zip(keys, lengths, new, strict=True)])
    v = torch.cat([vv[n - m :] for vv, n, m in zip(values, lengths, new, strict=True)])
    store_kv(k, v, k_cache, v_cache, attn.slot_mapping)
    q = torch.randn(sum(new), HEADS, DIM, generator=torch.Generator().manual_seed(2))
    out = prefill_attention(q, k, v, k_cache, v_cache, attn, window)
    start = 0
    for i, (n, m) in enumerate(zip(lengths, new, strict=True)):
        expected = naive(q[start : start + m], keys[i], values[i], n - m, window)
        assert torch.allclose(out[start : start + m], expected, atol=1e-5)
        start += m
