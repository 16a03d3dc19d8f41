"""Quantized layers against their dequantized reference, and quantizing safetensors at load.

Tolerances (relative Frobenius error of a layer's output against x @ W.T in fp32, W the exact
dequantized weight):
- Q4_0, Q4_1, Q4_K -> int4 groups: the quants are kept, only scale and zero round to the
  compute dtype: 1e-5 computing in fp32, 1e-2 in bf16 (bf16 activations and scales).
- Q8_0, Q5_0, Q5_1, Q5_K, Q6_K -> per-channel int8 requantized from the exact values: each
  weight moves by at most half a step (max |row| / 254): 2e-2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants
from torch import nn

from cortex.neuron.models.dequant import BlockTensor, dequantize
from cortex.neuron.models.loading import load_model, model_weight_bytes
from cortex.neuron.models.quantized import (
    BlockEmbedding,
    Int4Linear,
    Int8Linear,
    Pending,
    resident_bytes,
)
from tests.gguf.test_tiny_models import prefill_logits
from tests.support.checkpoints import make_tiny_checkpoint

Q = GGMLQuantizationType
INT4 = [Q.Q4_0, Q.Q4_1, Q.Q4_K]
INT8 = [Q.Q8_0, Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q6_K]
K_SCALE_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
ROWS, COLS = 48, 512


def blocks(qtype: GGMLQuantizationType, rows: int = ROWS, seed: int = 0) -> BlockTensor:
    """A random [rows, COLS] tensor of `qtype`: gguf's quantizer where it has one, else random
    block bytes with small finite fp16 scales (the K-quants)."""
    rng = np.random.default_rng(seed + int(qtype))
    if qtype in K_SCALE_OFFSETS:
        _, type_size = GGML_QUANT_SIZES[qtype]
        n = rows * COLS // 256
        raw = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
        for offset in K_SCALE_OFFSETS[qtype]:
            scales = (rng.standard_normal(n) * 0.01).astype(np.float16)
            raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n, 2)
    else:
        raw = quants.quantize(rng.standard_normal((rows, COLS)).astype(np.float32), qtype)
    return BlockTensor.from_raw(raw, qtype, (rows, COLS), "cpu")


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected).norm() / expected.norm())


def built(parts: list[BlockTensor], dtype: torch.dtype, bias: bool = False) -> nn.Module:
    return built_on(parts, dtype, torch.device("cpu"), bias)


def built_on(
    parts: list[BlockTensor], dtype: torch.dtype, device: torch.device, bias: bool = False
) -> nn.Module:
    """The layer a `Pending` linear builds on `device` from these parts (stacked by rows)."""
    rows = sum(p.shape[0] for p in parts)
    with torch.device("meta"):
        pending = Pending(nn.Linear(COLS, rows, bias=bias), None)
    if bias:
        pending.bias = nn.Parameter(torch.randn(rows, device=device).to(dtype), requires_grad=False)
    for i in range(len(parts)):
        pending.expect(f"part{i}")
    assert [pending.fill(f"part{i}", p) for i, p in enumerate(parts)][-1]
    return pending.build(device, dtype)


@pytest.mark.parametrize("qtype", INT4 + INT8, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gguf_type_layer_matches_dequantized(qtype: GGMLQuantizationType, dtype) -> None:
    weight = blocks(qtype)
    layer = built([weight], dtype, bias=True)
    assert isinstance(layer, Int4Linear if qtype in INT4 else Int8Linear)
    reference = weight.dequantize()  # [N, K] exact
    x = torch.randn(5, COLS)
    expected = x.to(dtype).float() @ reference.T + layer.bias.float()
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == (5, ROWS)
    exact_int4 = qtype in INT4 and dtype == torch.float32
    tolerance = 1e-5 if exact_int4 else (1e-2 if qtype in INT4 else 2e-2)
    assert relative_error(out, expected) < tolerance
    # The weight stays narrow: int4 is half a byte per value (plus a scale and a zero per 32),
    # int8 one byte.
    assert resident_bytes(layer) < reference.numel() * (0.8 if qtype in INT4 else 1.2)


def test_fused_parts_of_mixed_types_share_the_widest_kernel() -> None:
    """q (Q4_K) and v (Q6_K) fused in one layer: int8 holds both; all Q4 parts stay int4."""
    q, v = blocks(Q.Q4_K, 32, seed=1), blocks(Q.Q6_K, 16, seed=2)
    layer = built([q, v], torch.float32)
    assert isinstance(layer, Int8Linear)
    x = torch.randn(3, COLS)
    expected = x @ torch.cat([q.dequantize(), v.dequantize()]).T
    assert relative_error(layer(x), expected) < 2e-2
    both = built([q, blocks(Q.Q4_0, 16)], torch.float32)
    assert isinstance(both, Int4Linear)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_block_embedding_equals_dequantized_rows(qtype: GGMLQuantizationType) -> None:
    table = blocks(qtype)
    embedding = BlockEmbedding(table, torch.float32)
    ids = torch.tensor([[0, 7], [47, 7]])
    expected = dequantize(table.data.numpy(), qtype, (ROWS, COLS))[ids]
    assert torch.equal(embedding(ids), expected)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_safetensors_quantized_at_load(tmp_path: Path, scheme: str) -> None:
    hf = make_tiny_checkpoint("qwen3", tmp_path / "hf", vocab_size=512, hidden_size=128)
    full = load_model(hf, "cpu", "float32")
    model = load_model(hf, "cpu", "float32", quantize=scheme)
    kind = Int4Linear if scheme == "int4" else Int8Linear
    layer = model.model.layers[0]
    for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(linear, kind)
    assert isinstance(model.lm_head, kind)
    assert isinstance(model.model.embed_tokens, nn.Embedding)  # lookups stay exact
    assert resident_bytes(model) == model_weight_bytes(hf, "float32", scheme)
    layers, full_layers = model.model.layers, full.model.layers  # fp32: 4 bytes a weight
    assert resident_bytes(layers) < resident_bytes(full_layers) * (
        0.3 if scheme == "int8" else 0.25
    )
    ids = list(range(3, 40))
    expected = prefill_logits(full, ids)
    # Gaussian random weights are int4's worst case (a 32-wide group's range is ~4.5 sigma, so
    # a step is 0.3 sigma), and errors compound over the 7 matmuls; real weights: the SmolLM2
    # quality test.
    tolerance = 0.04 if scheme == "int8" else 0.35
    assert relative_error(prefill_logits(model, ids), expected) < tolerance


def test_quantize_is_checked(tmp_path: Path) -> None:
    from cortex.errors import ModelLoadFailed

    hf = make_tiny_checkpoint("llama", tmp_path / "hf")
    with pytest.raises(ModelLoadFailed, match="quantize"):
        load_model(hf, "cpu", quantize="int3")
