"""The real SmolLM2-135M-Instruct Q4_1 GGUF: same tokens and same greedy text as transformers.

transformers reads GGUF files too (`from_pretrained(dir, gguf_file=...)`), through gguf's numpy
dequantization, so its fp32 model and tokenizer are an independent oracle for this file. The file
is fetched once into the test cache (`tests/support/smollm2.py`); without network the tests skip.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from cortex.neuron.models.gguf import gguf_config, gguf_info
from cortex.neuron.models.gguf_file import GGUFFile
from cortex.neuron.models.loading import load_model
from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
from cortex.neuron.text.tokenizer import Tokenizer
from tests.gguf.greedy import greedy
from tests.gguf.writer import assert_same_file
from tests.support.smollm2 import smollm2_or_skip

NEW_TOKENS = 20
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 + 7?",
    "Name three primary colors.",
    "How do I reverse a list in Python?",
]
CORPUS = [
    "Hello, world! How are you today?",
    "In 2024 the price rose from $1,234.56 to 98765 (+12%).",
    "  leading spaces,   runs of   spaces,\ttabs\t\tand\n\n\nnewlines \r\n end   ",
    'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n',
    "Ünïcödé: café naïve façade — 日本語のテキスト, 中文, 한국어, русский 🙂👍🏽🇫🇷",
    "don't it's we'll THEY'RE I'M you've",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><repo_name>x<file_sep>",
    "",
    "    ",
    "x" * 40 + " " + "12345678901234567890",
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_or_skip()


@pytest.fixture(scope="module")
def ours(gguf_path: Path) -> tuple[torch.nn.Module, Tokenizer]:
    start = time.perf_counter()
    model = load_model(gguf_path, torch.device("cpu"), "float32")  # the exact dequantized path
    tokenizer = tokenizer_from_gguf(gguf_path)
    print(f"\ncortex: SmolLM2 Q4_1 model + tokenizer loaded in {time.perf_counter() - start:.2f}s")
    return model, tokenizer


@pytest.fixture(scope="module")
def transformers_model(gguf_path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()


def test_metadata(gguf_path: Path) -> None:
    config = gguf_config(gguf_path)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.tie_word_embeddings and config.vocab_size == 49152
    info = gguf_info(gguf_path.parent)
    assert info == {
        "format": "gguf",
        "quantization": "Q4_1",
        "bytes": gguf_path.stat().st_size,
        "arch": "llama",
        "params": 134_515_008,
        "max_context": 8192,
        "file": gguf_path.name,
    }


def test_parser_agrees_with_gguf_reader(gguf_path: Path) -> None:
    from gguf import GGUFReader

    assert_same_file(GGUFFile(gguf_path), GGUFReader(gguf_path))


def test_tokenizer_matches_transformers(gguf_path: Path, ours: tuple) -> None:
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = ours[1]
    for text in CORPUS:
        for special in (True, False):
            expected = theirs(text, add_special_tokens=special)["input_ids"]
            assert tokenizer.encode(text, special) == expected, (text, special)
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text
    assert tokenizer.eos_token_ids == [theirs.eos_token_id]
    messages = [{"role": "user", "content": PROMPTS[0]}]
    assert tokenizer.render_chat(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_greedy_matches_transformers(ours: tuple, transformers_model: torch.nn.Module) -> None:
    model, tokenizer = ours
    stop = set(tokenizer.eos_token_ids)
    for prompt in PROMPTS:
        ids = tokenizer.encode_chat([{"role": "user", "content": prompt}])
        got = greedy(model, ids, NEW_TOKENS, stop)
        with torch.no_grad():
            out = transformers_model.generate(
                torch.tensor([ids]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=sorted(stop),
                pad_token_id=tokenizer.eos_token_ids[0],
            )
        assert got == out[0, len(ids) :].tolist(), (prompt, tokenizer.decode(got))


def test_capital_of_france_is_paris(ours: tuple) -> None:
    model, tokenizer = ours
    ids = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tokenizer.decode(greedy(model, ids, 16, set(tokenizer.eos_token_ids)))
    assert "Paris" in answer, answer
