"""Phi-3, Phi-3.5 and Phi-4-mini (`phi3`): Llama's decoder with q/k/v and gate/up stored fused.

The checkpoint already holds `self_attn.qkv_proj` and `mlp.gate_up_proj` (gate rows first), the
layout the decoder runs, so nothing is split at load. LongRoPE ("su") scaling with its short and
long factors and partial rotary embeddings (Phi-4-mini) live in rope.py; Phi-3-mini's sliding
window in the config.
"""

from __future__ import annotations

from cortex.neuron.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    fused_parts: dict[str, tuple[str, ...]] = {}
