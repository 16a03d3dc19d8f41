"""Tiny random checkpoints of the architectures beyond the Llama family, made with transformers.

`make_checkpoint("gemma2", path, seed=1)` writes a 32-64 wide, 2-4 layer model with transformers'
own config class and `save_pretrained`, so the files are what a published checkpoint of that
architecture looks like. Every parameter is random (Gemma's zero-centred norms around 0, the
others around 1) so each tensor matters; sliding windows are a few tokens, so the test prompts
outgrow them, and Gemma 2's soft-caps are small enough to bite on random weights.

`hf_reference` loads the same checkpoint in transformers with eager attention (the only
implementation that soft-caps the scores) for comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support.checkpoints import STORIES, save_random

WINDOW = 5
_COMMON: dict[str, Any] = {
    "vocab_size": 512,  # stories260k's tokenizer: the neuron tests can talk to these models
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
ROPE_FACTORS = 6  # phi3 below rotates 12 of 16 dimensions: 6 frequencies
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {
            "intermediate_size": 96,
            "moe_intermediate_size": 32,
            "num_hidden_layers": 3,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "mlp_only_layers": [1],  # a dense layer between two sparse ones
            "tie_word_embeddings": False,
        },
    ),
    "gemma2": (
        "Gemma2Config",
        {
            "intermediate_size": 96,
            "num_hidden_layers": 2,  # sliding, then global
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 1.5,
            "final_logit_softcapping": 2.0,
        },
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        {
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 24,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
            },
        },
    ),
    "phi3": (
        "Phi3Config",
        {
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_key_value_heads": 4,
            "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 64,
            "rope_scaling": {
                "rope_type": "longrope",
                "short_factor": [1.0 + 0.3 * i for i in range(ROPE_FACTORS)],
                "long_factor": [2.0 + 1.5 * i for i in range(ROPE_FACTORS)],
            },
            "tie_word_embeddings": False,
        },
    ),
}
ARCHS = list(RECIPES)


def make_checkpoint(arch: str, path: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random `arch` checkpoint with stories260k's tokenizer to `path`."""
    import transformers

    class_name, extra = RECIPES[arch]
    config = getattr(transformers, class_name)(**{**_COMMON, **extra, **overrides})
    centre = 0.0 if arch.startswith("gemma") else 1.0  # Gemma norms scale by (1 + weight)
    return save_random(
        config, path, seed=seed, norm_centre=centre, std=0.08, tokenizer_from=STORIES
    )


def hf_reference(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The checkpoint in transformers, eager attention, greedy to the full length."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    return model.eval()


@torch.inference_mode()
def hf_greedy(model: torch.nn.Module, prompt: list[int], new: int) -> list[int]:
    """`new` greedy tokens after `prompt` from a transformers model."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()
