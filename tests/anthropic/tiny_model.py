"""A tiny Qwen3 model that answers a fixed short reply and then ends its turn.

A scripted checkpoint (tests/support/scripted.py): greedy decoding walks one fixed chain from
the prompt's last token, whatever the prompt:

- thinking on: the template ends `<|im_start|>assistant\\n`, so `\\n` -> `<think>` REASONING
  `</think>` `\\n\\n` REPLY `<|im_end|>`;
- thinking off: the template ends `...</think>\\n\\n`, so `\\n\\n` -> REPLY `<|im_end|>` (the
  same chain, entered half-way).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.scripted import make_scripted_checkpoint

REPLY = "Hello from the tiny model."
REASONING = "Pondering"


def make_replying_model(path: Path, *, max_position_embeddings: int = 40960) -> Path:
    """Write the tiny Qwen3 model (real Qwen3 tokenizer and template) to `path`."""
    return make_scripted_checkpoint(
        path,
        {"\n": f"<think>{REASONING}</think>\n\n{REPLY}"},
        max_position_embeddings=max_position_embeddings,
        # Small attention: Claude Code's ~18k-token prompt must prefill quickly on a CPU.
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
