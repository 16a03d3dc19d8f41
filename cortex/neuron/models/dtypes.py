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

    On CPU a float16 checkpoint runs in bfloat16 (CPU fp16 kernels are slow and partial).
    """
    if dtype is not None:
        return parse_dtype(dtype)
    chosen = parse_dtype(config.torch_dtype)
    if torch.device(device).type == "cpu" and chosen == torch.float16:
        return torch.bfloat16
    return chosen


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators, fp32 on CPU (quantized weights carry no dtype of their own)."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16
