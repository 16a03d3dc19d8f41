"""Paged attention in Triton: decode and varlen prefill, reading K/V through the block tables.

`decode_attention` and `prefill_attention` in attention.py call `paged_decode` and
`paged_prefill` on CUDA with their metadata's tensors; their torch SDPA path is the CPU path
and these kernels' reference. The contract is theirs: the cache is `[num_blocks, block_size,
kv_heads, head_dim]` per layer, the new tokens' K/V are already stored in it (`store_kv`),
and a key at position p of sequence b lives in block `block_tables[b, p // block_size]` at
row `p % block_size`. The kernels look that up per key, so K/V are read where they lie: no
gather, and any block size works.

Nothing is sized by the longest context: each program loops over the key tiles of its own
sequence, bounded by `context_lens` read on the device (and, with a sliding window, starting
at the window), so one CUDA graph replays for any live context.

- Decode (one query per sequence): a program per (sequence, KV head, split). The query heads
  sharing a KV head are the rows of one tile (GQA without repeating K/V), and the sequence's
  key tiles are dealt out to `num_splits` programs (flash-decoding) whose partial results a
  second kernel merges by their log-sum-exp; with one split the first kernel writes the output.
- Prefill (all prefilling sequences of a step in one launch): a program per (query tile,
  sequence, query head) over the sequence's cached prefix and its new tokens, causal.

Both use an online softmax in fp32 (exp2 with log2(e) folded in), an explicit score `scale`,
Gemma 2's soft-cap `softcap * tanh(s / softcap)` before the mask, and a sliding `window` (a
query at position i sees keys i - window < j <= i). Under `TRITON_INTERPRET=1` they run on CPU
tensors, which is how CI tests them (tests/kernels).
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
# Key tile lengths (tokens per inner-loop step; independent of the cache's block size).
DECODE_TILE = 32
PREFILL_TILE_M = 32  # query tokens per prefill program
PREFILL_TILE_N = 32
MAX_SPLITS = 16


@triton.jit
def _tanh(x):
    # tl has no tanh that also runs under the interpreter. exp of -2|x| never overflows.
    t = tl.exp(-2.0 * tl.abs(x))
    return tl.where(x < 0, -1.0, 1.0) * (1.0 - t) / (1.0 + t)


@triton.jit
def _kv_offsets(
    block_tables_ptr,
    stride_table,
    seq,
    positions,  # [N] key positions in the sequence
    valid,  # [N] which of them to read
    block_size,
    stride_block,
    stride_row,
    head_offset,  # of the KV head within a row
    dims,  # [D]
):
    """[N, D] element offsets of the K/V at `positions` in a cache, through the block table."""
    block = tl.load(block_tables_ptr + seq * stride_table + positions // block_size, valid, 0)
    # int64: a layer's cache can pass 2^31 elements.
    token = block.to(tl.int64) * stride_block + (positions % block_size) * stride_row
    return token[:, None] + head_offset + dims[None, :]


@triton.jit
def _softmax_step(
    scores,  # [M, N] fp32, already scaled and capped
    visible,  # [M, N]
    m,  # [M] running max (log2 domain)
    denominator,  # [M] running sum of exp2(score - m)
    acc,  # [M, D] running sum of probabilities x values
    v,  # [N, D]
):
    """One online-softmax update over a tile of keys; returns the new (m, denominator, acc)."""
    scores = tl.where(visible, scores * LOG2E, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, 1))
    # A row may see no key of this tile (windows, padding rows): keep exp2 away from -inf - -inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(scores - m_safe[:, None])  # [M, N]
    alpha = tl.exp2(m - m_safe)  # [M]: rescales what was summed against the old max
    denominator = denominator * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, denominator, acc


@triton.jit
def _scores(q, k, scale, softcap, USE_SOFTCAP: tl.constexpr):
    """[M, N] fp32 scores of q [M, D] against k [N, D]: scaled, then soft-capped."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    if USE_SOFTCAP:
        s = softcap * _tanh(s / softcap)
    return s


@triton.jit
def _decode_kernel(
    q_ptr,  # [B, H, D]
    k_cache_ptr,  # [num_blocks, block_size, KVH, D]
    v_cache_ptr,
    block_tables_ptr,  # [B, max_blocks]
    context_lens_ptr,  # [B]
    out_ptr,  # [B, H, D]; partial outputs [B, H, NUM_SPLITS, D] fp32 with several splits
    lse_ptr,  # [B, H, NUM_SPLITS] fp32 log2-sum-exp2 of each split's scores (unused with 1 split)
    stride_qb,
    stride_qh,
    stride_cb,  # the caches' strides (K and V alike): block, row, KV head
    stride_cr,
    stride_ch,
    stride_table,
    stride_ob,  # of the output [B, H, D] (with one split)
    stride_oh,
    scale,
    softcap,
    window,
    block_size,
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,  # GROUP rounded up to a power of two, at least 16 (tl.dot)
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two, at least 16
    TILE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + seq)
    # The query sits at position ctx - 1 and sees keys [start, ctx).
    start = tl.maximum(ctx - window, 0) if USE_WINDOW else 0
    first_tile = start // TILE
    tiles = tl.cdiv(ctx, TILE) - first_tile
    per_split = tl.cdiv(tiles, NUM_SPLITS)
    lo = first_tile + split * per_split
    hi = tl.minimum(lo + per_split, first_tile + tiles)

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows  # [G]
    head_ok = rows < GROUP
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
        head_ok[:, None] & dim_ok[None, :],
        0.0,
    )  # [G, D]

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    denominator = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    for tile in range(lo, hi):
        positions = tile * TILE + tl.arange(0, TILE)  # [N]
        visible = (positions >= start) & (positions < ctx)
        offsets = _kv_offsets(
            block_tables_ptr, stride_table, seq, positions, visible, block_size,
            stride_cb, stride_cr, kv_head * stride_ch, dims,
        )  # fmt: skip
        kv_ok = visible[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + offsets, kv_ok, 0.0)  # [N, D]
        v = tl.load(v_cache_ptr + offsets, kv_ok, 0.0)  # [N, D]
        scores = _scores(q, k.to(q.dtype), scale, softcap, USE_SOFTCAP)  # [G, N]
        m, denominator, acc = _softmax_step(
            scores, visible[None, :], m, denominator, acc, v.to(q.dtype)
        )

    # An empty split (short context) has m = -inf and denominator 0: it stores zeros and a
    # -inf lse, which the merge weighs 0.
    denominator = tl.where(denominator == 0.0, 1.0, denominator)
    out = acc / denominator[:, None]
    if NUM_SPLITS == 1:
        out_off = seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
        store_ok = head_ok[:, None] & dim_ok[None, :]
        tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), store_ok)
    else:
        part = (seq * tl.num_programs(1) * GROUP + heads) * NUM_SPLITS + split  # [G] rows
        store_ok = head_ok[:, None] & dim_ok[None, :]
        tl.store(out_ptr + part[:, None] * HEAD_DIM + dims[None, :], out, store_ok)
        tl.store(lse_ptr + part, m + tl.log2(denominator), head_ok)


@triton.jit
def _merge_splits_kernel(
    part_ptr,  # [B, H, NUM_SPLITS, D] fp32
    lse_ptr,  # [B, H, NUM_SPLITS] fp32
    out_ptr,  # [B, H, D]
    stride_ob,
    stride_oh,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two, at least 16
    NUM_SPLITS: tl.constexpr,
):
    """Combine the splits of one (sequence, head): weights exp2(lse_s - max lse)."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = seq * HEADS + head
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    lse = tl.load(lse_ptr + row * NUM_SPLITS + splits)  # [S]
    top = tl.max(lse, 0)
    # Only a sequence with an empty context has every split empty; it gets zeros, not NaN.
    weights = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))  # [S]
    parts = tl.load(
        part_ptr + (row * NUM_SPLITS + splits)[:, None] * HEAD_DIM + dims[None, :],
        dim_ok[None, :],
        0.0,
    )  # [S, D]
    total = tl.sum(weights, 0)
    out = tl.sum(parts * weights[:, None], 0) / tl.where(total == 0.0, 1.0, total)  # [D]
    out_off = seq * stride_ob + head * stride_oh + dims
    tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), dim_ok)


@triton.jit
def _prefill_kernel(
    q_ptr,  # [T, H, D]
    k_cache_ptr,  # [num_blocks, block_size, KVH, D]
    v_cache_ptr,
    block_tables_ptr,  # [B, max_blocks]
    context_lens_ptr,  # [B]
    query_start_loc_ptr,  # [B + 1]
    out_ptr,  # [T, H, D]
    stride_qt,
    stride_qh,
    stride_cb,  # the caches' strides (K and V alike): block, row, KV head
    stride_cr,
    stride_ch,
    stride_table,
    stride_ot,
    stride_oh,
    scale,
    softcap,
    window,
    block_size,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two, at least 16
    TILE_M: tl.constexpr,
    TILE_N: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
):
    q_tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_tile * TILE_M >= q_len:
        return  # the grid covers the longest query of the step
    ctx = tl.load(context_lens_ptr + seq)
    prefix = ctx - q_len  # cached tokens before the new ones

    rows = q_tile * TILE_M + tl.arange(0, TILE_M)  # [M] query indices within the sequence
    row_ok = rows < q_len
    q_pos = prefix + rows  # [M] absolute positions
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + (q_start + rows)[:, None] * stride_qt + head * stride_qh + dims[None, :],
        row_ok[:, None] & dim_ok[None, :],
        0.0,
    )  # [M, D]

    # Keys from the first query's window start to the last query's position (causal).
    end = tl.minimum(prefix + (q_tile + 1) * TILE_M, ctx)
    start = tl.maximum(prefix + q_tile * TILE_M - window + 1, 0) if USE_WINDOW else 0
    m = tl.full([TILE_M], float("-inf"), tl.float32)
    denominator = tl.zeros([TILE_M], tl.float32)
    acc = tl.zeros([TILE_M, DIM_PAD], tl.float32)
    for tile in range(start // TILE_N, tl.cdiv(end, TILE_N)):
        positions = tile * TILE_N + tl.arange(0, TILE_N)  # [N]
        loaded = positions < end
        offsets = _kv_offsets(
            block_tables_ptr, stride_table, seq, positions, loaded, block_size,
            stride_cb, stride_cr, kv_head * stride_ch, dims,
        )  # fmt: skip
        kv_ok = loaded[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + offsets, kv_ok, 0.0)  # [N, D]
        v = tl.load(v_cache_ptr + offsets, kv_ok, 0.0)  # [N, D]
        visible = (positions[None, :] <= q_pos[:, None]) & loaded[None, :]  # [M, N]
        if USE_WINDOW:
            visible &= positions[None, :] > q_pos[:, None] - window
        scores = _scores(q, k.to(q.dtype), scale, softcap, USE_SOFTCAP)  # [M, N]
        m, denominator, acc = _softmax_step(scores, visible, m, denominator, acc, v.to(q.dtype))

    out = acc / tl.where(denominator == 0.0, 1.0, denominator)[:, None]
    out_off = (q_start + rows)[:, None] * stride_ot + head * stride_oh + dims[None, :]
    tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), row_ok[:, None] & dim_ok[None, :])


def default_num_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Splits per decode program so that a small batch still fills the GPU (about two programs
    per SM); depends only on the batch shape, so a CUDA graph's choice holds at every replay."""
    if device.type != "cuda":
        return 1
    want = -(-2 * _sm_count(device) // (batch * kv_heads))
    return min(MAX_SPLITS, triton.next_power_of_2(want))


@cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tile_dim(dim: int) -> int:
    # Tiles are powers of two, and tl.dot wants at least 16 along each dimension.
    return max(16, triton.next_power_of_2(dim))


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1, "the head dimension must be contiguous"
    assert k_cache.stride() == v_cache.stride(), "K and V caches of one layout (KVCache's)"
    assert q.shape[-2] % k_cache.shape[2] == 0, "query heads must be a multiple of KV heads"


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One new token per sequence against its cached context: q [B, H, D] -> out [B, H, D].

    As attention.decode_attention (`block_tables` [B, max_blocks], `context_lens` [B] int32,
    as in AttentionMetadata), without host sync or shapes that depend on the contexts.
    `num_splits` (a power of two; default `default_num_splits`) divides each sequence's keys
    among that many programs.
    """
    _check(q, k_cache, v_cache)
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    group = heads // kv_heads
    splits = num_splits or default_num_splits(batch, kv_heads, q.device)
    assert splits & (splits - 1) == 0, "num_splits: a power of two"
    out = torch.empty(batch, heads, dim, dtype=q.dtype, device=q.device)
    if splits == 1:
        target, lse = out, out  # the kernel writes the output; lse is unused
    else:
        target = torch.empty(batch, heads, splits, dim, dtype=torch.float32, device=q.device)
        lse = torch.empty(batch, heads, splits, dtype=torch.float32, device=q.device)
    _decode_kernel[(batch, kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        target,
        lse,
        q.stride(0),
        q.stride(1),
        *k_cache.stride()[:3],
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        dim**-0.5 if scale is None else scale,
        softcap or 0.0,
        window or 0,
        k_cache.shape[1],
        GROUP=group,
        GROUP_PAD=_tile_dim(group),
        HEAD_DIM=dim,
        DIM_PAD=_tile_dim(dim),
        TILE=DECODE_TILE,
        NUM_SPLITS=splits,
        USE_WINDOW=window is not None,
        USE_SOFTCAP=softcap is not None,
    )
    if splits > 1:
        _merge_splits_kernel[(batch, heads)](
            target,
            lse,
            out,
            out.stride(0),
            out.stride(1),
            HEADS=heads,
            HEAD_DIM=dim,
            DIM_PAD=_tile_dim(dim),
            NUM_SPLITS=splits,
        )
    return out


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens over their cached prefix and themselves, every
    prefilling sequence in one launch: q [T, H, D] -> out [T, H, D].

    As attention.prefill_attention (`query_start_loc` [B + 1] int32; `max_query_len`, the
    most new tokens of a sequence, sizes the grid), except that the new tokens' K/V are read
    from the cache, where the caller stored them.
    """
    _check(q, k_cache, v_cache)
    tokens, heads, dim = q.shape
    out = torch.empty(tokens, heads, dim, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(max_query_len, PREFILL_TILE_M), context_lens.shape[0], heads)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        query_start_loc,
        out,
        q.stride(0),
        q.stride(1),
        *k_cache.stride()[:3],
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        dim**-0.5 if scale is None else scale,
        softcap or 0.0,
        window or 0,
        k_cache.shape[1],
        GROUP=heads // k_cache.shape[2],
        HEAD_DIM=dim,
        DIM_PAD=_tile_dim(dim),
        TILE_M=PREFILL_TILE_M,
        TILE_N=PREFILL_TILE_N,
        USE_WINDOW=window is not None,
        USE_SOFTCAP=softcap is not None,
    )
    return out
