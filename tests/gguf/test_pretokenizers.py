"""Each `tokenizer.ggml.pre` name splits text as the pre-tokenizer of the models that use it.

Built from the Llama 3.2 vocabulary (it has multi-digit and many-space tokens, so a wrong split
shows). The reference is that `tokenizer.json` with its pre-tokenizer swapped for the one the
name stands for, as written in those models' own `tokenizer.json` files (GPT-2's byte-level
regex for `default`; SmolLM's single digits, then GPT-2's regex).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tokenizers import Tokenizer as HFTokenizer

from cortex.neuron.text.gguf_tokenizer import byte_level_bpe
from tests.conftest import FIXTURES

GPT2_BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": True,
    "use_regex": True,
}
REFERENCE_PRE: dict[str, dict[str, Any]] = {
    "default": GPT2_BYTE_LEVEL,
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, GPT2_BYTE_LEVEL],
    },
}
TEXTS = [
    "In 2024, 1234567 people paid $3.50 each; pi is 3.14159.",
    "  spaces   and\n\n\nnewlines\t\ttabs   ",
    "don't it's we'll THEY'RE",
    "Ünïcödé 日本語 🙂 naïve",
    "x=[1,2,3]; y = {'a': 10}  # comment",
]


@pytest.mark.parametrize("pre", list(REFERENCE_PRE))
def test_pre_tokenizer_matches_reference(pre: str) -> None:
    data = json.loads((FIXTURES / "llama3.2" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    ours = byte_level_bpe(tokens, merges, pre)
    data.update(
        added_tokens=[], normalizer=None, post_processor=None, pre_tokenizer=REFERENCE_PRE[pre]
    )
    data["model"]["ignore_merges"] = False
    reference = HFTokenizer.from_str(json.dumps(data))
    for text in TEXTS:
        assert ours.encode(text).ids == reference.encode(text).ids, text
