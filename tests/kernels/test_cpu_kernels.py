"""The CPU's C kernels (cpu_kernels.c) against torch: decode attention against the SDPA path
(on any thread count, its positions split among the threads), RoPE + cache store + attention
against torch's RoPE and store, RMSNorm (alone and after a residual add), SiLU-and-multiply and
the int8 matmul against torch's ops, and a bf16 decoder's decode against its torch-ops decode.

It reads only each sequence's own positions: the paged caches hold NaN everywhere else, so a
read past a context, a window or a table shows. Shapes the kernel does not serve (a head size
that is not a multiple of 16, fp16) must fall back to SDPA, and a host that cannot build it
must keep serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cortex.neuron.models import attention, cpu_kernels
from cortex.neuron.models.attention import store_kv
from cortex.neuron.models.llama import rms_normalize
from cortex.neuron.models.loading import load_model
from cortex.neuron.models.quantized import Int8Linear
from cortex.neuron.models.rope import apply_rope
from tests.decoder.paged import PagedRunner
from tests.support.checkpoints import make_tiny_checkpoint
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


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """The kernels' switches as each test sets them (they are read once, then kept)."""
    cpu_kernels.reread_settings()
    yield
    cpu_kernels.reread_settings()


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
@pytest.mark.parametrize("threads", [1, 3, 5])
@pytest.mark.parametrize("variant", VARIANTS[:2], ids=variant_id)
def test_positions_split_over_any_thread_count(
    monkeypatch: pytest.MonkeyPatch, threads: int, variant
) -> None:
    """Each (sequence, KV head) splits its positions among the threads and the parts merge by
    their maxima: unequal parts, empty ones (a 1-token context on 5 threads), any count."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    shape = Shape([700, 1, 33, 3], [1] * 4, 9, 3, 64, 16)
    q, k_cache, v_cache, attn = case(shape, torch.float32)
    out = cpu_kernels.paged_decode(
        LIB, q, k_cache, v_cache, attn.block_tables, attn.context_lens, *variant
    )
    torch.testing.assert_close(
        out, reference(q, k_cache, v_cache, attn, variant), atol=ATOL[torch.float32], rtol=0
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
    cpu_kernels.reread_settings()
    assert cpu_kernels.kernel_for(q, k_cache) is None


@needs_kernel
def test_large_batches_on_many_threads_take_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel spreads its work over torch's threads as SDPA does: any batch is its."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    big = Shape([30] * 16, [1] * 16, 9, 3, 64, 16)
    q, k_cache, v_cache, attn = case(big, torch.float32)
    assert cpu_kernels.kernel_for(q, k_cache) is LIB
    out = attention.decode_attention(q, k_cache, v_cache, attn, None, None, None)
    torch.testing.assert_close(
        out, reference(q, k_cache, v_cache, attn, (None, None, None)), atol=1e-5, rtol=0
    )


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


@needs_kernel
def test_a_compiler_without_openmp_builds_the_kernels_for_one_thread(tmp_path: Path) -> None:
    """clang without libomp fails on -fopenmp: the kernels are built without it, and the
    threaded ones run their loops on the calling thread."""
    compiler = tmp_path / "cc-without-openmp"
    compiler.write_text('#!/bin/sh\ncase "$*" in *-fopenmp*) echo "no omp.h" >&2; exit 1;; esac\n'
                        'exec cc "$@"\n')  # fmt: skip
    compiler.chmod(0o755)
    lib = cpu_kernels.build(tmp_path / "cache", str(compiler))
    assert lib.cortex_kernels_ready()
    q = torch.randint(-127, 128, (40, 64), dtype=torch.int8)
    scales, x = (torch.rand(40) / 50).bfloat16(), torch.randn(2, 64).bfloat16()
    out = torch.empty(2, 40, dtype=torch.bfloat16)
    args = (x.data_ptr(), 64, q.data_ptr(), scales.data_ptr(), out.data_ptr(), 40, 2, 40, 64, 4)
    assert lib.cortex_int8_matmul(*args) == 0
    torch.testing.assert_close(out, cpu_kernels.int8_matmul(x, q, scales), atol=0, rtol=0)


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
    cpu_kernels.reread_settings()
    weight = torch.ones(32, dtype=torch.bfloat16)
    assert cpu_kernels.rms_norm(torch.ones(2, 32, dtype=torch.bfloat16), weight, 1e-6) is None


def rope_case(shape: Shape, dtype: torch.dtype, rotary: int):
    """A decode step's fused projection rows [B, (H + 2 KVH) D] (strided views qk and v), its
    cos and signed sin [B, 1, rotary], and the step's caches and metadata."""
    _, k_cache, v_cache, attn = case(shape, dtype)
    batch, heads, kv_heads, dim = len(shape.lengths), shape.heads, shape.kv_heads, shape.dim
    projected = torch.randn(batch, (heads + 2 * kv_heads) * dim + 8).to(dtype)[:, 8:]
    qk, v = projected.split([(heads + kv_heads) * dim, kv_heads * dim], dim=-1)
    angles = torch.rand(batch, 1, rotary // 2) * 6.28
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1).to(dtype)
    sin = torch.cat((-angles.sin(), angles.sin()), dim=-1).to(dtype)
    return (
        qk.view(batch, heads + kv_heads, dim),
        v.view(batch, kv_heads, dim),
        cos,
        sin,
        (k_cache, v_cache, attn),
    )


@needs_kernel
@pytest.mark.parametrize("dtype", ATOL, ids=str)
@pytest.mark.parametrize("rotary", ["full", "half"])
@pytest.mark.parametrize("variant", VARIANTS[:3], ids=variant_id)
def test_rope_decode_equals_torchs_rope_and_store_then_the_kernel(
    dtype: torch.dtype, rotary: str, variant
) -> None:
    """RoPE (full, and partial as Phi-4-mini's), the cache store and attention in one call give
    the caches of apply_rope + store_kv bit for bit, and the attention of their queries."""
    shape = Shape([40, 17, 5], [1, 1, 1], 8, 2, 32, 16)
    qk, v, cos, sin, (k_cache, v_cache, attn) = rope_case(
        shape, dtype, shape.dim if rotary == "full" else shape.dim // 2
    )
    k_ours, v_ours = k_cache.clone(), v_cache.clone()
    meta = (attn.slot_mapping, attn.block_tables, attn.context_lens)
    out = cpu_kernels.rope_decode(qk, v, cos, sin, k_ours, v_ours, *meta, *variant)
    q, k = apply_rope(qk, cos, sin).split([shape.heads, shape.kv_heads], dim=1)
    store_kv(k, v, k_cache, v_cache, attn.slot_mapping)
    torch.testing.assert_close(k_ours, k_cache, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_ours, v_cache, atol=0, rtol=0, equal_nan=True)
    expected = cpu_kernels.paged_decode(
        LIB, q, k_cache, v_cache, attn.block_tables, attn.context_lens, *variant
    )
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@needs_kernel
def test_rope_decode_serves_what_the_attention_kernel_serves() -> None:
    qk, v, cos, sin, (k_cache, v_cache, attn) = rope_case(
        Shape([9], [1], 4, 2, 32, 16), torch.float16, 32
    )
    meta = (attn.slot_mapping, attn.block_tables, attn.context_lens)
    assert (
        cpu_kernels.rope_decode(qk, v, cos, sin, k_cache, v_cache, *meta, None, None, None) is None
    )


@needs_kernel
def test_add_rms_norm_is_the_add_then_the_norm() -> None:
    torch.manual_seed(0)
    for scale in (1e-2, 1.0, 100.0):
        x, residual = (torch.randn(2, 3, 96) * scale).bfloat16(), torch.randn(2, 3, 96).bfloat16()
        weight = torch.randn(96).bfloat16()
        out, total = cpu_kernels.add_rms_norm(x, residual, weight, 1e-6)
        assert torch.equal(total, residual + x)
        assert torch.equal(out, cpu_kernels.rms_norm(residual + x, weight, 1e-6))
    assert cpu_kernels.add_rms_norm(x.float(), residual.float(), weight.float(), 1e-6) is None
    assert cpu_kernels.add_rms_norm(x[..., :24], residual[..., :24], weight[:24], 1e-6) is None


@needs_kernel
def test_silu_mul_matches_torch_within_a_rounding() -> None:
    """bf16(silu(gate)) * up, rounded once more: torch's ops within one bf16 step, on gates
    that overflow a naive e^-x (-100) and rows strided as a view."""
    torch.manual_seed(0)
    for scale in (0.1, 3.0, 100.0):
        rows = (torch.randn(5, 2 * 48 + 16) * scale).bfloat16()
        gate_up = rows[:, 16:]
        out = cpu_kernels.silu_mul(gate_up)
        gate, up = gate_up.split(48, dim=-1)
        torch.testing.assert_close(out, F.silu(gate) * up, atol=1e-6, rtol=2**-7)
    assert cpu_kernels.silu_mul(gate_up.float()) is None
    assert cpu_kernels.silu_mul(gate_up[:, : 2 * 40]) is None  # 40 inputs: not whole vectors


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, cpu_kernels.MAX_ROWS])
def test_int8_matmul_matches_the_exact_product(rows: int) -> None:
    """x @ (q * scales).T against the same product in fp64, rounded to bf16: equal but for the
    odd last-bit rounding of a sum taken in another order. Strided rows of x too."""
    torch.manual_seed(rows)
    q = torch.randint(-127, 128, (40, 80), dtype=torch.int8)
    scales = (torch.rand(40) / 50).bfloat16()
    x = torch.randn(rows, 96).bfloat16()[:, 8:88]
    out = cpu_kernels.int8_matmul(x, q, scales)
    exact = x.double() @ q.double().T * scales.double()
    torch.testing.assert_close(out, exact.bfloat16(), atol=0, rtol=2**-7)
    layer = Int8Linear(q, scales, None)
    torch.testing.assert_close(layer(x), out, atol=0, rtol=0)  # the layer takes the kernel


def test_int8_matmul_serves_decode_rows_of_bf16_only() -> None:
    q, scales = torch.ones(16, 32, dtype=torch.int8), torch.ones(16, dtype=torch.bfloat16)
    x = torch.ones(cpu_kernels.MAX_ROWS + 1, 32, dtype=torch.bfloat16)
    assert cpu_kernels.int8_matmul(x, q, scales) is None  # a prefill: torch's kernel
    assert cpu_kernels.int8_matmul(x[:1].float(), q, scales.float()) is None
    assert cpu_kernels.int8_matmul(x[:1, :24], q[:, :24], scales) is None


@needs_kernel
@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral"])
def test_bf16_decode_through_the_kernels_matches_torchs_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    """A bf16 tiny model prefilled, then decoded token by token: the kernels' logits (RoPE and
    attention, add + norm, SiLU) against the same steps on torch's ops (qwen3: q/k norms;
    mistral: a sliding window shorter than the text)."""
    overrides = {"sliding_window": 6} if arch == "mistral" else {}
    path = make_tiny_checkpoint(arch, tmp_path / arch, **overrides)
    ids = [5, 17, 99, 3, 42, 7, 250, 11, 64, 8, 1, 30]

    def logits() -> torch.Tensor:
        runner = PagedRunner(load_model(path, "cpu", "bfloat16"), block_size=4)
        steps = [runner.step([(0, ids[:4])])[-1:]] + [runner.step([(0, [t])]) for t in ids[4:]]
        return torch.cat(steps).float()

    ours = logits()
    monkeypatch.setenv("CORTEX_CPU_KERNELS", "off")
    cpu_kernels.reread_settings()
    theirs = logits()
    assert (ours - theirs).abs().max().item() < 0.05 * theirs.abs().max().item()
