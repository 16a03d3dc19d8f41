"""The Triton paged-attention kernels against the torch SDPA path on the same paged cache.

Ragged lengths (1, block boundaries, crossing them), GQA ratios, block sizes, sliding windows,
soft-capping and decode splits. Without a GPU the kernels run under Triton's interpreter
(conftest.py), on CPU tensors in fp32; with one, on the GPU, where bf16 is tested too.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from cortex.neuron.models import attention, triton_attention
from cortex.neuron.models.attention import AttentionMetadata, store_kv

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FP32_ATOL = 1e-4


def paged_cache(
    lengths: list[int],
    new: list[int],
    block_size: int,
    kv_heads: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
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
        slot_mapping=slots[rows].to(DEVICE),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=DEVICE),
        context_lens=torch.tensor(lengths, dtype=torch.int32, device=DEVICE),
        query_start_loc=starts.to(DEVICE),
        is_decode=all(m == 1 for m in new),
        max_context_len=max(lengths),
    )
    return (
        k_cache.to(DEVICE),
        v_cache.to(DEVICE),
        keys[rows].to(DEVICE),
        values[rows].to(DEVICE),
        attn,
    )


def queries(tokens: int, heads: int, dim: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(tokens, heads, dim, generator=gen).to(dtype).to(DEVICE)


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


def run_decode(shape: Shape, variant, num_splits: int, dtype=torch.float32):
    window, scale, softcap = variant
    k_cache, v_cache, _, _, attn = paged_cache(
        shape.lengths, [1] * len(shape.lengths), shape.block_size, shape.kv_heads, shape.dim, dtype
    )
    q = queries(len(shape.lengths), shape.heads, shape.dim, dtype)
    out = triton_attention.paged_decode(
        q,
        k_cache,
        v_cache,
        attn.block_tables,
        attn.context_lens,
        window,
        scale,
        softcap,
        num_splits,
    )
    qc, kc, vc, meta = on_cpu(q, k_cache, v_cache, attn)
    expected = attention.decode_attention(qc, kc, vc, meta, window, scale, softcap)
    return out, expected


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decode_matches_sdpa(shape, variant) -> None:
    out, expected = run_decode(shape, variant, num_splits=1)
    torch.testing.assert_close(out.cpu(), expected, atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("num_splits", [2, 8])
@pytest.mark.parametrize("variant", [*VARIANTS[:2], (1, None, None)], ids=variant_id)
def test_decode_splits_match_sdpa(variant, num_splits) -> None:
    """Flash-decoding: keys dealt out to several programs, some of them with none (length 1,
    or a window of 1, where the query sees itself only)."""
    out, expected = run_decode(SHAPES[2], variant, num_splits)
    torch.testing.assert_close(out.cpu(), expected, atol=FP32_ATOL, rtol=0)


def run_prefill(shape: Shape, variant, dtype=torch.float32):
    window, scale, softcap = variant
    k_cache, v_cache, k, v, attn = paged_cache(
        shape.lengths, shape.new, shape.block_size, shape.kv_heads, shape.dim, dtype
    )
    q = queries(sum(shape.new), shape.heads, shape.dim, dtype)
    out = triton_attention.paged_prefill(
        q,
        k_cache,
        v_cache,
        attn.block_tables,
        attn.context_lens,
        attn.query_start_loc,
        max(shape.new),
        window,
        scale,
        softcap,
    )
    qc, kc, vc, meta = on_cpu(q, k_cache, v_cache, attn)
    expected = attention.prefill_attention(
        qc, k.float().cpu(), v.float().cpu(), kc, vc, meta, window, scale, softcap
    )
    return out, expected


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prefill_matches_sdpa(shape, variant) -> None:
    out, expected = run_prefill(shape, variant)
    torch.testing.assert_close(out.cpu(), expected, atol=FP32_ATOL, rtol=0)


def test_prefill_window_of_one_matches_sdpa() -> None:
    """Each query sees only its own key: every other tile is masked whole for some rows."""
    out, expected = run_prefill(SHAPES[1], (1, None, None))
    torch.testing.assert_close(out.cpu(), expected, atol=FP32_ATOL, rtol=0)


# bf16 and fp16 against the fp32 reference on the same rounded inputs: the kernels multiply
# probabilities by V in the input dtype (as flash attention does), accumulating in fp32.
LOW_PRECISION = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_low_precision_matches_sdpa(kind, dtype) -> None:
    if dtype == torch.bfloat16 and DEVICE.type == "cpu":
        # It multiplies bf16 bit patterns (triton-lang/triton#11584: "not supported yet").
        pytest.skip("Triton's interpreter has no bf16 tl.dot")
    variant = VARIANTS[3]  # window, scale and soft-cap
    if kind == "decode":
        out, expected = run_decode(SHAPES[2], variant, num_splits=2, dtype=dtype)
    else:
        out, expected = run_prefill(SHAPES[1], variant, dtype=dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), expected, atol=LOW_PRECISION[dtype], rtol=0)


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors stay on SDPA; CUDA ones take the kernels unless CORTEX_ATTENTION=sdpa."""
    monkeypatch.delenv("CORTEX_ATTENTION", raising=False)
    cuda = torch.device("cuda", 0)
    assert attention._kernels(torch.device("cpu")) is None
    assert attention._kernels(cuda) is triton_attention
    monkeypatch.setenv("CORTEX_ATTENTION", "sdpa")
    assert attention._kernels(cuda) is None
