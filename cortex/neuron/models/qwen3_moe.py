"""Qwen3-MoE (`qwen3_moe`): Qwen3's attention with routed mixture-of-experts MLPs.

A sparse layer's router (`mlp.gate`, fp32 logits) picks the top `num_experts_per_tok` of
`num_experts` experts per token, their softmax weights renormalised to sum to 1 when
`norm_topk_prob`. Which layers are sparse: `decoder_sparse_step` and `mlp_only_layers` (the others
keep a dense MLP). The experts' weights are stacked per layer (`experts.gate_up_proj`
[E, 2I, H], `experts.down_proj` [E, H, I]); the checkpoint's per-expert tensors
(`mlp.experts.N.gate_proj.weight`, ...) load into their slices. Tokens are computed grouped by
expert: the (token, expert) assignments are sorted by expert and each active expert runs one
GEMM over its tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cortex.neuron.models.llama import ACTIVATIONS, DecoderLayer, LlamaForCausalLM, RMSNorm
from cortex.neuron.models.model_config import ModelConfig


class Experts(nn.Module):
    """The routed experts of one layer, stacked: gate/up fused per expert."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        experts, hidden, inter = (
            config.num_experts,
            config.hidden_size,
            config.moe_intermediate_size,
        )
        self.intermediate = inter
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, inter))
        self.act = ACTIVATIONS[config.hidden_act]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `e` on x [N, H] -> [N, H]."""
        gate, up = F.linear(x, self.gate_up_proj[e]).split(self.intermediate, dim=-1)  # [N, I]
        return F.linear(self.act(gate) * up, self.down_proj[e])


class SparseMoeBlock(nn.Module):
    """Top-k routing over `Experts`; the output is the routing-weighted sum of k experts."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Experts(config)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> (weights [T, k] in x's dtype, expert ids [T, k])."""
        logits = F.linear(x.float(), self.gate.weight.float())  # [T, E], fp32 for stable choices
        probs = torch.softmax(logits, dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)  # [T, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.route(x)
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return self._dense(x, weights, ids)
        flat = ids.flatten()  # [T*k]: the expert of each (token, slot) assignment
        order = flat.argsort(stable=True)  # assignments grouped by expert
        tokens = order // self.top_k  # [T*k]: the token of each sorted assignment
        counts = torch.bincount(flat, minlength=self.gate.out_features).tolist()  # host sync
        xs = x[tokens]  # [T*k, H]
        out = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n:
                out[start : start + n] = self.experts.expert(e, xs[start : start + n])
                start += n
        out *= weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, tokens, out)  # [T, H]

    def _dense(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, weighted (zero where not chosen): no host sync, static
        shapes, so a CUDA graph can capture it (decode batches are a few tokens)."""
        dense = torch.zeros(x.shape[0], self.gate.out_features, dtype=x.dtype, device=x.device)
        dense.scatter_(1, ids, weights)  # [T, E]
        out = torch.zeros_like(x)
        for e in range(dense.shape[1]):
            out += dense[:, e, None] * self.experts.expert(e, x)
        return out


class Qwen3MoeDecoderLayer(DecoderLayer):
    """Qwen3's layer; its MLP is a `SparseMoeBlock` on sparse layers."""

    def __init__(self, config: ModelConfig, layer: int, norm: type[RMSNorm]) -> None:
        super().__init__(config, layer, norm)
        if config.is_sparse_layer(layer):
            self.mlp = SparseMoeBlock(config)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    layer_class = Qwen3MoeDecoderLayer

    def _slots(self, name: str, data: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Stacked experts load from per-expert tensors: `...experts.N.{gate,up,down}_proj`."""
        module, _, leaf = name.rpartition(".")  # model.layers.N.mlp.experts, gate_up_proj
        if not module.endswith(".experts"):
            yield from super()._slots(name, data)
            return
        parts = ("gate_proj", "up_proj") if leaf == "gate_up_proj" else ("down_proj",)
        for e, weight in enumerate(data):
            for part, rows in zip(parts, weight.chunk(len(parts)), strict=True):
                yield f"{module}.{e}.{part}.weight", rows
