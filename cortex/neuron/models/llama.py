"""The hand-written decoder of the Llama family (llama, mistral, qwen2, qwen3), and the layers
the other families (qwen3_moe.py, gemma.py, phi3.py) build on.

The four differ only in details that ModelConfig carries: qkv bias (qwen2), q/k RMSNorm over
head_dim (qwen3), an explicit head_dim, RoPE scaling (rope.py), sliding windows (mistral, Qwen's
use_sliding_window). Module names follow the HF checkpoints (`model.layers.N.self_attn.*`,
`model.layers.N.mlp.*`, `lm_head`), except that q/k/v and gate/up are fused into `qkv_proj` and
`gate_up_proj` (one GEMM each instead of three and two); `load_weights` maps the HF names into
slices of the fused weights, so loading stays a name lookup and strict.

Tokens come as one flat packed batch (T tokens across all sequences of the step) with their
positions; AttentionMetadata says where they go in the paged KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cortex.errors import ModelLoadFailed
from cortex.neuron.models import cpu_kernels
from cortex.neuron.models.attention import (
    AttentionMetadata,
    KVCache,
    decode_attention,
    prefill_attention,
    store_kv,
    with_decode_inputs,
)
from cortex.neuron.models.dequant import BlockTensor
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.models.quantized import (
    Pending,
    PendingPart,
    RowsOf,
    Weight,
    kernel_parts,
    shares_table,
)
from cortex.neuron.models.rope import Rotary, apply_rope

# MLP gate activations by config name.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
}


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim of a half-precision x, computed in fp32 and
    rounded to x's dtype.

    It runs as one layer_norm over [x, -x]: that row's mean is 0 and its variance mean(x^2), so
    its first half is exactly the RMS-normalised x. torch's CPU rms_norm is a chain of small
    kernels (and wants an fp32 copy of x first); layer_norm is one fused kernel that accumulates
    in fp32 whatever the input dtype: about half the time per call at decode.
    """
    dim = x.shape[-1]
    both = torch.cat((x, -x), dim=-1)  # [..., 2 * dim], mean 0
    return F.layer_norm(both, (2 * dim,), eps=eps)[..., :dim]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, as HF does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # nothing to cast: one fused kernel, weight included
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        if (out := cpu_kernels.rms_norm(x, self.weight, self.eps)) is not None:
            return out
        return self.weight * rms_normalize(x, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): a residual add and the norm after it, one C
        call on the CPU in bf16."""
        if (fused := cpu_kernels.add_rms_norm(x, residual, self.weight, self.eps)) is not None:
            return fused
        total = residual + x
        return self(total), total


class Attention(nn.Module):
    """Self-attention with fused QKV, optional q/k norm, RoPE and the paged KV cache.

    Layer `layer`'s sliding window, score scale and soft-cap come from the config; `norm` is the
    q/k norm's class.
    """

    def __init__(self, config: ModelConfig, layer: int, norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=config.o_proj_bias)
        if config.qk_norm:
            self.q_norm = norm(self.head_dim, config.rms_norm_eps)
            self.k_norm = norm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.window = config.window(layer)
        scalar = config.query_pre_attn_scalar
        self.scale = None if scalar is None else scalar**-0.5  # None: SDPA's 1 / sqrt(head_dim)
        self.softcap = config.attn_logit_softcapping
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionMetadata
    ) -> torch.Tensor:
        tokens = x.shape[0]
        heads = self.num_heads
        qk, v = self.qkv_proj(x).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = qk.view(tokens, heads + self.num_kv_heads, self.head_dim)  # [T, H + KVH, D]
        v = v.view(tokens, self.num_kv_heads, self.head_dim)  # [T, KVH, D]
        if self.qk_norm:
            qk = torch.cat((self.q_norm(qk[:, :heads]), self.k_norm(qk[:, heads:])), dim=1)
        if attn.is_decode and self.k_cache is not None:
            # On the CPU, RoPE, the cache store and attention as one C call, where it serves.
            out = cpu_kernels.rope_decode(
                qk, v, cos, sin, self.k_cache, self.v_cache, attn.slot_mapping,
                attn.block_tables, attn.context_lens, self.window, self.scale, self.softcap,
            )  # fmt: skip
            if out is not None:
                return self.o_proj(out.view(tokens, self.q_size))
        # q and k rotate together: one set of kernels instead of two.
        q, k = apply_rope(qk, cos, sin).split([heads, self.num_kv_heads], dim=1)
        if self.k_cache is not None:
            store_kv(k, v, self.k_cache, self.v_cache, attn.slot_mapping)
        if attn.is_decode:
            assert self.k_cache is not None, "decode needs a bound KV cache"
            out = decode_attention(
                q, self.k_cache, self.v_cache, attn, self.window, self.scale, self.softcap
            )
        else:
            out = prefill_attention(
                q, k, v, self.k_cache, self.v_cache, attn, self.window, self.scale, self.softcap
            )
        return self.o_proj(out.reshape(tokens, self.q_size))  # [T, hidden]


class MLP(nn.Module):
    """Gated MLP with fused gate/up: down(act(gate(x)) * up(x)), act SiLU or GELU-tanh."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(
            config.hidden_size, 2 * self.intermediate, bias=config.mlp_bias
        )
        self.down_proj = nn.Linear(self.intermediate, config.hidden_size, bias=config.mlp_bias)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2I]
        if self.act is F.silu and (h := cpu_kernels.silu_mul(gate_up)) is not None:
            return self.down_proj(h)
        gate, up = gate_up.split(self.intermediate, dim=-1)  # [T, I] each
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention, then the MLP."""

    def __init__(self, config: ModelConfig, layer: int, norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        self.input_layernorm = norm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, norm)
        self.post_attention_layernorm = norm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def fused(self) -> cpu_kernels.DecodeLayer | None:
        """This layer as one C call for CPU decode steps (`cpu_kernels.decode_layer`), where
        the kernels serve it: this exact class and its modules' (a family that changes one
        computes otherwise), SiLU, quantized linear layers the kernels read, a bound cache."""
        attn, mlp = self.self_attn, self.mlp
        norms = [self.input_layernorm, self.post_attention_layernorm]
        if attn.qk_norm:
            norms += [attn.q_norm, attn.k_norm]
        plain = (type(self), type(attn), type(mlp)) == (DecoderLayer, Attention, MLP)
        if not plain or any(type(n) is not RMSNorm for n in norms) or mlp.act is not F.silu:
            return None
        linears = [
            kernel_parts(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        ]
        if attn.k_cache is None or attn.v_cache is None or any(p is None for p in linears):
            return None
        weights = [n.weight for n in norms] + [None] * (4 - len(norms))
        return cpu_kernels.decode_layer(
            tuple(weights), self.input_layernorm.eps, linears,  # type: ignore[arg-type]
            (attn.k_cache, attn.v_cache), attn.num_heads, mlp.intermediate, attn.window,
            attn.scale, attn.softcap,
        )  # fmt: skip

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionMetadata
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, attn)
        h, x = self.post_attention_layernorm.add(h, x)  # x + h, and its norm
        return x + self.mlp(h)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, layer: type[DecoderLayer], norm: type[RMSNorm]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layer(config, i, norm) for i in range(config.num_hidden_layers))
        self.norm = norm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The causal LM: `forward` -> final hidden states, `compute_logits` -> fp32 logits.

    Other families subclass it, choosing their layer and norm classes and which fused weights the
    checkpoint stores in parts.
    """

    layer_class: type[DecoderLayer] = DecoderLayer
    norm_class: type[RMSNorm] = RMSNorm
    # Fused parameter (by its last two name parts) -> the HF tensors stacked in it, in order.
    fused_parts: dict[str, tuple[str, ...]] = {
        "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.layer_class, self.norm_class)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Set by init_rope on the real device; fp32, kept out of `.to(dtype)`. The local one is
        # the sliding layers' own RoPE (gemma3), else None.
        self.rotary: Rotary | None = None
        self.local_rotary: Rotary | None = None
        self.windows = [config.window(i) for i in range(config.num_hidden_layers)]
        self.kv_block_size = 0  # set by bind_kv_cache
        # Per layer, by bind_kv_cache: the layer as one C call for CPU decode steps, or None.
        self.fused: list[cpu_kernels.DecodeLayer | None] = []

    # The final norm's weight tells dtype and device: the embedding and the linears may be
    # quantized (see quantized.py).
    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def init_rope(self) -> None:
        """Compute the RoPE frequencies on the model's device (after materialising)."""
        self.rotary = Rotary(self.config, self.device)
        local = self.config.rope_local_theta
        self.local_rotary = Rotary(self.config, self.device, local) if local is not None else None

    def bind_kv_cache(self, cache: KVCache | None) -> None:
        """Point every layer at its K/V block pool (None unbinds)."""
        self.kv_block_size = cache.block_size if cache is not None else 0
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.k_cache = cache.k[i] if cache is not None else None
            layer.self_attn.v_cache = cache.v[i] if cache is not None else None
        self.fused = [layer.fused() for layer in self.model.layers] if cache is not None else []

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions [T] (flat packed batch) -> final hidden states [T, hidden]."""
        assert self.rotary is not None, "init_rope() first"
        rope = self.rotary.cos_sin(positions, self.dtype)  # cos, sin [T, 1, R] each
        local = self.local_rotary.cos_sin(positions, self.dtype) if self.local_rotary else rope
        x = self.embed(input_ids)  # [T, hidden]
        fused = self._fused_step(x, rope, attn)
        if attn.is_decode and (fused is None or any(f is None for f in self.fused)):
            # The block index and key masks, once for all the layers that run as modules.
            attn = with_decode_inputs(attn, self.kv_block_size, self.windows, self.dtype)
        for i, layer in enumerate(self.model.layers):
            if fused is not None and self.fused[i] is not None:
                cpu_kernels.run_layer(self.fused[i], fused[0], x)  # type: ignore[arg-type]
                continue
            cos, sin = local if layer.self_attn.window is not None else rope
            x = layer(x, cos, sin, attn)
        return self.model.norm(x)

    def _fused_step(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: AttentionMetadata
    ) -> cpu_kernels.FusedStep | None:
        """The C struct a decode step's fused layers share (and what it points into), or None
        where no layer is fused or the kernels do not take this step."""
        first = next((f for f in self.fused if f is not None), None)
        if first is None or not attn.is_decode or self.local_rotary is not None:
            return None
        return cpu_kernels.decode_step(
            first, x, *rope, attn.slot_mapping, attn.block_tables, attn.context_lens
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> embeddings [T, hidden]."""
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in fp32."""
        return self.lm_head(hidden).float()

    def weight_slots(self) -> dict[str, list[torch.Tensor | PendingPart]]:
        """HF tensor name -> where it loads, for every expected tensor: the parameter (or the
        slice of it), or a part of a layer assembled at load (`Pending`). A tied embedding also
        feeds a pending lm_head."""
        slots: dict[str, list[torch.Tensor | PendingPart]] = {}
        for name, param in self.named_parameters(remove_duplicate=True):
            for hf, target in self._slots(name, param.data):
                slots[hf] = [target]
        for module_name, module in self.named_modules():
            if not isinstance(module, Pending):
                continue
            for hf, rows in self._slots(f"{module_name}.weight", module.meta_weight):
                module.expect(hf)
                source = hf
                if hf == "lm_head.weight" and self.config.tie_word_embeddings:
                    source = "model.embed_tokens.weight"
                part = PendingPart(module_name, module, hf, tuple(rows.shape))
                slots.setdefault(source, []).append(part)
        return slots

    def _slots(self, name: str, data: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, destination) pairs of one parameter: itself, or its fused parts' rows."""
        module, _, kind = name.rpartition(".")  # model.layers.N.self_attn.qkv_proj, weight
        layer, _, leaf = module.rpartition(".")  # model.layers.N.self_attn, qkv_proj
        parts = self.fused_parts.get(f"{layer.rpartition('.')[2]}.{leaf}")
        if parts is None:
            yield name, data
            return
        for part, rows in zip(parts, data.split(self._fused_sizes(leaf)), strict=True):
            yield f"{layer}.{part}.{kind}", rows

    def _fused_sizes(self, leaf: str) -> list[int]:
        c = self.config
        if leaf == "qkv_proj":
            kv = c.num_key_value_heads * c.head_dim
            return [c.num_attention_heads * c.head_dim, kv, kv]
        return [c.intermediate_size, c.intermediate_size]

    def load_weights(self, weights: Iterable[tuple[str, Weight]]) -> None:
        """Copy (HF name, tensor) pairs into the parameters; strict about missing/unused names."""
        slots = self.weight_slots()
        missing = set(slots)
        unused: list[str] = []
        for name, tensor in weights:
            targets = slots.get(name)
            if targets is None:
                # Tied checkpoints sometimes still carry lm_head; old ones carry RoPE buffers.
                tied_head = name == "lm_head.weight" and self.config.tie_word_embeddings
                if not (tied_head or name.endswith("rotary_emb.inv_freq")):
                    unused.append(name)
                continue
            for target in targets:
                self._load_one(name, tensor, target)
            missing.discard(name)
        if missing or unused:
            parts = []
            if missing:
                parts.append("missing tensors: " + ", ".join(sorted(missing)))
            if unused:
                parts.append("unused tensors: " + ", ".join(sorted(unused)))
            raise ModelLoadFailed("checkpoint does not match the model: " + "; ".join(parts))
        if self.config.tie_word_embeddings and shares_table(self.lm_head):
            self.model.embed_tokens = RowsOf(self.lm_head)  # one copy of a quantized table

    def _load_one(self, name: str, tensor: Weight, target: torch.Tensor | PendingPart) -> None:
        """Copy one checkpoint tensor into its slot, or hand it to its pending layer (which is
        built and put in place once its last part is in)."""
        if tuple(tensor.shape) != tuple(target.shape):
            raise ModelLoadFailed(
                f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
            )
        if isinstance(target, PendingPart):
            if target.layer.fill(target.part, tensor):
                self.set_submodule(target.module, target.layer.build(self.device, self.dtype))
            return
        if isinstance(tensor, BlockTensor):  # a block-quantized tensor no quantized layer takes
            tensor = tensor.dequantize(target.dtype)
        with torch.no_grad():
            target.copy_(tensor)
