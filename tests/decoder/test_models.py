"""The hand-written decoder against transformers on tiny random checkpoints of each architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from cortex.neuron.models.llama import rms_normalize
from cortex.neuron.models.loading import load_model
from tests.decoder.paged import PagedRunner
from tests.support.checkpoints import make_tiny_checkpoint

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
# Variants beyond the four plain architectures: (arch, config overrides).
VARIANTS = {
    **{arch: (arch, {}) for arch in ARCHS},
    "llama-rope-llama3": ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    "llama-rope-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "qwen3-rope-yarn": (
        "qwen3",
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
            }
        },
    ),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "mistral-window": ("mistral", {"sliding_window": 6}),
}
PROMPTS = [
    [5, 17, 99, 3, 42, 7, 250, 11, 64],
    [1, 2, 3],
    [200, 100, 50, 25, 12, 6, 3, 1, 0, 9, 8, 77],
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        name: make_tiny_checkpoint(arch, root / name, **overrides)
        for name, (arch, overrides) in VARIANTS.items()
    }


def hf_model(path: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.generation_config.eos_token_id = None  # greedy to the full length, like ours
    return model.eval()


@torch.inference_mode()
def hf_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prefill_logits_match_transformers(checkpoints: dict[str, Path], name: str) -> None:
    """A packed prefill of three prompts equals transformers on each prompt (fp32, 1e-4)."""
    path = checkpoints[name]
    runner = PagedRunner(load_model(path, "cpu", torch.float32))
    logits = runner.step(list(enumerate(PROMPTS)))
    reference = hf_model(path)
    start = 0
    for prompt in PROMPTS:
        ours = logits[start : start + len(prompt)]
        start += len(prompt)
        assert (ours - hf_logits(reference, prompt)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", [*ARCHS, "mistral-window"])
def test_stepwise_decode_equals_full_recompute(checkpoints: dict[str, Path], name: str) -> None:
    """Prefill, a chunk over a cached prefix, then one token at a time == one full prefill."""
    runner = PagedRunner(load_model(checkpoints[name], "cpu", torch.float32), block_size=4)
    ids = PROMPTS[2] + PROMPTS[0]
    full = runner.step([(0, ids)])
    runner.reset()
    pieces = [runner.step([(0, ids[:5])]), runner.step([(0, ids[5:11])])]
    pieces += [runner.step([(0, [t])]) for t in ids[11:]]
    assert (torch.cat(pieces) - full).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", list(VARIANTS))
def test_greedy_matches_transformers_generate(checkpoints: dict[str, Path], name: str) -> None:
    """32 greedy tokens per prompt, decoded as one batch, equal transformers' generate."""
    path = checkpoints[name]
    runner = PagedRunner(load_model(path, "cpu", torch.float32))
    ours = runner.greedy(PROMPTS, 32)
    reference = hf_model(path)
    for prompt, out in zip(PROMPTS, ours, strict=True):
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            gen = reference.generate(
                ids,
                attention_mask=torch.ones_like(ids),  # else token 0 reads as padding
                max_new_tokens=32,
                do_sample=False,
                pad_token_id=0,
            )
        assert out == gen[0, len(prompt) :].tolist()


def test_batched_decode_equals_each_alone(checkpoints: dict[str, Path]) -> None:
    runner = PagedRunner(load_model(checkpoints["qwen3"], "cpu", torch.float32))
    together = runner.greedy(PROMPTS, 16)
    alone = [runner.greedy([p], 16)[0] for p in PROMPTS]
    assert together == alone


def test_tied_embeddings_share_one_tensor(checkpoints: dict[str, Path]) -> None:
    model = load_model(checkpoints["qwen2-tied"], "cpu", torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_bfloat16_load_runs(checkpoints: dict[str, Path]) -> None:
    model = load_model(checkpoints["qwen3"], "cpu", "bfloat16")
    assert model.dtype == torch.bfloat16
    out = PagedRunner(model).greedy(PROMPTS[:2], 4)
    assert [len(o) for o in out] == [4, 4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 576), (37, 576), (5, 9, 64)])
def test_rms_normalize_equals_fp32_rms_norm_bit_for_bit(dtype, shape) -> None:
    """The one-layer_norm RMSNorm gives what an fp32 rms_norm cast back gives, exactly."""
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 50.0):
        x = (torch.randn(shape, generator=gen) * scale).to(dtype)
        expected = F.rms_norm(x.float(), (shape[-1],), eps=1e-6).to(dtype)
        assert torch.equal(rms_normalize(x, 1e-6), expected)
