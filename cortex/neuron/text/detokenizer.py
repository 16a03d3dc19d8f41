"""Incremental detokenization for streaming, with vLLM's prefix/read offsets.

Each step decodes only a short window of ids: `prefix_offset..read_offset` (text already emitted,
kept as context so that merges and leading-space rules come out as in a full decode) and
`prefix_offset..end`. The difference is the new text. When the new text ends in U+FFFD, the last
token ended inside a UTF-8 character (byte-level BPE pieces or `<0xNN>` byte-fallback tokens), so
nothing is emitted and the window grows until the character is complete. The window therefore
stays a few tokens long, whatever the length of the output.

Byte-fallback decoders render a run of `<0xNN>` tokens as a whole, and an invalid run becomes one
U+FFFD per byte, so while the window ends in a byte token and its new text holds a U+FFFD, nothing
is emitted until a normal token ends the run. A run that decodes validly so far is emitted
character by character; should such a run turn invalid later (only garbage output does), the
stream shows its first characters where a full decode shows U+FFFD.

The window starts with the last few prompt tokens, so the first generated token decodes with the
leading space it has after the prompt (SentencePiece tokenizers strip a leading space at the very
start of a decode): prompt text + streamed text equals the decode of prompt + output.

Special tokens are dropped from the ids before decoding (what `skip_special_tokens` does), except
those named in `keep_special` (e.g. Llama 3's `<|python_tag|>`, which the tool-call parser reads).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cortex.neuron.text.tokenizer import Tokenizer

# Prompt tokens kept as context for the first generated token (as vLLM does).
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns generated ids into text pieces that never end inside a UTF-8 character."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        keep_special: Iterable[str] = (),
    ) -> None:
        self._hf = tokenizer.hf
        self._byte_ids = tokenizer.byte_token_ids
        kept = {tokenizer.token_id(t) for t in keep_special}
        self._skip = frozenset(tokenizer.special_ids - kept) if skip_special_tokens else frozenset()
        context = [i for i in prompt_ids if i not in self._skip][-_CONTEXT_TOKENS:]
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._hf.decode(self._ids[start:end], skip_special_tokens=False)

    def push(self, ids: Iterable[int]) -> str:
        """Add generated ids; return the text they complete (possibly "")."""
        before = len(self._ids)
        self._ids.extend(i for i in ids if i not in self._skip)
        if len(self._ids) == before:
            return ""
        text = self._decode(self._prefix_offset)
        new = text[len(self._prefix_text) :]
        if (
            not new
            or new.endswith(_REPLACEMENT)
            or (_REPLACEMENT in new and self._ids[-1] in self._byte_ids)
        ):
            return ""
        # The next window starts at the old read offset: enough context for the merges that a
        # following token can still change, and short.
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        return new

    def flush(self) -> str:
        """The text still held back at the end of generation (an incomplete character decodes
        to U+FFFD here, as in a full decode)."""
        if self._read_offset == len(self._ids):
            return ""
        text = self._decode(self._prefix_offset)
        new = text[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self._prefix_text = ""
        return new
