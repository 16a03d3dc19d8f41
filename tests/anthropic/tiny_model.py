"""A tiny random Qwen3 model that answers a fixed short reply and then ends its turn.

A random model never emits EOS. Here the layers stay random but the embedding and output
weights are set so that the residual stream is dominated by the current token's embedding: each
chain token gets its own basis direction (scaled far above what the random layers add), and the
output row of the token that must follow it points the same way. Greedy decoding then walks a
fixed chain whatever the prompt, starting from the prompt's last token:

- thinking on: the template ends `<|im_start|>assistant\\n`, so `\\n` -> `<think>` REASONING
  `</think>` `\\n\\n` REPLY `<|im_end|>`;
- thinking off: the template ends `...</think>\\n\\n`, so `\\n\\n` -> REPLY `<|im_end|>`.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FIXTURES
from tests.support.checkpoints import make_tiny_checkpoint

REPLY = "Hello from the tiny model."
REASONING = "Pondering"
EOS = "<|im_end|>"
_EMBED_SCALE = 50.0
_OUTPUT_SCALE = 10.0


def chain_ids(tokenizer) -> list[int]:
    """The token walk: `\\n` <think> REASONING </think> `\\n\\n` REPLY <|im_end|>."""
    ids: list[int] = []
    for text in ("\n", "<think>", REASONING, "</think>", "\n\n", REPLY, EOS):
        ids += tokenizer.encode(text, add_special_tokens=False).ids
    assert None not in ids and len(set(ids)) == len(ids), ids
    return ids


def make_replying_model(path: Path, *, max_position_embeddings: int = 40960) -> Path:
    """Write the tiny Qwen3 model (real Qwen3 tokenizer and template) to `path`."""
    import tokenizers
    import torch
    from safetensors.torch import load_file, save_file

    make_tiny_checkpoint(
        "qwen3",
        path,
        tokenizer_from=FIXTURES / "qwen3",
        tie_word_embeddings=False,
        max_position_embeddings=max_position_embeddings,
        # Small attention: Claude Code's ~18k-token prompt must prefill quickly on a CPU.
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    chain = chain_ids(tokenizer)
    weights_file = path / "model.safetensors"
    weights = load_file(weights_file)
    embed = weights["model.embed_tokens.weight"]
    head = weights["lm_head.weight"]
    hidden = embed.shape[1]
    assert len(chain) <= hidden
    for step, (token, following) in enumerate(zip(chain, chain[1:], strict=False)):
        direction = torch.zeros(hidden)
        direction[step] = 1.0
        embed[token] = _EMBED_SCALE * direction
        head[following] = _OUTPUT_SCALE * direction
    save_file(weights, weights_file, metadata={"format": "pt"})
    return path
