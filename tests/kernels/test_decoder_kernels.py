"""The decoder with its attention on the Triton kernels equals the decoder on SDPA.

Packed prefill, a chunk over a cached prefix, then batched decode steps, through the model's
own calls (strided q, K/V stored by the layer, per-layer windows, scales and soft-caps). The
kernels are forced onto the test's device: CPU tensors under the interpreter (conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from cortex.neuron.models import attention, triton_attention
from cortex.neuron.models.loading import load_model
from tests.architectures.tiny import make_checkpoint
from tests.decoder.paged import PagedRunner
from tests.support.checkpoints import make_tiny_checkpoint

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROMPTS = [
    [5, 17, 99, 3, 42, 7, 250, 11, 64, 300, 8, 21, 444],
    [1, 2, 3],
    [200, 100, 50, 25, 12, 6, 3, 1, 0, 9, 8, 77, 500, 13, 14, 15, 16, 90, 91],
]
CHUNK = [(0, [7, 8, 9, 10, 11]), (2, [12, 13, 14])]  # prefill over each one's cached prefix
DECODE_STEPS = 4
# Gemma 2: a sliding window of 5 then a global layer, soft-capped scores, its own scale.
# Qwen3: head_dim 32, two query heads per KV head.
MAKERS = {
    "gemma2": lambda path: make_checkpoint("gemma2", path),
    "qwen3": lambda path: make_tiny_checkpoint("qwen3", path, vocab_size=512),
}


def logits_of_steps(runner: PagedRunner) -> list[torch.Tensor]:
    runner.reset()
    out = [runner.step(list(enumerate(PROMPTS))), runner.step(CHUNK)]
    nxt = [0, 1, 2]
    for _ in range(DECODE_STEPS):
        out.append(runner.step([(i, [t]) for i, t in enumerate(nxt)]))
        nxt = out[-1].argmax(-1).tolist()
    return out


@pytest.mark.parametrize("arch", list(MAKERS))
def test_decoder_on_kernels_equals_sdpa(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(MAKERS[arch](tmp_path / arch), DEVICE, torch.float32)
    runner = PagedRunner(model, max_seqs=3, max_len=64, block_size=4)
    monkeypatch.setattr(attention, "_kernels", lambda device: None)
    expected = logits_of_steps(runner)
    monkeypatch.setattr(attention, "_kernels", lambda device: triton_attention)
    got = logits_of_steps(runner)
    for ours, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
