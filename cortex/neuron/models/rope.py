"""Rotary position embeddings: frequencies per RoPE variant, cos/sin per position, rotation.

Variants (config `rope_scaling.rope_type`): default; `linear` (positions / factor); `llama3`
(Llama 3.1 band-wise scaling); `yarn` (NTK-by-parts with an attention factor on cos/sin);
`dynamic` as static NTK over the whole scaled window, as vLLM does (transformers grows the base
with the sequence, which a KV cache cannot follow, so long-sequence outputs differ from it);
`longrope` (Phi-3's "su"): per-frequency divisors, the short ones for positions inside the
pretraining context and the long ones beyond it, with an attention factor on cos/sin
(transformers switches every position to the long divisors once a sequence outgrows the
pretraining context; a KV cache keeps what earlier positions were computed with, so we choose per
position, which equals transformers whenever the sequence stays within that context).
With `partial_rotary_factor` < 1 only the leading dimensions of each head rotate.
Frequencies are fp32 and cos/sin are computed from positions on the fly, exactly as
transformers does, then cast to the model dtype.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from cortex.neuron.models.model_config import ModelConfig


class Rotary:
    """The RoPE frequencies of one model (or of its sliding layers) on its device."""

    def __init__(
        self, config: ModelConfig, device: torch.device | str, theta: float | None = None
    ) -> None:
        """`theta` replaces the configured base and scaling (Gemma 3's sliding layers)."""
        if theta is not None:
            config = replace(config, rope_theta=theta, rope_scaling=None)
        self.inv_freq, self.scale = rope_frequencies(config, device)  # [R/2] fp32, float
        s = config.rope_scaling or {}
        self.long_inv_freq: torch.Tensor | None = None  # longrope: beyond `self.original`
        if s.get("rope_type") == "longrope":
            long = replace(config, rope_scaling={**s, "short_factor": s["long_factor"]})
            self.long_inv_freq = rope_frequencies(long, device)[0]
            self.original = int(s["original_max_position_embeddings"])

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, signed sin [T, 1, R] in `dtype` (broadcast over heads), R the
        rotated dimensions (head_dim unless partial).

        Computed once per forward and shared by every layer: cos is repeated over both
        halves and sin is negated on the first half, so `apply_rope` needs no slicing.
        """
        inv_freq = self.inv_freq[None, :]  # [1, R/2]
        if self.long_inv_freq is not None:
            beyond = positions[:, None] >= self.original  # [T, 1]
            inv_freq = torch.where(beyond, self.long_inv_freq[None, :], inv_freq)  # [T, R/2]
        freqs = positions.float()[:, None] * inv_freq  # [T, R/2]
        cos, sin = freqs.cos(), freqs.sin()
        if self.scale != 1.0:
            cos, sin = cos * self.scale, sin * self.scale
        cos = torch.cat((cos, cos), dim=-1)  # [T, D]
        sin = torch.cat((-sin, sin), dim=-1)  # [T, D]
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (HF `rotate_half` layout). x [T, heads, D], cos/signed sin [T, 1, R].

    `roll` swaps the halves to [x2, x1]; with sin = [-sin, sin] this is HF's
    `x * cos + rotate_half(x) * sin` bit for bit, in four kernels instead of eight. With
    R < D (partial rotary) the last D - R dimensions pass through unrotated.
    """
    rotated = cos.shape[-1]
    if rotated < x.shape[-1]:
        head, tail = x[..., :rotated], x[..., rotated:]
        return torch.cat((apply_rope(head, cos, sin), tail), dim=-1)
    return x * cos + x.roll(rotated // 2, dims=-1) * sin


def rotary_dim(config: ModelConfig) -> int:
    """How many leading dimensions of each head RoPE rotates."""
    return int(config.head_dim * config.partial_rotary_factor)


def _divisors(factors: list[float], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(factors, dtype=torch.float32, device=device)


def rope_frequencies(config: ModelConfig, device: torch.device | str) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [rotary_dim / 2] fp32, cos/sin scale) for the configured variant;
    for `longrope` the short (within the pretraining context) frequencies."""
    dim = rotary_dim(config)
    base = config.rope_theta
    s = config.rope_scaling or {}
    kind = s.get("rope_type", "default")
    if kind == "dynamic":
        # The NTK base for the full scaled window (factor * max_position_embeddings).
        factor = s["factor"]
        base = base * (factor * factor - factor + 1) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    if kind == "longrope":  # transformers' exact expression
        short = _divisors(s["short_factor"], device)
        return 1.0 / (short * base**exponents), _longrope_scale(s, config)
    inv_freq = 1.0 / (base**exponents)
    if kind == "linear":
        return inv_freq / s["factor"], 1.0
    if kind == "llama3":
        return _llama3(inv_freq, s), 1.0
    if kind == "yarn":
        return _yarn(inv_freq, s, config)
    return inv_freq, 1.0


def _longrope_scale(s: dict, config: ModelConfig) -> float:
    """LongRoPE's attention factor: from `factor`, else the context's growth over pretraining."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    original = s["original_max_position_embeddings"]
    factor = s.get("factor") or config.max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


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
    dim, base = rotary_dim(config), config.rope_theta
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
