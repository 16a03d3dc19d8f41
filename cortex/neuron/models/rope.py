"""Rotary position embeddings: frequencies per RoPE variant, cos/sin per position, rotation.

Variants (config `rope_scaling.rope_type`): default; `linear` (positions / factor); `llama3`
(Llama 3.1 band-wise scaling); `yarn` (NTK-by-parts with an attention factor on cos/sin);
`dynamic` as static NTK over the whole scaled window, as vLLM does (transformers grows the base
with the sequence, which a KV cache cannot follow, so long-sequence outputs differ from it).
Frequencies are fp32 and cos/sin are computed from positions on the fly, exactly as
transformers does, then cast to the model dtype.
"""

from __future__ import annotations

import math

import torch

from cortex.neuron.models.model_config import ModelConfig


class Rotary:
    """The RoPE frequencies of one model on its device."""

    def __init__(self, config: ModelConfig, device: torch.device | str) -> None:
        self.inv_freq, self.scale = rope_frequencies(config, device)  # [D/2] fp32, float

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, signed sin [T, 1, D] in `dtype` (broadcast over heads).

        Computed once per forward and shared by every layer: cos is repeated over both
        halves and sin is negated on the first half, so `apply_rope` needs no slicing.
        """
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        if self.scale != 1.0:
            cos, sin = cos * self.scale, sin * self.scale
        cos = torch.cat((cos, cos), dim=-1)  # [T, D]
        sin = torch.cat((-sin, sin), dim=-1)  # [T, D]
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (HF `rotate_half` layout). x [T, heads, D], cos/signed sin [T, 1, D].

    `roll` swaps the halves to [x2, x1]; with sin = [-sin, sin] this is HF's
    `x * cos + rotate_half(x) * sin` bit for bit, in four kernels instead of eight.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def rope_frequencies(config: ModelConfig, device: torch.device | str) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2] fp32, cos/sin scale) for the configured variant."""
    dim = config.head_dim
    base = config.rope_theta
    s = config.rope_scaling or {}
    kind = s.get("rope_type", "default")
    if kind == "dynamic":
        # The NTK base for the full scaled window (factor * max_position_embeddings).
        factor = s["factor"]
        base = base * (factor * factor - factor + 1) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    inv_freq = 1.0 / (base**exponents)
    if kind == "linear":
        return inv_freq / s["factor"], 1.0
    if kind == "llama3":
        return _llama3(inv_freq, s), 1.0
    if kind == "yarn":
        return _yarn(inv_freq, s, config)
    return inv_freq, 1.0


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1: low frequencies / factor, high ones kept, smooth interpolation between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(inv_freq: torch.Tensor, s: dict, config: ModelConfig) -> tuple[torch.Tensor, float]:
    """YaRN: extrapolate fast dimensions, interpolate slow ones, ramp between; scale cos/sin."""
    dim, base = config.head_dim, config.rope_theta
    old_len = s.get("original_max_position_embeddings") or config.max_position_embeddings
    factor = s.get("factor") or config.max_position_embeddings / old_len

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(s.get("beta_fast") or 32), correction_dim(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero
    ramp = ((torch.arange(dim // 2, device=inv_freq.device).float() - low) / (high - low)).clamp(
        0, 1
    )
    extrapolate = 1 - ramp  # share of the original frequency per dimension
    interpolated = inv_freq / factor
    return interpolated * (1 - extrapolate) + inv_freq * extrapolate, float(attention)
