"""Quantized layers against their dequantized reference, and quantizing safetensors at load.

Tolerances (relative Frobenius error of a layer's output against x @ W.T in fp32, W the exact
dequantized weight):
- Q4_0, Q4_1, Q4_K -> int4 groups: the quants are kept, only scale and zero round (to fp16 in
  cortex's CPU layout, to the compute dtype in torch's): 1e-5 computing in fp32, 1e-2 in bf16
  (bf16 activations and scales). Up to INT4_ROWS rows on the CPU's C kernel are quantized to
  int8 per group of 32 (as llama.cpp's matmuls do): 1e-2 in fp32 too.
- Q8_0, Q5_0, Q5_1, Q5_K, Q6_K -> per-channel int8 requantized from the exact values: each
  weight moves by at most half a step (max |row| / 254): 2e-2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants
from torch import nn

from cortex.neuron.models import cpu_kernels, quantized
from cortex.neuron.models.architectures import build_model
from cortex.neuron.models.dequant import BlockTensor, dequantize
from cortex.neuron.models.loading import load_model, model_weight_bytes
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.models.quantized import (
    BlockEmbedding,
    ConcatLinear,
    Int4Linear,
    Int8Linear,
    Pending,
    RowsOf,
    _int4_row_map,
    planned_bytes,
    resident_bytes,
)
from tests.gguf.test_tiny_models import prefill_logits
from tests.support.checkpoints import make_tiny_checkpoint

Q = GGMLQuantizationType
INT4 = [Q.Q4_0, Q.Q4_1, Q.Q4_K]
INT8 = [Q.Q8_0, Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q6_K]
K_SCALE_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
ROWS, COLS = 48, 512
FIXTURES = Path(__file__).parent.parent / "fixtures"


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


@pytest.fixture(params=["cortex", "torch"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Int4Linear's CPU layout: cortex's (the C kernels'), or torch's (the kernels off)."""
    if request.param == "torch":
        monkeypatch.setenv("CORTEX_CPU_KERNELS", "off")
    cpu_kernels.reread_settings()
    if request.param == "cortex" and not cpu_kernels.int4_ready():
        pytest.skip("no int4 C kernel on this host (no compiler or no AVX512-VNNI)")
    yield request.param
    monkeypatch.undo()
    cpu_kernels.reread_settings()


def int4_tolerance(qtype: GGMLQuantizationType, dtype, layer: Int4Linear, rows: int) -> float:
    """What an int4 layer's output may be off by (see the module docstring)."""
    if dtype == torch.bfloat16 or (layer.cortex and rows <= cpu_kernels.INT4_ROWS):
        return 1e-2
    if layer.cortex and qtype == Q.Q4_K:  # its scales (6 bits x an fp16) round to fp16
        return 1e-3
    return 1e-5


@pytest.mark.parametrize("qtype", INT4 + INT8, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gguf_type_layer_matches_dequantized(
    qtype: GGMLQuantizationType, dtype, layout: str
) -> None:
    weight = blocks(qtype)
    layer = built([weight], dtype, bias=True)
    assert isinstance(layer, Int4Linear if qtype in INT4 else Int8Linear)
    assert qtype not in INT4 or layer.cortex == (layout == "cortex")
    reference = weight.dequantize()  # [N, K] exact
    for rows in (1, 5, 20, cpu_kernels.INT4_ROWS + 8):  # decode steps' rows, prefills' rows
        x = torch.randn(rows, COLS)
        expected = x.to(dtype).float() @ reference.T + layer.bias.float()
        out = layer(x.to(dtype))
        assert out.dtype == dtype and out.shape == (rows, ROWS)
        tolerance = int4_tolerance(qtype, dtype, layer, rows) if qtype in INT4 else 2e-2
        assert relative_error(out, expected) < tolerance, rows
    # The weight stays narrow: int4 is half a byte per value (plus a scale and a zero per 32),
    # int8 one byte.
    assert resident_bytes(layer) < reference.numel() * (0.8 if qtype in INT4 else 1.2)


def test_fused_parts_of_mixed_types_keep_their_own_kernels() -> None:
    """q, k (Q4_K) and v (Q6_K) fused in one layer, as in a Q4_K_M file: the Q4 run stays
    int4 and v goes int8, outputs concatenated; parts of one kind make one layer."""
    q, k, v = blocks(Q.Q4_K, 32, seed=1), blocks(Q.Q4_K, 16, seed=3), blocks(Q.Q6_K, 16, seed=2)
    layer = built([q, k, v], torch.float32, bias=True)
    assert isinstance(layer, ConcatLinear)
    assert [type(part) for part in layer.layers] == [Int4Linear, Int8Linear]
    assert layer.out_features == 64
    x = torch.randn(3, COLS)
    reference = torch.cat([q.dequantize(), k.dequantize(), v.dequantize()])
    bias = torch.cat([part.bias for part in layer.layers])
    assert relative_error(layer(x), x @ reference.T + bias) < 2e-2
    # What planning said it would hold (the bias apart), and less than one int8 layer.
    with torch.device("meta"):
        pending = Pending(nn.Linear(COLS, 64), None)
    kinds = [(Q.Q4_K, 32), (Q.Q4_K, 16), (Q.Q6_K, 16)]
    planned = pending.planned_bytes(kinds, torch.device("cpu"), torch.float32)
    assert resident_bytes(layer) == planned + bias.numel() * 4 < reference.numel() + 64 * 4
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(64, 576), (256, 1024), (192, 64)], ids=str)
def test_int4_rows_read_back_the_packed_weight(shape: tuple[int, int], dtype, layout: str) -> None:
    """`rows` finds values in the packed layout: they are the weight the matmul multiplies by
    (read back through the prefill's matmul with an identity input)."""
    layer = Int4Linear.quantize(torch.randn(shape), None, dtype)
    assert layer.can_read_rows()
    weight = layer(torch.eye(shape[1], dtype=dtype)).T.float()  # [N, K] as the kernel sees it
    ids = torch.tensor([0, shape[0] - 1, 5, 5, shape[0] // 2 + 3])
    assert torch.allclose(layer.rows(ids).float(), weight[ids], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layout", ["cortex"], indirect=True)
def test_cortex_layout_serves_with_the_kernels_switched_off(
    layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prefill's matmul dequantizes the weight in slices (here of 16 rows: six), and a layer
    loaded in cortex's layout still multiplies once the kernels are off (torch's ops
    dequantize it): the same values as the C dequantization gives."""
    layer = Int4Linear.quantize(torch.randn(96, 256), None, torch.bfloat16)
    x = torch.randn(cpu_kernels.INT4_ROWS + 8, 256).bfloat16()
    expected = layer(x)  # one slice
    monkeypatch.setattr(quantized, "DEQUANTIZED_BYTES", 16 * 256 * 2)
    torch.testing.assert_close(layer(x), expected)
    expected = layer(x)
    monkeypatch.setenv("CORTEX_CPU_KERNELS", "off")
    cpu_kernels.reread_settings()
    assert cpu_kernels.int4_dequantize(layer.packed, *layer.scales_and_mins, torch.bfloat16) is None
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["torch"], indirect=True)
def test_int4_rows_of_a_partial_last_block_are_not_read(layout: str) -> None:
    """In torch's layout, rows past the last whole block of the packing may be laid out
    otherwise: such a weight says it cannot be read (a tied embedding then keeps its own
    table). cortex's layout is plain rows."""
    found = _int4_row_map(128)
    assert found is not None
    block = found[0]
    whole = Int4Linear.quantize(torch.randn(2 * block, 128), None, torch.bfloat16)
    partial = Int4Linear.quantize(torch.randn(block + 16, 128), None, torch.bfloat16)
    assert whole.can_read_rows() and not partial.can_read_rows()


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_tied_quantized_table_is_held_once(tmp_path: Path, scheme: str) -> None:
    """A tied embedding reads its rows from the quantized lm_head: one copy, as llama.cpp
    holds it, counted once by the planned size; lookups equal the head's rows."""
    hf = make_tiny_checkpoint("llama", tmp_path / "hf", vocab_size=512, tie_word_embeddings=True)
    model = load_model(hf, "cpu", "bfloat16", quantize=scheme)
    assert isinstance(model.model.embed_tokens, RowsOf)
    assert resident_bytes(model) == model_weight_bytes(hf, "bfloat16", scheme)
    head = model.lm_head
    ids = torch.tensor([[1, 511], [7, 7]])
    rows = model.model.embed_tokens(ids)  # [2, 2, hidden]
    identity = torch.eye(head.in_features, dtype=torch.bfloat16)
    assert torch.equal(rows[1, 0], head(identity).T[7])  # the weight the head multiplies by
    exact = load_model(hf, "cpu", "bfloat16").model.embed_tokens(ids)
    assert relative_error(rows, exact.float()) < (0.02 if scheme == "int8" else 0.2)


# llama.cpp's Q4_K_M: Q6_K for the output and, in the layers `use_more_bits` picks, for attn_v
# and ffn_down; Q4_K for every other matrix (token_embd included).
def _q4_k_m(name: str, layers: int) -> GGMLQuantizationType | None:
    if name == "lm_head.weight":
        return Q.Q6_K
    if "norm" in name:
        return None
    if name == "model.embed_tokens.weight":
        return Q.Q4_K
    i = int(name.split(".")[2])
    more_bits = i < layers // 8 or i >= 7 * layers // 8 or (i - layers // 8) % 3 == 2
    return Q.Q6_K if more_bits and name.endswith(("v_proj.weight", "down_proj.weight")) else Q.Q4_K


QWEN3_8B = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}  # fmt: skip


@pytest.mark.parametrize(
    ("fixture", "overrides"),
    [("qwen3", {}), ("llama3.2", {}), ("qwen3", QWEN3_8B)],
    ids=["qwen3-0.6b-tied", "llama3.2-1b-tied", "qwen3-8b"],
)
def test_q4_k_m_resident_size_is_within_15_percent_of_the_file(fixture: str, overrides) -> None:
    """The size a Q4_K_M file's weights take loaded on CPU (what /models, /health and the
    gateway's placement use), against the bytes its tensors take in the file, at real shapes
    (planned on the meta device: nothing is allocated)."""
    config = json.loads((FIXTURES / fixture / "config.json").read_text())
    config = ModelConfig.from_dict({**config, **overrides})
    model = build_model(config, "meta", torch.bfloat16, blocks=True)
    layers = config.num_hidden_layers
    kinds, file_bytes = {}, 0
    for name, targets in model.weight_slots().items():
        kinds[name] = kind = _q4_k_m(name, layers)
        count = math.prod(targets[0].shape)
        block, type_size = GGML_QUANT_SIZES[kind] if kind is not None else (1, 4)
        file_bytes += count // block * type_size
    planned = planned_bytes(model, kinds, torch.device("cpu"))
    assert file_bytes < planned < 1.15 * file_bytes, planned / file_bytes


def test_quantize_is_checked(tmp_path: Path) -> None:
    from cortex.errors import ModelLoadFailed

    hf = make_tiny_checkpoint("llama", tmp_path / "hf")
    with pytest.raises(ModelLoadFailed, match="quantize"):
        load_model(hf, "cpu", quantize="int3")
