"""A model's `Tokenizer` from the `tokenizer.*` metadata of a GGUF file.

GGUF carries no `tokenizer.json`: it stores the token texts, their types (normal, unknown,
control, user-defined, unused, byte), the BPE merges or SentencePiece scores, and names the
pre-tokenizer llama.cpp must use (`tokenizer.ggml.pre`). This module rebuilds the equivalent
`tokenizers.Tokenizer`:

- `gpt2`: byte-level BPE. The text is split by the regex llama.cpp applies for that `pre` name
  (the same regexes the models' own `tokenizer.json` files use), then mapped to the byte alphabet.
- `llama`: SentencePiece-style BPE with byte fallback: spaces become `▁`, one `▁` is prepended
  (unless `add_space_prefix` is false), unknown characters fall back to `<0xNN>` byte tokens.
  Merges come from the file, or, as llama.cpp's SentencePiece tokenizer does, from the scores:
  the pair whose merged piece scores highest merges first.

Control and unknown tokens become special added tokens, user-defined ones plain added tokens, so
both are matched whole in the text. The result is the text helper's `Tokenizer`, so chat
templates (`tokenizer.chat_template`) render through the same Jinja code as for directories.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gguf import TokenType
from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers import Tokenizer as HFTokenizer

from cortex.errors import ModelLoadFailed, UnsupportedArchitecture
from cortex.neuron.models.gguf import find_gguf, open_gguf
from cortex.neuron.models.gguf_file import GGUFFile
from cortex.neuron.text.tokenizer import Tokenizer

SPACE = "\u2581"  # SentencePiece's visible space, "▁"

# GPT-2's split (what ByteLevel(use_regex=True) applies).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` -> (regexes applied in turn, NFC-normalise first). llama.cpp's names.
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((GPT2_SPLIT,), False),
    "gpt-2": ((GPT2_SPLIT,), False),
    # SmolLM, StarCoder and friends: every digit alone, then GPT-2's split.
    "smollm": ((r"\p{N}", GPT2_SPLIT), False),
    "starcoder": ((r"\p{N}", GPT2_SPLIT), False),
    "llama-bpe": ((LLAMA3_SPLIT,), False),
    "llama3": ((LLAMA3_SPLIT,), False),
    "llama-v3": ((LLAMA3_SPLIT,), False),
    "smaug-bpe": ((LLAMA3_SPLIT,), False),
    "qwen2": ((QWEN2_SPLIT,), True),
    "deepseek-r1-qwen": ((QWEN2_SPLIT,), True),
}
# Pre-tokenizers whose BPE uses a whole pre-token found in the vocabulary without merging
# (llama.cpp's `ignore_merges`; tokenizer.json's `"ignore_merges": true` for Llama 3).
IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3", "smaug-bpe"}


def tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    """The `Tokenizer` described by a GGUF file (or a directory holding one)."""
    file = find_gguf(path)
    if file is None:
        raise ModelLoadFailed(f"no GGUF file at {path}")
    return tokenizer_from_reader(open_gguf(file))


def tokenizer_from_reader(reader: GGUFFile) -> Tokenizer:
    """The `Tokenizer` described by an open GGUF file's metadata."""
    model = reader.get("tokenizer.ggml.model")
    tokens: list[str] | None = reader.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadFailed("GGUF file has no tokenizer.ggml.tokens")
    types = reader.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    merges = reader.get("tokenizer.ggml.merges")
    if model == "gpt2":
        pre = reader.get("tokenizer.ggml.pre") or "default"
        hf = byte_level_bpe(tokens, merges or [], pre)
    elif model == "llama":
        scores = reader.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        unk = reader.get("tokenizer.ggml.unknown_token_id", 0)
        prefix = bool(reader.get("tokenizer.ggml.add_space_prefix", True))
        hf = sentencepiece_bpe(tokens, types, scores, merges, unk, prefix)
    else:
        raise UnsupportedArchitecture(f"unsupported GGUF tokenizer model {model!r}")
    add_added_tokens(hf, tokens, types)

    def token(key: str) -> str | None:
        index = reader.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    # Files that do not say get llama.cpp's default: BOS for SentencePiece and Llama 3 vocabularies.
    llama3 = reader.get("tokenizer.ggml.pre") in IGNORE_MERGES
    add_bos = bool(reader.get("tokenizer.ggml.add_bos_token", model == "llama" or llama3))
    add_eos = bool(reader.get("tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        hf.post_processor = bos_eos_template(
            hf, token("bos") if add_bos else None, token("eos") if add_eos else None
        )
    eos_ids = [reader.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return Tokenizer(
        hf,
        chat_template=chat_templates(reader),
        bos_token=token("bos"),
        eos_token=token("eos"),
        add_bos=add_bos,
        eos_token_ids=list(dict.fromkeys(int(i) for i in eos_ids if i is not None)),
        special={"unk_token": token("unknown"), "pad_token": token("padding")},
    )


def chat_templates(reader: GGUFFile) -> str | dict[str, str] | None:
    """`tokenizer.chat_template`, plus named ones (`tokenizer.chat_template.tool_use`) as a dict
    keyed like `tokenizer_config.json`'s list of templates ("default" for the main one)."""
    main = reader.get("tokenizer.chat_template")
    prefix = "tokenizer.chat_template."
    named = {k.removeprefix(prefix): v for k, v in reader.fields.items() if k.startswith(prefix)}
    if not named:
        return main
    return ({"default": main} if main else {}) | named


def byte_level_bpe(tokens: Sequence[str], merges: Sequence[str], pre: str) -> HFTokenizer:
    """GPT-2-style byte-level BPE with the split llama.cpp uses for `pre`.

    Unknown `pre` names get GPT-2's own split, as llama.cpp and transformers do.
    """
    splits, nfc = PRE_TOKENIZERS.get(pre, PRE_TOKENIZERS["default"])
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=[_merge_pair(m) for m in merges],
        ignore_merges=pre in IGNORE_MERGES,
    )
    hf = HFTokenizer(bpe)
    if nfc:
        hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    return hf


def sentencepiece_bpe(
    tokens: Sequence[str],
    types: Sequence[int],
    scores: Sequence[float],
    merges: Sequence[str] | None,
    unk_id: int,
    add_space_prefix: bool,
) -> HFTokenizer:
    """SentencePiece BPE (Llama 2 style): `▁` for spaces, byte fallback, merges by score."""
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = (
        [_merge_pair(m) for m in merges] if merges else merges_from_scores(tokens, types, scores)
    )
    bpe = models.BPE(
        vocab=vocab, merges=pairs, unk_token=tokens[unk_id], fuse_unk=True, byte_fallback=True
    )
    hf = HFTokenizer(bpe)
    spaces = [normalizers.Replace(" ", SPACE)]
    prefix = [normalizers.Prepend(SPACE)] if add_space_prefix else []
    hf.normalizer = normalizers.Sequence(prefix + spaces)
    strip = [decoders.Strip(" ", 1, 0)] if add_space_prefix else []
    hf.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return hf


def merges_from_scores(
    tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's scores: every split of a normal piece into two
    normal pieces, the best-scoring merged piece first (ties: lower ids first)."""
    ids = {t: i for i, t in enumerate(tokens) if types[i] == TokenType.NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, index in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[index], ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def add_added_tokens(hf: HFTokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Control/unknown tokens as special added tokens, user-defined ones as plain added tokens
    (both matched whole before the model splits the text)."""
    special = {TokenType.CONTROL, TokenType.UNKNOWN}
    added = [
        AddedToken(t, special=kind in special, normalized=False)
        for t, kind in zip(tokens, types, strict=True)
        if kind in special or kind == TokenType.USER_DEFINED
    ]
    hf.add_special_tokens([a for a in added if a.special])
    hf.add_tokens([a for a in added if not a.special])


def bos_eos_template(
    hf: HFTokenizer, bos: str | None, eos: str | None
) -> processors.TemplateProcessing:
    """A post-processor adding BOS and/or EOS as a `tokenizer.json` does (even before a BOS
    already in the text, like transformers and llama.cpp)."""
    marks = [t for t in (bos, eos) if t is not None]
    head, tail = ([f"{bos}:0"] if bos else []), ([f"{eos}:0"] if eos else [])
    return processors.TemplateProcessing(
        single=[*head, "$A:0", *tail],
        pair=[*head, "$A:0", *tail, *head, "$B:1", *tail],
        special_tokens=[(t, hf.token_to_id(t)) for t in marks],
    )


def _merge_pair(merge: str) -> tuple[str, str]:
    left, _, right = merge.partition(" ")
    return left, right
