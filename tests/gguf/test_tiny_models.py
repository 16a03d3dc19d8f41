"""Tiny random llama / qwen2 / qwen3 checkpoints, converted to GGUF here, load like safetensors.

Each checkpoint is written by transformers (`make_tiny_checkpoint`) with a real tokenizer, then
converted with llama.cpp's names and keys (`writer.py`: Q8_0, F16 and F32 tensors, Q/K permuted
for llama, Llama 3 RoPE scaling as `rope_freqs`). Loading the GGUF must give the logits of the
same checkpoint with its weights replaced by gguf's own dequantization of the file's tensors, and
the GGUF tokenizer must give the ids of the model's `tokenizer.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from cortex.errors import UnsupportedQuantization
from cortex.neuron.models.attention import AttentionMetadata
from cortex.neuron.models.gguf import find_gguf, gguf_config, gguf_info, load_gguf_model
from cortex.neuron.models.loading import load_model
from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
from cortex.neuron.text.tokenizer import Tokenizer
from tests.conftest import FIXTURES
from tests.gguf.writer import write_gguf, write_reference
from tests.support.checkpoints import make_tiny_checkpoint

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# arch -> (tokenizer fixture, config overrides)
CASES = {
    "llama": (
        "llama3.2",
        {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0, "max_position_embeddings": 16384},
    ),
    "qwen2": ("qwen2.5", {"tie_word_embeddings": False}),  # an untied `output.weight`
    "qwen3": ("qwen3", {}),
}
CORPUS = [
    "Hello, world! How are you today?",
    "In 2024 the price rose from $1,234.56 to 98765 (+12%).",
    "  leading spaces,   runs of   spaces,\ttabs\t\tand\n\n\nnewlines \r\n end   ",
    'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n',
    "Ünïcödé: café naïve façade — 日本語のテキスト, 中文, 한국어, Ελληνικά, русский 🙂👍🏽🇫🇷",
    "decomposed: e\u0301 a\u0308 and ﬁ ligature, zero\u200bwidth",
    "don't it's we'll THEY'RE I'M you've",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><think>hmm</think>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "",
    "    ",
    "x" * 40 + " " + "12345678901234567890",
]


@dataclass
class Converted:
    arch: str
    hf_dir: Path
    gguf: Path
    reference: Path


@pytest.fixture(scope="module", params=list(CASES))
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Converted:
    arch = request.param
    tokenizer, overrides = CASES[arch]
    root = tmp_path_factory.mktemp(arch)
    hf_dir = make_tiny_checkpoint(
        arch, root / "hf", tokenizer_from=FIXTURES / tokenizer, seed=3, **overrides
    )
    gguf = write_gguf(hf_dir, root / "gguf" / f"tiny-{arch}.Q8_0.gguf")
    return Converted(arch, hf_dir, gguf, write_reference(hf_dir, root / "reference"))


def prefill_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Logits [T, V] of one sequence in a single prefill step (no KV cache needed)."""
    n = len(ids)
    attn = AttentionMetadata(
        slot_mapping=torch.arange(n),
        block_tables=torch.zeros(1, 1, dtype=torch.int32),
        context_lens=torch.tensor([n], dtype=torch.int32),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        is_decode=False,
        max_context_len=n,
    )
    with torch.no_grad():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(n), attn))


def test_config_matches_checkpoint(converted: Converted) -> None:
    from cortex.neuron.models.model_config import ModelConfig

    ours, theirs = gguf_config(converted.gguf), ModelConfig.from_dir(converted.hf_dir)
    for key in (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rope_theta",
        "rope_scaling",
        "tie_word_embeddings",
        "attention_bias",
        "qk_norm",
        "bos_token_id",
    ):
        assert getattr(ours, key) == pytest.approx(getattr(theirs, key)), key
    assert ours.rms_norm_eps == pytest.approx(theirs.rms_norm_eps, rel=1e-6)


def test_logits_equal_dequantized_safetensors(converted: Converted) -> None:
    ids = [5, 17, 99, 1000, 42, 7, 123, 64, 31, 2048, 11, 3]
    ours = load_model(converted.gguf, torch.device("cpu"), torch.float32)
    reference = load_model(converted.reference, torch.device("cpu"), torch.float32)
    assert ours.dtype == torch.float32
    expected = prefill_logits(reference, ids)
    torch.testing.assert_close(prefill_logits(ours, ids), expected, rtol=0, atol=1e-4)
    # The quantization matters: the original fp32 weights give measurably different logits.
    original = prefill_logits(load_model(converted.hf_dir, torch.device("cpu"), torch.float32), ids)
    assert (original - expected).abs().max() > 1e-4


def test_directory_holding_the_file_loads(converted: Converted) -> None:
    assert find_gguf(converted.gguf.parent) == converted.gguf
    assert find_gguf(converted.hf_dir) is None  # safetensors win
    model = load_model(converted.gguf.parent, torch.device("cpu"), "bfloat16")
    assert model.dtype == torch.bfloat16


def test_tokenizer_matches_tokenizer_json(converted: Converted) -> None:
    ours = tokenizer_from_gguf(converted.gguf)
    theirs = Tokenizer.from_dir(converted.hf_dir)
    for text in CORPUS:
        for special in (True, False):
            assert ours.encode(text, special) == theirs.encode(text, special), (text, special)
        ids = theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, False)
    # llama.cpp records Qwen's BOS id (add_bos false) where tokenizer_config.json has none.
    assert theirs.bos_token in (None, ours.bos_token)
    assert ours.eos_token == theirs.eos_token
    assert ours.vocab_size >= theirs.vocab_size
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert ours.render_chat(messages) == theirs.render_chat(messages)


def test_info_names_format_and_quantization(converted: Converted) -> None:
    info = gguf_info(converted.gguf.parent)
    assert info["format"] == "gguf"
    assert info["quantization"] == "Q8_0"
    assert info["arch"] == converted.arch
    assert info["bytes"] == converted.gguf.stat().st_size


def test_unsupported_tensor_type_is_refused(tmp_path: Path) -> None:
    """A Q2_K tensor: 422 `unsupported_quantization` naming the tensor, before any allocation."""

    def q2k_down(name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
        return GGMLQuantizationType.F32 if "ffn_down" not in name else GGMLQuantizationType.Q2_K

    hf_dir = make_tiny_checkpoint("qwen3", tmp_path / "hf", vocab_size=256, intermediate_size=256)
    (hf_dir / "tokenizer.json").write_bytes((FIXTURES / "qwen3" / "tokenizer.json").read_bytes())
    path = write_gguf(hf_dir, tmp_path / "q2k.gguf", q2k_down)
    with pytest.raises(UnsupportedQuantization) as err:
        load_gguf_model(path, "cpu")
    assert "blk.0.ffn_down.weight" in err.value.message and "Q2_K" in err.value.message
    assert err.value.code == "unsupported_quantization"


def test_reference_roundtrip_is_not_identity() -> None:
    """Sanity of the oracle itself: Q8_0 changes values, so the logits test compares something."""
    from tests.gguf.writer import roundtrip

    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    assert not np.array_equal(roundtrip(w, GGMLQuantizationType.Q8_0), w)
