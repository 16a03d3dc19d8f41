"""`tokenizer.ggml.model = llama`: SentencePiece BPE with byte fallback, from GGUF metadata.

The vocabulary is stories260k's (llama2.c, a real SentencePiece BPE model): token texts from its
`tokenizer.json`, scores from the original `tok512.bin`, types as llama.cpp's converter sets them.
The GGUF is written twice, with the merges and (as llama.cpp's SentencePiece files are) with
only the scores; both must tokenize like the model's `tokenizer.json`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from gguf import GGUFWriter, TokenType

from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
from cortex.neuron.text.tokenizer import Tokenizer
from tests.support.checkpoints import STORIES

CORPUS = [
    "Once upon a time, there was a little girl named Lily.",
    "She liked to play outside in the sun. One day, she saw a big red ball!",
    "  two leading spaces, double  spaces and a trailing one ",
    "line one\nline two\n\n\ttabbed",
    "Ünïcödé café — 日本語 🙂 falls back to bytes",
    "numbers 1234567 and symbols ~[]{}<>|\\^",
    "<s>already a bos</s> and text after",
    "",
    " ",
]


def scores_from_tok512() -> list[float]:
    """Per-token scores from llama2.c's tokenizer export (int max_len, then score/len/bytes)."""
    raw = (STORIES / "original" / "tok512.bin").read_bytes()
    scores, pos = [], 4
    while pos < len(raw):
        score, size = struct.unpack_from("<fi", raw, pos)
        scores.append(score)
        pos += 8 + size
    return scores


def token_type(token: str, index: int) -> TokenType:
    if index == 0:
        return TokenType.UNKNOWN
    if token in ("<s>", "</s>"):
        return TokenType.CONTROL
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
        return TokenType.BYTE
    return TokenType.NORMAL


def write_spm_gguf(path: Path, with_merges: bool) -> Path:
    data = json.loads((STORIES / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    w = GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores_from_tok512())
    w.add_token_types([token_type(t, i) for i, t in enumerate(tokens)])
    if with_merges:
        w.add_token_merges([" ".join(m) for m in data["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("with_merges", [True, False], ids=["merges", "scores-only"])
def test_sentencepiece_tokenizer_matches(tmp_path: Path, with_merges: bool) -> None:
    ours = tokenizer_from_gguf(write_spm_gguf(tmp_path / "spm.gguf", with_merges))
    theirs = Tokenizer.from_dir(STORIES)
    for text in CORPUS:
        for special in (True, False):
            assert ours.encode(text, special) == theirs.encode(text, special), (text, special)
        ids = theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == theirs.decode(ids), text
    assert (ours.bos_token_id, ours.eos_token_ids) == (1, [2])
