"""Model registry and loading: `load_model(path, device, dtype) -> CausalLM`.

A model is built on the meta device (no memory), materialised empty on the target device in
the target dtype, then filled tensor by tensor from the checkpoint, so weights are allocated
once. GGUF files are handed to `cortex.neuron.models.gguf`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cortex.errors import ModelLoadFailed, UnsupportedArchitecture
from cortex.neuron.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from cortex.neuron.models.llama import LlamaForCausalLM
from cortex.neuron.models.loader import iter_safetensors, model_weight_bytes, parse_dtype

# The common interface every decoder implements (see INTERFACES.md).
CausalLM = LlamaForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = dict.fromkeys(
    SUPPORTED_ARCHITECTURES, LlamaForCausalLM
)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CausalLM",
    "ModelConfig",
    "build_model",
    "load_model",
    "model_weight_bytes",
    "resolve_dtype",
]


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


def build_model(
    config: ModelConfig, device: torch.device | str, dtype: torch.dtype
) -> LlamaForCausalLM:
    """An uninitialised model on `device` in `dtype`; fill it with `load_weights`."""
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise UnsupportedArchitecture(f"unsupported model_type {config.model_type!r}")
    with torch.device("meta"):
        model = cls(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    if config.tie_word_embeddings:
        # to_empty replaces meta parameters one module at a time, which unties them.
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_rope()
    return model.eval().requires_grad_(False)


def load_model(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None
) -> LlamaForCausalLM:
    """Load a safetensors model directory (or a GGUF file / directory holding one)."""
    path = Path(path)
    if _is_gguf(path):
        from cortex.neuron.models.gguf import load_gguf_model

        return load_gguf_model(path, device, dtype)
    if not path.is_dir():
        raise ModelLoadFailed(f"model directory not found: {path}")
    config = ModelConfig.from_dir(path)
    model = build_model(config, device, resolve_dtype(config, device, dtype))
    model.load_weights(iter_safetensors(path, device))
    return model


def _is_gguf(path: Path) -> bool:
    """A .gguf file, or a directory holding one and no safetensors."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and any(path.glob("*.gguf")) and not any(path.glob("*.safetensors"))
