"""The text pipeline around the engine: tokens in, OpenAI deltas out.

tokenizer.py (`Tokenizer`: encode, decode, chat template) built from a model directory or, by
gguf_tokenizer.py, from GGUF metadata; chat_template.py (rendering as HF does); prompts.py (a
request's prompt ids); grammar.py (a constrained request's compiled grammar, which the engine's
sampler enforces); detokenizer.py -> textstream.py (stop strings, reasoning split, tool calls with
parsers.py). `load_tokenizer` is the one entry point for a model.
"""

from __future__ import annotations

from pathlib import Path

from cortex.neuron.models.gguf import find_gguf
from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
from cortex.neuron.text.tokenizer import Tokenizer


def load_tokenizer(path: Path | str) -> Tokenizer:
    """The tokenizer of a model: from a GGUF file's metadata, or a model directory's files."""
    gguf = find_gguf(path)
    if gguf is not None:
        return tokenizer_from_gguf(gguf)
    return Tokenizer.from_dir(path)
