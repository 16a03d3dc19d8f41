"""`config.json` of a Hugging Face model directory -> `ModelConfig`.

One dataclass covers every architecture the hand-written decoders run. Unknown keys are ignored;
an unknown `model_type` raises `UnsupportedArchitecture`. Both spellings of RoPE settings are
read: the classic `rope_theta` + `rope_scaling` keys and the `rope_parameters` dict that
transformers 5 writes (per layer type for Gemma 3). Sliding windows become one entry per layer
(`layer_windows`), from `layer_types`, Gemma's `sliding_window_pattern` or Qwen's
`use_sliding_window` + `max_window_layers`. This module itself needs no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.errors import ModelLoadFailed, UnsupportedArchitecture

# model_type values the decoders run (architectures.py maps each to its class).
SUPPORTED_ARCHITECTURES: set[str] = {
    "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text", "phi3",
}  # fmt: skip
GEMMA_ARCHITECTURES = {"gemma2", "gemma3_text"}

# RoPE variants rope.py implements.
SUPPORTED_ROPE_TYPES = {"default", "linear", "llama3", "yarn", "dynamic", "longrope"}
# MLP activations by config name (`hidden_act`, Gemma's `hidden_activation`).
SUPPORTED_ACTIVATIONS = {"silu", "gelu_pytorch_tanh"}
# Gemma 3's default: every sixth layer is global, the others slide.
GEMMA3_PATTERN = 6


@dataclass
class ModelConfig:
    """The architecture hyperparameters the decoder needs, normalised across model types."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    torch_dtype: str = "float32"
    # Beyond the shared interface: details that differ between the four architectures.
    o_proj_bias: bool = False  # llama's attention_bias also biases o_proj; qwen2's does not
    mlp_bias: bool = False
    qk_norm: bool = False  # qwen3, gemma3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None  # a sliding layer's token sees the last sliding_window keys
    # One entry per layer: its window (sliding_window) or None (global attention).
    layer_windows: list[int | None] = field(default_factory=list)
    hidden_act: str = "silu"  # the MLP gate's activation
    # Gemma: attention scale query_pre_attn_scalar ** -0.5 (None: head_dim ** -0.5), tanh
    # soft-capping of attention scores and of the final logits, and the RoPE base of the
    # sliding layers (gemma3; None: the same RoPE everywhere).
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_local_theta: float | None = None
    partial_rotary_factor: float = 1.0  # phi3 (Phi-4-mini): RoPE on the leading share of head_dim
    # qwen3_moe: num_experts routed experts of moe_intermediate_size, top num_experts_per_tok per
    # token; a layer is sparse when (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a parsed `config.json`; unknown keys are ignored."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"unsupported model_type {model_type!r}; supported: "
                + ", ".join(sorted(SUPPORTED_ARCHITECTURES))
            )
        gemma = model_type in GEMMA_ARCHITECTURES
        act = d.get("hidden_activation") or d.get("hidden_act") or "silu"
        if act not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedArchitecture(f"unsupported hidden_act {act!r}")
        if d.get("use_bidirectional_attention"):
            raise UnsupportedArchitecture(f"{model_type} with use_bidirectional_attention")
        heads = int(d["num_attention_heads"])
        layers = int(d["num_hidden_layers"])
        rope_theta, rope_scaling, local_theta = _rope_settings(d)
        has_bias = bool(d.get("attention_bias", model_type == "qwen2"))
        sliding = int(d["sliding_window"]) if d.get("sliding_window") else None
        if model_type.startswith("qwen") and not d.get("use_sliding_window"):
            sliding = None
        windows = [sliding if t == "sliding_attention" else None for t in _layer_types(d, sliding)]
        return cls(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            attention_bias=has_bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=_id_list(d.get("eos_token_id")),
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"),
            o_proj_bias=has_bias and model_type != "qwen2",
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
            sliding_window=sliding,
            layer_windows=windows,
            hidden_act=act,
            query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256) if gemma else None,
            attn_logit_softcapping=d.get("attn_logit_softcapping") if gemma else None,
            final_logit_softcapping=d.get("final_logit_softcapping") if gemma else None,
            rope_local_theta=local_theta,
            partial_rotary_factor=float(
                d.get("partial_rotary_factor")
                or (d.get("rope_parameters") or {}).get("partial_rotary_factor")
                or 1.0
            ),
            num_experts=int(d.get("num_experts") or d.get("num_local_experts") or 0),
            num_experts_per_tok=int(d.get("num_experts_per_tok") or 0),
            moe_intermediate_size=int(d.get("moe_intermediate_size") or 0),
            norm_topk_prob=bool(d.get("norm_topk_prob", False)),
            decoder_sparse_step=int(d.get("decoder_sparse_step") or 1),
            mlp_only_layers=[int(i) for i in d.get("mlp_only_layers") or []],
        )

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window, None when it attends to the whole context."""
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window

    def is_sparse_layer(self, layer: int) -> bool:
        """Whether `layer`'s MLP is the routed mixture of experts (qwen3_moe)."""
        return (
            self.num_experts > 0
            and (layer + 1) % self.decoder_sparse_step == 0
            and layer not in self.mlp_only_layers
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read `<path>/config.json`."""
        file = Path(path) / "config.json"
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadFailed(f"cannot read {file}: {e}") from e
        return cls.from_dict(data)


def _id_list(value: Any) -> list[int]:
    """`eos_token_id` may be an int, a list or absent; always a list."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _layer_types(d: dict[str, Any], window: int | None) -> list[str]:
    """ "sliding_attention" or "full_attention" per layer, as transformers derives them."""
    layers = int(d["num_hidden_layers"])
    if window is None:
        return ["full_attention"] * layers
    if d.get("layer_types"):
        return list(d["layer_types"])
    if d["model_type"] in GEMMA_ARCHITECTURES:
        default = 2 if d["model_type"] == "gemma2" else GEMMA3_PATTERN
        pattern = int(d.get("sliding_window_pattern") or default)
        return [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
        ]
    if d["model_type"] in ("qwen2", "qwen3"):
        first = int(d.get("max_window_layers", 0))  # Qwen slides the layers from this one on
        return ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    return ["sliding_attention"] * layers


def _rope_settings(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float | None]:
    """(rope_theta, rope_scaling or None, the sliding layers' theta or None) from any config
    spelling; checks the RoPE type.

    Gemma 3 has two RoPEs: `rope_parameters` keyed by layer type in transformers 5, else
    `rope_theta` + `rope_scaling` for the global layers and `rope_local_base_freq`.
    """
    params = d.get("rope_parameters") or {}
    local = None
    if d.get("model_type") == "gemma3_text":
        local = float(
            (params.get("sliding_attention") or {}).get("rope_theta")
            or d.get("rope_local_base_freq")
            or 10000.0
        )
        params = params.get("full_attention") or params
    theta = float(d.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = d.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    scaling = {k: v for k, v in (scaling or {}).items() if k != "partial_rotary_factor"}
    if not scaling:
        return theta, None, local
    rope_type = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    rope_type = "longrope" if rope_type == "su" else rope_type  # Phi-3's older name
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitecture(f"unsupported rope_scaling type {rope_type!r}")
    if rope_type == "default":
        return theta, None, local
    if rope_type == "longrope":
        if not (scaling.get("short_factor") and scaling.get("long_factor")):
            raise UnsupportedArchitecture("rope_scaling type 'longrope' without its factors")
        # Phi-3 keeps the pretraining context beside rope_scaling, not in it.
        scaling.setdefault(
            "original_max_position_embeddings",
            d.get("original_max_position_embeddings") or d.get("max_position_embeddings"),
        )
    scaling["rope_type"] = rope_type
    return theta, scaling, local
