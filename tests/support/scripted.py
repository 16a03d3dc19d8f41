"""A real Qwen3 checkpoint whose weights make greedy decoding follow fixed scripts.

Random tiny models write random tokens, so reasoning, tool calls and JSON answers cannot be
tested end to end with them. This builds a tiny Qwen3 (real tokenizer, real safetensors, real
architecture, loaded and run by the real engine) whose weights form a bigram machine:
attention and MLP outputs are zeroed (`o_proj`, `down_proj`), so the last hidden state is the
normalised embedding of the current token; each scripted token's embedding is its own basis
vector and `lm_head` maps that vector to the next scripted token with a large logit.

`scripts` maps the text of a prompt's last token (e.g. "\\n", the end of Qwen3's generation
prompt) to the answer the model then writes. Each script is cut into vocabulary tokens so that
no token appears twice across all scripts (a bigram machine needs unique predecessors), and
ends with `<|im_end|>` (EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import FIXTURES
from tests.support.checkpoints import make_tiny_checkpoint

QWEN3 = FIXTURES / "qwen3"
EOS = "<|im_end|>"
LOGIT = 6.0


def _segment(hf, text: str, used: set[int]) -> list[int]:
    """Cut `text` into single-token pieces none of which is in `used` (depth-first search,
    longest pieces first); the chosen ids are added to `used`."""

    budget = [5000]  # encode calls; a text that needs more is a bad script, not a slow one

    def pieces(pos: int) -> list[int] | None:
        if pos == len(text):
            return []
        for end in range(min(len(text), pos + 24), pos, -1):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            ids = hf.encode(text[pos:end], add_special_tokens=False).ids
            if len(ids) != 1 or ids[0] in used:
                continue
            if hf.decode(ids, skip_special_tokens=False) != text[pos:end]:
                continue
            used.add(ids[0])
            rest = pieces(end)
            if rest is not None:
                return [ids[0], *rest]
            used.discard(ids[0])
        return None

    found = pieces(0)
    if found is None:
        raise ValueError(f"cannot script {text!r} with unique tokens")
    return found


def make_scripted_checkpoint(
    path: Path, scripts: dict[str, str], hidden_size: int = 64, **overrides: Any
) -> Path:
    """Write the scripted model to `path` (tokenizer files from the Qwen3 fixture);
    `overrides` go to the config (e.g. `max_position_embeddings`, smaller attention)."""
    import tokenizers
    import torch
    from safetensors.torch import load_file, save_file

    hf = tokenizers.Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))
    eos = hf.token_to_id(EOS)
    used: set[int] = set()
    starts = {}
    for key in scripts:
        (start,) = hf.encode(key, add_special_tokens=False).ids
        starts[key] = start
        used.add(start)
    chains = [[starts[key], *_segment(hf, text, used), eos] for key, text in scripts.items()]
    pairs = [(a, b) for chain in chains for a, b in zip(chain, chain[1:], strict=False)]
    if len(pairs) > hidden_size:
        raise ValueError(f"{len(pairs)} scripted steps need hidden_size >= {len(pairs)}")

    make_tiny_checkpoint(
        "qwen3",
        path,
        tokenizer_from=QWEN3,
        tie_word_embeddings=False,
        hidden_size=hidden_size,
        **{"num_hidden_layers": 1, **overrides},
    )
    weights_file = path / "model.safetensors"
    weights = load_file(str(weights_file))
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name].zero_()
    weights["model.norm.weight"].fill_(1.0)
    embed = weights["model.embed_tokens.weight"]
    head = torch.zeros_like(weights["lm_head.weight"])
    for slot, (current, following) in enumerate(pairs):
        embed[current].zero_()
        embed[current, slot] = 1.0
        head[following, slot] = LOGIT
    weights["lm_head.weight"] = head
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    return path
