"""The torch dequantizer equals gguf's numpy reference bit for bit, for every supported type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from cortex.errors import UnsupportedQuantization
from cortex.neuron.models.dequant import SUPPORTED_TYPES, dequantize

Q = GGMLQuantizationType
# Types gguf can quantize: random floats go through its quantizer.
QUANTIZABLE = [Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]
# K-quants: gguf only dequantizes them, so blocks are random bytes with finite fp16 scales at
# these byte offsets of each block.
K_SCALE_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def random_floats(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    data = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 3.0)
    data[0, :] = 0.0  # an all-zero block: the quantizers' divide-by-zero path
    return data


def random_k_blocks(rng: np.random.Generator, qtype: GGMLQuantizationType, rows: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * 2
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[qtype]:
        scales = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, 2 * type_size)


def assert_bit_equal(ours: torch.Tensor, reference: np.ndarray) -> None:
    assert ours.dtype == torch.float32
    assert tuple(ours.shape) == reference.shape
    np.testing.assert_array_equal(ours.numpy().view(np.uint32), reference.view(np.uint32))


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_blocks_match_reference(qtype: GGMLQuantizationType) -> None:
    rng = np.random.default_rng(int(qtype))
    floats = random_floats(rng, 48, 256)
    raw = quants.quantize(floats, qtype)
    ours = dequantize(raw, qtype, (48, 256))
    assert_bit_equal(ours, quants.dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", list(K_SCALE_OFFSETS), ids=lambda t: t.name)
def test_k_quant_blocks_match_reference(qtype: GGMLQuantizationType) -> None:
    rng = np.random.default_rng(int(qtype))
    raw = random_k_blocks(rng, qtype, 40)
    ours = dequantize(raw, qtype, (40, 512))
    assert_bit_equal(ours, quants.dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16], ids=lambda t: t.name)
def test_float_types_match_reference(qtype: GGMLQuantizationType) -> None:
    floats = random_floats(np.random.default_rng(1), 8, 64)
    raw = quants.quantize(floats, qtype)
    ours = dequantize(raw, qtype, (8, 64))
    assert_bit_equal(ours, np.asarray(quants.dequantize(raw, qtype), dtype=np.float32))


def test_chunked_dequantization_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors larger than one chunk come out the same as in one piece."""
    from cortex.neuron.models import dequant

    raw = random_k_blocks(np.random.default_rng(7), Q.Q6_K, 10)
    whole = dequantize(raw, Q.Q6_K, (10, 512))
    monkeypatch.setattr(dequant, "CHUNK_BLOCKS", 3)
    assert torch.equal(dequantize(raw, Q.Q6_K, (10, 512)), whole)


def test_result_is_a_copy_and_casts() -> None:
    raw = np.arange(64, dtype=np.float32).reshape(2, 32)
    ours = dequantize(raw, Q.F32, (2, 32))
    ours += 1  # must not write through to the source bytes
    assert raw[0, 0] == 0.0
    assert dequantize(raw, Q.F32, (2, 32), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_every_issue_type_is_supported() -> None:
    names = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}
    assert {t.name for t in SUPPORTED_TYPES} == names


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.IQ4_NL], ids=lambda t: t.name)
def test_other_types_raise_naming_tensor_and_type(qtype: GGMLQuantizationType) -> None:
    with pytest.raises(UnsupportedQuantization) as err:
        dequantize(np.zeros(256, np.uint8), qtype, (1, 256), name="blk.3.ffn_down.weight")
    assert "blk.3.ffn_down.weight" in err.value.message
    assert qtype.name in err.value.message
    assert err.value.status == 422
