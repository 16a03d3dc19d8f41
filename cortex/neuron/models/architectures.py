"""Decoder classes by HF `model_type`, and building one empty on a device.

A model is built on the meta device (no memory), then materialised empty on the target device
in the target dtype; the loaders fill it tensor by tensor, so weights are allocated once. Layers
loaded quantized are `Pending` placeholders until then (quantized.py): they allocate nothing
in full precision.
"""

from __future__ import annotations

import torch

from cortex.errors import UnsupportedArchitecture
from cortex.neuron.models.gemma import GemmaForCausalLM
from cortex.neuron.models.llama import LlamaForCausalLM
from cortex.neuron.models.model_config import SUPPORTED_ARCHITECTURES, ModelConfig
from cortex.neuron.models.phi3 import Phi3ForCausalLM
from cortex.neuron.models.quantized import Pending, Scheme, quantizable
from cortex.neuron.models.qwen3_moe import Qwen3MoeForCausalLM

# The common interface every decoder implements (that of LlamaForCausalLM, their base class).
CausalLM = LlamaForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3"), LlamaForCausalLM),
    "qwen3_moe": Qwen3MoeForCausalLM,
    "gemma2": GemmaForCausalLM,
    "gemma3_text": GemmaForCausalLM,
    "phi3": Phi3ForCausalLM,
}
assert set(MODEL_CLASSES) == SUPPORTED_ARCHITECTURES


def build_model(
    config: ModelConfig,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    quantize: Scheme | None = None,
    blocks: bool = False,
) -> CausalLM:
    """An uninitialised model on `device` in `dtype`; fill it with `load_weights`.

    `quantize` makes every quantizable linear a `Pending` layer quantized that way; `blocks`
    (GGUF block tensors) makes them and the embedding `Pending`, each choosing its kernel from
    the types of the tensors it receives.
    """
    cls = MODEL_CLASSES.get(config.model_type)
    if cls is None:
        raise UnsupportedArchitecture(f"unsupported model_type {config.model_type!r}")
    with torch.device("meta"):
        model = cls(config)
    if quantize is not None or blocks:
        for name, module in list(model.named_modules()):
            embedding = blocks and name == "model.embed_tokens"
            if embedding or quantizable(name, module):
                model.set_submodule(name, Pending(module, quantize))
    model = model.to(dtype=dtype).to_empty(device=device)
    if config.tie_word_embeddings and not isinstance(model.lm_head, Pending):
        # to_empty replaces meta parameters one module at a time, which unties them.
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_rope()
    return model.eval().requires_grad_(False)
