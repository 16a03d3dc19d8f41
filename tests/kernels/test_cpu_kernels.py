"""The CPU's C kernels (cpu_kernels.c) against torch: decode attention against the SDPA path,
RMSNorm against torch's ops.

It reads only each sequence's own positions: the paged caches hold NaN everywhere else, so a
read past a context, a window or a table shows. Shapes the kernel does not serve (a head size
that is not a multiple of 16, fp16) must fall back to SDPA, and a host that cannot build it
must keep serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cortex.neuron.models import attention, cpu_kernels
from cortex.neuron.models.llama import rms_normalize
from tests.support.paged_cache import (
    SHAPES,
    VARIANTS,
    Shape,
    on_cpu,
    sdpa_only,
    variant_id,
)

LIB = cpu_kernels.kernel()
needs_kernel = pytest.mark.skipif(LIB is None, reason="no C compiler or no AVX-512 on this host")
# bf16 outputs are rounded once, from fp32 (the reference rounds too, at other points).
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# The shared shapes whose head size the kernel serves, and more: Llama's 128, GQA 3 (SmolLM2),
# a single KV head, long contexts over many blocks.
SHAPES_SERVED = [s for s in SHAPES if s.dim % 16 == 0] + [
    Shape([700, 1, 33], [1, 1, 1], 9, 3, 64, 16),
    Shape([300, 129], [1, 1], 8, 1, 128, 32),
    Shape([50, 17], [1, 1], 6, 6, 16, 5),  # a block size not a power of two
]


def case(shape: Shape, dtype: torch.dtype):
    """q, k_cache, v_cache and the metadata of a decode step on the CPU."""
    k_cache, v_cache, _, _, attn, q = shape.step(True, dtype, torch.device("cpu"))
    return q, k_cache, v_cache, attn


def reference(q, k_cache, v_cache, attn, variant) -> torch.Tensor:
    qc, kc, vc, meta = on_cpu(q, k_cache, v_cache, attn)
    with sdpa_only():
        return attention.decode_attention(qc, kc, vc, meta, *variant)


@needs_kernel
@pytest.mark.parametrize("dtype", ATOL, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("shape", SHAPES_SERVED, ids=str)
def test_kernel_matches_sdpa(shape: Shape, variant, dtype: torch.dtype) -> None:
    q, k_cache, v_cache, attn = case(shape, dtype)
    assert cpu_kernels.kernel_for(q, k_cache) is LIB
    out = attention.decode_attention(q, k_cache, v_cache, attn, *variant)  # the kernel's path
    assert out.dtype == dtype and not out.isnan().any()
    torch.testing.assert_close(
        out.float(), reference(q, k_cache, v_cache, attn, variant), atol=ATOL[dtype], rtol=0
    )


@needs_kernel
def test_queries_split_from_a_fused_projection() -> None:
    """q as the model hands it: a view of the fused q/k rows, its rows strided."""
    shape = SHAPES_SERVED[-3]
    q, k_cache, v_cache, attn = case(shape, torch.bfloat16)
    fused = torch.cat((q, torch.randn(q.shape[0], shape.kv_heads, shape.dim).bfloat16()), dim=1)
    view = fused.split([shape.heads, shape.kv_heads], dim=1)[0]
    assert not view.is_contiguous()
    out = cpu_kernels.paged_decode(
        LIB, view, k_cache, v_cache, attn.block_tables, attn.context_lens, None, None, None
    )
    torch.testing.assert_close(out, cpu_kernels.paged_decode(
        LIB, q, k_cache, v_cache, attn.block_tables, attn.context_lens, None, None, None
    ), atol=0, rtol=0)  # fmt: skip


def test_unserved_shapes_and_sdpa_setting_stay_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORTEX_ATTENTION", raising=False)
    odd = Shape([20, 3], [1, 1], 14, 2, 24, 12)  # Phi-3-like head size 24
    q, k_cache, _, _ = case(odd, torch.float32)
    assert cpu_kernels.kernel_for(q, k_cache) is None
    q, k_cache, _, _ = case(SHAPES_SERVED[-3], torch.float16)
    assert cpu_kernels.kernel_for(q, k_cache) is None
    q, k_cache, _, _ = case(SHAPES_SERVED[-3], torch.float32)
    monkeypatch.setenv("CORTEX_ATTENTION", "sdpa")
    assert cpu_kernels.kernel_for(q, k_cache) is None


def test_large_batches_on_many_threads_stay_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread against SDPA on many: the kernel takes small batches only there."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    small = Shape([30], [1], 9, 3, 64, 16)
    q, k_cache, _, _ = case(small, torch.float32)
    assert cpu_kernels.kernel_for(q, k_cache) is LIB
    big = Shape([30] * 4, [1] * 4, 9, 3, 64, 16)
    q, k_cache, _, _ = case(big, torch.float32)
    assert cpu_kernels.kernel_for(q, k_cache) is None


def test_build_without_a_compiler_is_reported(tmp_path: Path) -> None:
    with pytest.raises(cpu_kernels.KernelUnavailable, match="no C compiler"):
        cpu_kernels.build(tmp_path, "no-such-cc-here")
    with pytest.raises(cpu_kernels.KernelUnavailable, match="false failed"):
        cpu_kernels.build(tmp_path, "false")
    assert not list(tmp_path.glob("*.so"))


def test_a_failed_build_logs_once_and_serves_on_torch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", "no-such-cc-here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_kernels._built.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="cortex.neuron"):
            shape = SHAPES_SERVED[-3]
            q, k_cache, v_cache, attn = case(shape, torch.float32)
            assert cpu_kernels.kernel_for(q, k_cache) is None
            assert cpu_kernels.kernel_for(q, k_cache) is None
            rows = torch.ones(2, 32, dtype=torch.bfloat16)
            assert cpu_kernels.rms_norm(rows, rows[0], 1e-6) is None
            out = attention.decode_attention(q, k_cache.nan_to_num(), v_cache.nan_to_num(), attn)
        torch.testing.assert_close(out, reference(q, k_cache, v_cache, attn, (None, None, None)))
        warnings = [r.getMessage() for r in caplog.records if "kernels are off" in r.getMessage()]
        assert warnings == [
            "the CPU kernels are off, torch's ops run instead: no C compiler (no-such-cc-here)"
        ]
    finally:
        cpu_kernels._built.cache_clear()


@needs_kernel
def test_build_is_cached(tmp_path: Path) -> None:
    cpu_kernels.build(tmp_path, "env cc")  # $CC may be a command line
    (built,) = tmp_path.glob("cpu_kernels-*.so")
    stamp = built.stat().st_mtime_ns
    cpu_kernels.build(tmp_path, "env cc")
    assert built.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [built]  # no scratch left behind


def test_kernels_go_to_systemds_cache_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/helexa-neuron:/var/cache/other")
    assert cpu_kernels.cache_dir() == Path("/var/cache/helexa-neuron/kernels")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/somewhere")
    assert cpu_kernels.cache_dir() == Path("/tmp/somewhere/cortex/kernels")


@needs_kernel
def test_rms_norm_matches_torch_to_the_last_bit_almost() -> None:
    """Against torch's ops for HF's RMSNorm (fp32 normalisation, rounded, then weighted): equal
    but for the odd last-bit rounding of the sum of squares, on rows of every scale."""
    torch.manual_seed(0)
    for scale in (1e-3, 1.0, 300.0):
        x = (torch.randn(3, 5, 576) * scale).bfloat16()
        weight = torch.randn(576).bfloat16()
        out = cpu_kernels.rms_norm(x, weight, 1e-6)
        expected = weight * rms_normalize(x, 1e-6)
        assert out.shape == x.shape and out.dtype == torch.bfloat16
        differ = (out != expected).float().mean().item()
        assert differ < 1e-3, f"{differ:.2%} of the values differ at scale {scale}"
        torch.testing.assert_close(out, expected, atol=0, rtol=2**-7)
    # A strided view (Qwen3's q/k norm of a slice) is normed as its values.
    fused = torch.randn(4, 12, 128).bfloat16()
    weight = torch.randn(128).bfloat16()
    view = fused[:, :8]
    torch.testing.assert_close(
        cpu_kernels.rms_norm(view, weight, 1e-6),
        cpu_kernels.rms_norm(view.contiguous(), weight, 1e-6),
    )


def test_rms_norm_serves_bf16_rows_of_16s_only(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.ones(24, dtype=torch.bfloat16)
    assert cpu_kernels.rms_norm(torch.ones(2, 24, dtype=torch.bfloat16), weight, 1e-6) is None
    weight = torch.ones(32, dtype=torch.float16)
    assert cpu_kernels.rms_norm(torch.ones(2, 32, dtype=torch.float16), weight, 1e-6) is None
    monkeypatch.setenv("CORTEX_CPU_KERNELS", "off")
    weight = torch.ones(32, dtype=torch.bfloat16)
    assert cpu_kernels.rms_norm(torch.ones(2, 32, dtype=torch.bfloat16), weight, 1e-6) is None
