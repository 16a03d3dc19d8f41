"""Incremental detokenization equals a full decode and never emits half a character."""

from __future__ import annotations

import random

import pytest

from cortex.neuron.text.detokenizer import IncrementalDetokenizer

PIECES = [
    "the",
    " quick",
    " fox",
    ",",
    " ",
    "\n",
    "  ",
    "é",
    "ü",
    "ß",
    "naïve",
    "日本語",
    "中文",
    "한국어",
    "🙂",
    "👍🏽",
    "👨‍👩‍👧",
    "🇨🇭",
    "∑",
    "→",
    "\t",
    "x=1;",
    "ﬁ",
    "Ω",
]


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(n))


def stream(tok, prompt, ids, rng=None):
    det = IncrementalDetokenizer(tok, prompt)
    chunks, i = [], 0
    while i < len(ids):
        step = rng.randint(1, 3) if rng else 1
        chunks.append(det.push(ids[i : i + step]))
        i += step
    return chunks, det.flush()


def expected(tok, prompt, ids):
    """What the stream must add to the prompt's text: decode(prompt + ids) minus the prompt."""
    context = [i for i in prompt if i not in tok.special_ids][-5:]
    full, head = tok.decode(context + ids), tok.decode(context)
    assert full.startswith(head)
    return full[len(head) :]


@pytest.fixture(scope="module", params=["qwen3", "llama3.2", "stories260k"])
def tok(request, load_tokenizer):
    return load_tokenizer(request.param)


def test_text_streams_one_token_at_a_time(tok):
    rng = random.Random(1)
    prompt = tok.encode("Write something:")
    for _ in range(20):
        ids = tok.encode(random_text(rng, 40), add_special_tokens=False)
        chunks, tail = stream(tok, prompt, ids)
        assert all("\ufffd" not in c for c in chunks)
        assert "".join(chunks) + tail == expected(tok, prompt, ids)
        if type(tok.hf.decoder).__name__ == "ByteLevel":
            assert tail == "" and "".join(chunks) == tok.decode(
                ids
            )  # no leading-space rules: no context effects


def test_several_ids_per_push(tok):
    rng = random.Random(2)
    for _ in range(10):
        ids = tok.encode(random_text(rng, 30), add_special_tokens=False)
        chunks, tail = stream(tok, [], ids, rng)
        assert all("\ufffd" not in c for c in chunks)
        assert "".join(chunks) + tail == expected(tok, [], ids)


def test_random_ids_equal_full_decode(tok):
    if tok.byte_token_ids:
        pytest.skip("byte-fallback runs that turn invalid are streamed as far as they were valid")
    rng = random.Random(3)
    normal = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    for _ in range(20):
        ids = [rng.choice(normal) for _ in range(60)]
        chunks, tail = stream(tok, [], ids)
        assert "".join(chunks) + tail == expected(tok, [], ids)


def test_special_tokens_skipped_or_kept(load_tokenizer):
    tok = load_tokenizer("llama3.2")
    ids = [128010, *tok.encode('{"a": 1}', add_special_tokens=False), 128009]
    det = IncrementalDetokenizer(tok, [128000])
    assert "".join(det.push([i]) for i in ids) + det.flush() == '{"a": 1}'
    det = IncrementalDetokenizer(tok, [128000], keep_special=["<|python_tag|>"])
    assert "".join(det.push([i]) for i in ids) + det.flush() == '<|python_tag|>{"a": 1}'


def test_incomplete_character_at_the_end_is_flushed(load_tokenizer):
    tok = load_tokenizer("stories260k")
    ids = tok.encode("a🙂", add_special_tokens=False)[:-1]  # drop the emoji's last byte token
    det = IncrementalDetokenizer(tok)
    assert "".join(det.push([i]) for i in ids) == "a"
    assert det.flush() == tok.decode(ids)[1:]


def test_first_token_keeps_its_space_after_the_prompt(load_tokenizer):
    tok = load_tokenizer("stories260k")
    prompt = tok.encode("The sky was")
    ids = tok.encode("The sky was very shiny", add_special_tokens=False)[len(prompt) - 1 :]
    chunks, tail = stream(tok, prompt, ids)
    assert "".join(chunks) + tail == " very shiny"


class CountingHF:
    """Wraps a `tokenizers.Tokenizer` and records the longest id list decoded."""

    def __init__(self, hf):
        self.hf, self.longest = hf, 0

    def decode(self, ids, skip_special_tokens=True):
        self.longest = max(self.longest, len(ids))
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)


def test_window_stays_short_for_long_outputs(tok):
    ids = tok.encode(random_text(random.Random(4), 1500), add_special_tokens=False)
    counting = CountingHF(tok.hf)
    det = IncrementalDetokenizer(tok, tok.encode("Go:"))
    det._hf = counting
    text = "".join(det.push([i]) for i in ids) + det.flush()
    assert len(ids) > 1000 and text
    assert counting.longest <= 16
