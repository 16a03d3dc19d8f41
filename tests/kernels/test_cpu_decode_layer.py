"""The CPU's decode layer (`cpu_kernels.decode_layer`: a Llama-family layer as one C call per
decode step) against the same layer run module by module: the same kernels in the same order,
so the logits of every decode step are equal bit for bit. Layers it does not serve (float
weights, fp32, another family's layer, a batch over MAX_ROWS) run as modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cortex.neuron.models import cpu_kernels
from cortex.neuron.models.llama import LlamaForCausalLM
from cortex.neuron.models.loading import load_model
from cortex.neuron.models.quantized import ConcatLinear, Int4Linear, Int8Linear
from tests.architectures.tiny import make_checkpoint
from tests.decoder.paged import PagedRunner
from tests.support.checkpoints import make_tiny_checkpoint

pytestmark = pytest.mark.skipif(
    not cpu_kernels.int4_ready(), reason="no C compiler or no AVX512-VNNI on this host"
)
PROMPTS = [[5, 17, 99, 3, 42, 7, 250, 11, 64], [1, 2, 3], [200, 100, 50, 25, 12, 6]]
# name: (arch, quantize, config overrides)
MODELS = {
    "llama-int4": ("llama", "int4", {}),
    "qwen3-int4": ("qwen3", "int4", {}),  # q/k norms
    "qwen2-int8": ("qwen2", "int8", {}),  # qkv bias
    "mistral-int4-window": ("mistral", "int4", {"sliding_window": 6}),
}


def decode_logits(model: LlamaForCausalLM, prompts: list[list[int]], steps: int, fused: bool):
    """Logits [steps, B, V] of greedy decode steps after one packed prefill, with the fused
    layers or (fused=False) every layer as modules."""
    runner = PagedRunner(model, max_seqs=len(prompts), block_size=4)  # binds: builds `fused`
    if not fused:
        model.fused = [None] * len(model.fused)
    logits = runner.step(list(enumerate(prompts)))
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    tokens = logits[ends].argmax(-1).tolist()
    out = []
    for _ in range(steps):
        out.append(runner.step([(i, [t]) for i, t in enumerate(tokens)]))
        tokens = out[-1].argmax(-1).tolist()
    return torch.stack(out)


def assert_fused_equal_modules(model: LlamaForCausalLM, prompts: list[list[int]], steps: int):
    """Every layer fused, and the decode steps' logits those of the modules, bit for bit."""
    theirs = decode_logits(model, prompts, steps, fused=False)
    ours = decode_logits(model, prompts, steps, fused=True)
    assert all(layer is not None for layer in model.fused)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", list(MODELS))
def test_fused_layers_equal_the_modules_bit_for_bit(tmp_path: Path, name: str) -> None:
    arch, scheme, overrides = MODELS[name]
    path = make_tiny_checkpoint(arch, tmp_path / name, **overrides)
    assert_fused_equal_modules(load_model(path, "cpu", "bfloat16", quantize=scheme), PROMPTS, 12)


def test_a_fused_layer_of_mixed_kernels(tmp_path: Path) -> None:
    """qkv as a Q4_K_M file may hold it: q and k int4, v int8, side by side."""
    path = make_tiny_checkpoint("llama", tmp_path / "llama")
    model = load_model(path, "cpu", "bfloat16", quantize="int4")
    reference = load_model(path, "cpu", "float32")
    for layer, exact in zip(model.model.layers, reference.model.layers, strict=True):
        attn = layer.self_attn
        q_k, v = exact.self_attn.qkv_proj.weight.split([attn.q_size + attn.kv_size, attn.kv_size])
        parts = [Int4Linear.quantize(q_k, None, torch.bfloat16)]
        attn.qkv_proj = ConcatLinear(parts + [Int8Linear.quantize(v, None, torch.bfloat16)])
    assert_fused_equal_modules(model, PROMPTS, 8)


def test_a_batch_over_max_rows_runs_as_modules(tmp_path: Path) -> None:
    path = make_tiny_checkpoint("llama", tmp_path / "llama")
    model = load_model(path, "cpu", "bfloat16", quantize="int4")
    prompts = [[i + 1, 2 * i + 3] for i in range(cpu_kernels.MAX_ROWS + 1)]
    assert_fused_equal_modules(model, prompts, 3)
    layer, x = model.fused[0], torch.zeros(len(prompts), 64, dtype=torch.bfloat16)
    cos = torch.zeros(len(prompts), 1, 16, dtype=torch.bfloat16)
    ids = torch.zeros(len(prompts), dtype=torch.int32)
    assert cpu_kernels.decode_step(layer, x, cos, cos, ids.long(), ids[:, None], ids) is None


@pytest.mark.parametrize(
    ("arch", "dtype", "scheme"),
    [
        ("llama", "bfloat16", None),
        ("llama", "float32", "int4"),
        ("gemma2", "bfloat16", "int4"),
        ("qwen3_moe", "bfloat16", "int4"),
    ],
    ids=["float-weights", "fp32", "gemma2", "qwen3_moe"],
)
def test_layers_the_kernel_does_not_serve_run_as_modules(
    tmp_path: Path, arch: str, dtype: str, scheme: str | None
) -> None:
    """Float layers and fp32 have no kernel; Gemma's sandwich norms and Qwen3-MoE's experts
    compute otherwise than the Llama layer the kernel is."""
    make = make_checkpoint if arch in ("gemma2", "qwen3_moe") else make_tiny_checkpoint
    path = make(arch, tmp_path / arch)
    model = load_model(path, "cpu", dtype, quantize=scheme)
    out = PagedRunner(model).greedy(PROMPTS, 3)
    assert model.fused == [None] * len(model.model.layers)
    assert [len(o) for o in out] == [3] * len(PROMPTS)
