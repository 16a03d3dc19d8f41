"""The quantized default held by quality on the real SmolLM2-135M Q4_1 GGUF: the log-likelihood
of a fixed text within 1% of the exact fp32 path, the France question answered "Paris", and the
weights resident near the file's size. (`tests/gguf/test_smollm2.py` holds the fp32 path's
greedy equality with transformers.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cortex.neuron.models.loading import load_model, model_weight_bytes
from cortex.neuron.models.quantized import Int4Linear, Int8Linear, RowsOf, resident_bytes
from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
from tests.gguf.greedy import greedy
from tests.gguf.test_tiny_models import prefill_logits
from tests.support.smollm2 import smollm2_or_skip

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889."
)


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_or_skip()


def log_likelihood(model: torch.nn.Module, ids: list[int]) -> float:
    """Sum of log p(token | prefix) over the text: its prompt logprobs."""
    logprobs = torch.log_softmax(prefill_logits(model, ids).float(), dim=-1)  # [T, V]
    return float(logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum())


def test_quantized_default_keeps_quality_and_size(gguf_path: Path) -> None:
    tokenizer = tokenizer_from_gguf(gguf_path)
    model = load_model(gguf_path, "cpu")  # the default: quantized layers
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, Int4Linear)  # Q4_1
    assert isinstance(model.lm_head, Int8Linear)  # Q8_0 table
    # Tied: the embedding reads the head's rows, one copy of the table as in the file.
    assert isinstance(model.model.embed_tokens, RowsOf)
    resident = resident_bytes(model)
    assert resident == model_weight_bytes(gguf_path)
    assert resident < 1.15 * gguf_path.stat().st_size, (resident, gguf_path.stat().st_size)

    ids = tokenizer.encode(TEXT)
    quantized = log_likelihood(model, ids)
    exact = log_likelihood(load_model(gguf_path, "cpu", "float32"), ids)
    assert abs(quantized - exact) < 0.01 * abs(exact), (quantized, exact)

    chat = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tokenizer.decode(greedy(model, chat, 12, set(tokenizer.eos_token_ids)))
    assert "Paris" in answer
