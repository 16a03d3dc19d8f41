"""Loading a model: `load_model(path, device, dtype, quantize) -> CausalLM`, and its size before
loading.

A path is a safetensors model directory (checkpoint.py) or a GGUF file or a directory holding
one (gguf.py); this is the one place that tells them apart.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cortex.errors import ModelLoadFailed
from cortex.neuron.models.architectures import CausalLM, build_model
from cortex.neuron.models.checkpoint import iter_safetensors, safetensors_weight_bytes
from cortex.neuron.models.dtypes import resolve_dtype
from cortex.neuron.models.gguf import find_gguf, gguf_weight_bytes, load_gguf_model
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.models.quantized import check_scheme, planned_bytes


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
) -> CausalLM:
    """Load a safetensors model directory (or a GGUF file / directory holding one).

    `quantize` ("int8", "int4", None) quantizes the float linear weights as they load.
    """
    path = Path(path)
    if _is_gguf(path):
        return load_gguf_model(path, device, dtype, quantize)
    if not path.is_dir():
        raise ModelLoadFailed(f"model directory not found: {path}")
    config = ModelConfig.from_dir(path)
    run_dtype = resolve_dtype(config, device, dtype)
    model = build_model(config, device, run_dtype, quantize=check_scheme(quantize))
    model.load_weights(iter_safetensors(path, device))
    return model


def model_weight_bytes(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Bytes the weights take once `load_model(path, device, dtype, quantize)` has loaded them,
    from file headers only. `dtype` None: a GGUF in the device's default compute dtype with its
    quantized matrices at their quantized size, safetensors in their stored dtype."""
    path = Path(path)
    if find_gguf(path) is not None:
        return gguf_weight_bytes(path, dtype, quantize, device)
    scheme = check_scheme(quantize)
    if scheme is None:
        return safetensors_weight_bytes(path, dtype)
    config = ModelConfig.from_dir(path)
    model = build_model(config, "meta", resolve_dtype(config, device, dtype), quantize=scheme)
    return planned_bytes(model, {}, torch.device(device))


def _is_gguf(path: Path) -> bool:
    """A .gguf file, or a directory holding one and no safetensors."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and any(path.glob("*.gguf")) and not any(path.glob("*.safetensors"))
