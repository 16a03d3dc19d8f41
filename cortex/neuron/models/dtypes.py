"""Which torch dtype a model runs in: names users and configs give, and the defaults."""

from __future__ import annotations

import torch

from cortex.errors import ModelLoadFailed
from cortex.neuron.models.model_config import ModelConfig

# Names accepted for a dtype wherever a user or config names one.
DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    """`torch.bfloat16`, "bfloat16", "bf16", "torch.float16", ... -> torch.dtype."""
    if isinstance(value, torch.dtype):
        return value
    name = value.lower().removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ModelLoadFailed(f"unsupported dtype {value!r}; use bfloat16, float16 or float32")
    return DTYPE_NAMES[name]


def resolve_dtype(
    config: ModelConfig, device: torch.device | str, dtype: torch.dtype | str | None
) -> torch.dtype:
    """The dtype to run in: the one asked for, else the checkpoint's.

    On CPU a half-precision checkpoint runs in the CPU's default (`default_dtype`): CPU fp16
    kernels are slow and partial, and bf16 without native support is slower than fp32.
    """
    if dtype is not None:
        return parse_dtype(dtype)
    chosen = parse_dtype(config.torch_dtype)
    device = torch.device(device)
    if device.type == "cpu" and chosen in (torch.float16, torch.bfloat16):
        return default_dtype(device)
    return chosen


def default_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype of a model whose weights carry none (GGUF): bf16 on accelerators and
    on CPUs with native bf16 arithmetic, fp32 on other CPUs."""
    if device.type == "cpu" and not cpu_has_bf16():
        return torch.float32
    return torch.bfloat16


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX): bf16 matmuls then run at
    twice fp32's bandwidth. Elsewhere bf16 is emulated and slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
