"""The CUDA paths of the quantized layers (tinygemm int4, int8) against the dequantized
reference; skipped without CUDA. Tolerances as in test_layers.py for bf16."""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType

from cortex.neuron.models.dequant import BlockTensor
from cortex.neuron.models.quantized import Int4Linear, Int8Linear
from tests.quantized.test_layers import COLS, blocks, built_on, relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
Q = GGMLQuantizationType


@pytest.mark.parametrize(
    ("qtype", "kind", "tolerance"),
    [(Q.Q4_0, Int4Linear, 1e-2), (Q.Q4_K, Int4Linear, 1e-2), (Q.Q6_K, Int8Linear, 2e-2)],
    ids=lambda v: getattr(v, "name", None) or getattr(v, "__name__", str(v)),
)
def test_cuda_layer_matches_dequantized(qtype, kind, tolerance) -> None:
    host = blocks(qtype)
    weight = BlockTensor(host.data.cuda(), qtype)
    layer = built_on([weight], torch.bfloat16, torch.device("cuda"))
    assert isinstance(layer, kind)
    x = torch.randn(5, COLS, device="cuda")
    expected = x.bfloat16().float() @ host.dequantize().cuda().T
    assert relative_error(layer(x.bfloat16()), expected) < tolerance
