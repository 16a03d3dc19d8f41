"""GGUF files of the new architectures, written the way llama.cpp's converter writes them
(`tests/gguf/writer.py`: qwen3moe's stacked experts, Gemma's norms plus 1, Phi-3's fused tensors
and LongRoPE factor tensors, Q8_0/F16/F32 tensors), load with the config of their safetensors twin
and give its logits once the twin's weights are replaced by gguf's own dequantization.

Gemma's attention scale and Gemma 3's local RoPE base are not in GGUF metadata (llama.cpp derives
them), so those twins use the values llama.cpp assumes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cortex.neuron.models.gguf import gguf_config, gguf_info
from cortex.neuron.models.loading import load_model
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.models.rope import Rotary
from tests.architectures.tiny import ARCHS, RECIPES, make_checkpoint
from tests.decoder.paged import PagedRunner
from tests.gguf.writer import write_gguf, write_reference

IDS = [5, 17, 99, 300, 42, 7, 123, 64, 31, 448, 11, 3, 200, 201]
# What llama.cpp assumes where GGUF has no key: query_pre_attn_scalar = head_dim, and Gemma 3's
# local RoPE base 10000.
LLAMA_CPP_DEFAULTS = {
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {
        "query_pre_attn_scalar": 16,
        "rope_parameters": {
            **RECIPES["gemma3_text"][1]["rope_parameters"],
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
}
SAME = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings",
    "qk_norm", "layer_windows", "hidden_act", "query_pre_attn_scalar", "attn_logit_softcapping",
    "final_logit_softcapping", "rope_local_theta", "partial_rotary_factor", "num_experts",
    "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "mlp_only_layers",
)  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_matches_its_safetensors_twin(tmp_path: Path, arch: str) -> None:
    hf_dir = make_checkpoint(arch, tmp_path / "hf", seed=4, **LLAMA_CPP_DEFAULTS.get(arch, {}))
    gguf = write_gguf(hf_dir, tmp_path / "gguf" / f"tiny-{arch}.Q8_0.gguf")
    reference = write_reference(hf_dir, tmp_path / "reference")

    ours, theirs = gguf_config(gguf), ModelConfig.from_dir(hf_dir)
    for key in SAME:
        assert getattr(ours, key) == pytest.approx(getattr(theirs, key)), key
    for positions in (torch.arange(60), torch.arange(60, 120)):  # phi3: short, then long factors
        for a, b in zip(
            Rotary(ours, "cpu").cos_sin(positions, torch.float32),
            Rotary(theirs, "cpu").cos_sin(positions, torch.float32),
            strict=True,
        ):
            torch.testing.assert_close(a, b)
    assert gguf_info(gguf)["arch"] == arch

    got = PagedRunner(load_model(gguf, "cpu", torch.float32), block_size=4).step([(0, IDS)])
    want = PagedRunner(load_model(reference, "cpu", torch.float32), block_size=4).step([(0, IDS)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
