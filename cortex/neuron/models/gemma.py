"""Gemma 2 (`gemma2`) and Gemma 3 text (`gemma3_text`): the Llama layout with Gemma's details.

- embeddings scaled by sqrt(hidden_size) (rounded to the model dtype, as transformers does);
- RMSNorm scaling by (1 + weight), computed in fp32;
- four norms per layer: the attention and MLP outputs are normalised before their residual add;
- a GELU-tanh gate; attention scores scaled by `query_pre_attn_scalar ** -0.5`;
- gemma2: tanh soft-capping of attention scores and of the final logits;
- gemma3: q/k norms, and a second RoPE (`rope_local_base_freq`) for the sliding layers;
- interleaved sliding-window and global layers (ModelConfig.layer_windows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cortex.neuron.models.attention import AttentionMetadata
from cortex.neuron.models.llama import DecoderLayer, LlamaForCausalLM, RMSNorm
from cortex.neuron.models.model_config import ModelConfig


class GemmaRMSNorm(RMSNorm):
    """RMSNorm times (1 + weight), all in fp32 and cast back once (the weight is zero-centred)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


class GemmaDecoderLayer(DecoderLayer):
    """Sandwich norms: each sub-block's input and output are normalised."""

    def __init__(self, config: ModelConfig, layer: int, norm: type[RMSNorm]) -> None:
        super().__init__(config, layer, norm)
        self.pre_feedforward_layernorm = norm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = norm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionMetadata
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, attn)
        x = x + self.post_attention_layernorm(h)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(h)


class GemmaForCausalLM(LlamaForCausalLM):
    layer_class = GemmaDecoderLayer
    norm_class = GemmaRMSNorm

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.embed_scale = config.hidden_size**0.5

    def init_rope(self) -> None:
        super().init_rope()
        # transformers multiplies by the scale as a tensor of the model dtype: round it alike.
        self.embed_scale = torch.tensor(self.config.hidden_size**0.5, dtype=self.dtype).item()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids) * self.embed_scale

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)  # [N, vocab] fp32
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
