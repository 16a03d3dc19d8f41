"""Tiny random Hugging Face checkpoints made at test time, plus the real stories260k fixture.

`make_tiny_checkpoint("qwen3", tmp_path / "m", tokenizer_from=FIXTURES / "qwen3")` writes a
2-layer, 64-wide model with transformers' own config class and `save_pretrained`, so the files
are exactly what a published checkpoint of that architecture looks like. All parameters are
randomised (norm weights around 1, biases non-zero) so that every tensor matters numerically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURES

STORIES = FIXTURES / "stories260k"

# Files copied from a tokenizer fixture directory when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
)

# Shape of every tiny model; per-architecture extras below.
_BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
_ARCH_EXTRA: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 32},  # head_dim != hidden_size / heads, as in real Qwen3
}


def _config_class(arch: str) -> type:
    import transformers

    names = {
        "llama": "LlamaConfig",
        "mistral": "MistralConfig",
        "qwen2": "Qwen2Config",
        "qwen3": "Qwen3Config",
    }
    if arch not in names:
        raise ValueError(f"no tiny checkpoint recipe for {arch!r}")
    return getattr(transformers, names[arch])


def make_tiny_checkpoint(
    arch: str,
    path: Path,
    *,
    tokenizer_from: Path | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    max_shard_size: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a tiny random `arch` checkpoint to `path` and return `path`.

    With `tokenizer_from`, its tokenizer files are copied and vocab size, BOS/EOS and tied
    embeddings follow that model's config.json. `overrides` go to the config class.
    `max_shard_size` (e.g. "100KB") writes a sharded checkpoint with an index.
    """
    settings = {**_BASE, **_ARCH_EXTRA.get(arch, {})}
    if tokenizer_from is not None:
        real = json.loads((tokenizer_from / "config.json").read_text())
        for key in ("vocab_size", "bos_token_id", "eos_token_id", "tie_word_embeddings"):
            if key in real:
                settings[key] = real[key]
    settings["vocab_size"] = vocab_size or settings.get("vocab_size", 256)
    settings.update(overrides)
    config = _config_class(arch)(**settings)
    return save_random(
        config, path, seed=seed, tokenizer_from=tokenizer_from, max_shard_size=max_shard_size
    )


def save_random(
    config: Any,
    path: Path,
    *,
    seed: int = 0,
    norm_centre: float = 1.0,
    std: float = 0.05,
    tokenizer_from: Path | None = None,
    max_shard_size: str | None = None,
) -> Path:
    """Save a model of transformers `config` with every parameter random (norm weights around
    `norm_centre`, the rest N(0, std)) to `path`, with `tokenizer_from`'s tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(norm_centre + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, std)
    path.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copyfile(tokenizer_from / name, path / name)
    return path
