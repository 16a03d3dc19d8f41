"""The Triton paged-attention kernels against the torch SDPA path on the same paged cache.

Ragged lengths (1, block boundaries, crossing them), GQA ratios, block sizes, sliding windows,
soft-capping and decode splits. Without a GPU the kernels run under Triton's interpreter
(conftest.py), on CPU tensors in fp32; with one, on the GPU, where bf16 is tested too.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from cortex.neuron.models import attention, triton_attention
from tests.support.paged_cache import (
    SHAPES,
    VARIANTS,
    Shape,
    on_cpu,
    sdpa_only,
    variant_id,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FP32_ATOL = 1e-4


def run_decode(shape: Shape, variant, num_splits: int, dtype=torch.float32):
    window, scale, softcap = variant
    k_cache, v_cache, _, _, attn, q = shape.step(True, dtype, DEVICE)
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
    with sdpa_only():
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
    k_cache, v_cache, k, v, attn, q = shape.step(False, dtype, DEVICE)
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
