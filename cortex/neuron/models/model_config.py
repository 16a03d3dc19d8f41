"""`config.json` of a Hugging Face model directory -> `ModelConfig`.

One dataclass covers every architecture the hand-written decoder runs. Unknown keys are ignored;
an unknown `model_type` raises `UnsupportedArchitecture`. Both spellings of RoPE settings are
read: the classic `rope_theta` + `rope_scaling` keys and the `rope_parameters` dict that
transformers 5 writes. This module itself needs no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.errors import ModelLoadFailed, UnsupportedArchitecture

# model_type values the decoder in llama.py runs.
SUPPORTED_ARCHITECTURES: set[str] = {"llama", "mistral", "qwen2", "qwen3"}

# RoPE variants rope.py implements.
SUPPORTED_ROPE_TYPES = {"default", "linear", "llama3", "yarn", "dynamic"}


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
    qk_norm: bool = False  # qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None  # mistral: each token sees the last sliding_window keys

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a parsed `config.json`; unknown keys are ignored."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"unsupported model_type {model_type!r}; supported: "
                + ", ".join(sorted(SUPPORTED_ARCHITECTURES))
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedArchitecture(f"unsupported hidden_act {act!r} (only silu)")
        heads = int(d["num_attention_heads"])
        rope_theta, rope_scaling = _rope_settings(d)
        has_bias = bool(d.get("attention_bias", model_type == "qwen2"))
        sliding = d.get("sliding_window")
        if model_type in ("qwen2", "qwen3"):
            if d.get("use_sliding_window"):
                # Qwen windows only some layers (max_window_layers); not implemented.
                raise UnsupportedArchitecture(f"{model_type} with use_sliding_window")
            sliding = None
        return cls(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=has_bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=_id_list(d.get("eos_token_id")),
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"),
            o_proj_bias=has_bias and model_type != "qwen2",
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=int(sliding) if sliding else None,
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


def _rope_settings(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from either config spelling; checks the RoPE type."""
    params = d.get("rope_parameters") or {}
    theta = float(d.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = d.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    if not scaling:
        return theta, None
    scaling = dict(scaling)
    rope_type = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitecture(f"unsupported rope_scaling type {rope_type!r}")
    if rope_type == "default":
        return theta, None
    scaling["rope_type"] = rope_type
    return theta, scaling
