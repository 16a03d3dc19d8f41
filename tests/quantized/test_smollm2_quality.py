"""The quantized default held by quality on the real SmolLM2-135M Q4_1 GGUF: the log-likelihood
of a fixed text within 1% of the exact fp32 path (prefilled, and decoded token by token), the France question answered "Paris", and the
weights resident near the file's size. (`tests/gguf/test_smollm2.py` holds the fp32 path's
greedy equality with transformers.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cortex.neuron.models.loading import load_model, model_weight_bytes
from cortex.neuron.models.quantized import Int4Linear, Int8Linear, RowsOf, resident_bytes
from cortex.neuron.text.gguf_tokenizer import tokenizer_from_gguf
from tests.decoder.paged import PagedRunner
from tests.gguf.greedy import greedy
from tests.gguf.test_tiny_models import prefill_logits
from tests.support.smollm2 import smollm2_or_skip

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889."
)
# Longer, for the log-likelihood decoded token by token: one short text's figure moves by
# tenths of a percent with the rounding of a few tokens.
STORY = TEXT + (
    " Locally nicknamed La dame de fer, it was constructed as the centerpiece of the 1889 "
    "World's Fair, and to crown the centennial anniversary of the French Revolution. Although "
    "initially criticised by some of France's leading artists and intellectuals for its design, "
    "it has since become a global cultural icon of France and one of the most recognisable "
    "structures in the world. The tower received 5,889,000 visitors in 2022. It is the most "
    "visited monument with an entrance fee in the world. The tower is 330 metres tall, about "
    "the same height as an 81-storey building, and the tallest structure in Paris. Its base is "
    "square, measuring 125 metres on each side. During its construction, the Eiffel Tower "
    "surpassed the Washington Monument to become the tallest human-made structure in the "
    "world, a title it held for 41 years until the Chrysler Building in New York City was "
    "finished in 1930. It was the first structure in the world to surpass both the 200-metre "
    "and 300-metre mark in height. The tower has three levels for visitors, with restaurants "
    "on the first and second levels. The top level's upper platform is 276 metres above the "
    "ground, the highest observation deck accessible to the public in the European Union."
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

    # Decoded one token at a time, as served: on a CPU with the C kernels, the fused layers
    # and their int4 matmul over int8-quantized activations.
    story = tokenizer.encode(STORY)
    runner = PagedRunner(model, max_seqs=1, max_len=len(story))
    steps = [runner.step([(0, [token])]) for token in story]  # [1, V] each
    logprobs = torch.log_softmax(torch.cat(steps).float(), dim=-1)
    decoded = float(logprobs[:-1].gather(1, torch.tensor(story[1:])[:, None]).sum())
    exact = log_likelihood(load_model(gguf_path, "cpu", "float32"), story)
    assert abs(decoded - exact) < 0.01 * abs(exact), (decoded, exact)

    chat = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = tokenizer.decode(greedy(model, chat, 12, set(tokenizer.eos_token_ids)))
    assert "Paris" in answer
