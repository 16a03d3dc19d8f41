"""Write a Hugging Face checkpoint as a GGUF file the way llama.cpp's converter does.

llama.cpp tensor names and metadata keys, Q/K rows permuted for the `llama` architecture, the
experts of `qwen3moe` stacked per layer, Gemma's norm weights stored plus 1, Phi-3's LongRoPE
factors as tensors, the tokenizer as `tokenizer.ggml.*` (gguf's own `SpecialVocab` writes merges, special ids, add_bos
and the chat template), each matrix stored as the quantization type the caller picks.

Beside it, `write_reference` saves the same checkpoint with every tensor replaced by what the
GGUF holds, dequantized by gguf's numpy reference: the safetensors model a GGUF load must equal.
Quantizing commutes with the Q/K row permutation (ggml blocks run along a row), so the reference
is computed on the unpermuted weights and never uses cortex's unpermute code.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import (
    GGMLQuantizationType,
    GGUFReader,
    GGUFWriter,
    RopeScalingType,
    SpecialVocab,
    TokenType,
    quants,
)
from gguf.quants import quant_shape_to_byte_shape
from safetensors.numpy import load_file, save_file

from cortex.neuron.models.gguf_file import GGUFFile

Q = GGMLQuantizationType
# HF model_type -> GGUF architecture, where they differ.
GGUF_ARCH = {"qwen3_moe": "qwen3moe", "gemma3_text": "gemma3"}
PRE_NAMES = {
    "llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "qwen3moe": "qwen2",
    "gemma2": "default", "gemma3": "default", "phi3": "default",
}  # fmt: skip
HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_up_proj": "ffn_up",  # phi3's fused gate/up
}
GEMMA_NORMS = {
    "pre_feedforward_layernorm": "ffn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj")

# Picks the storage type of a tensor from its GGUF name and shape.
TypeChooser = Callable[[str, tuple[int, ...]], GGMLQuantizationType]


def mixed_types(name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
    """Q8_0 for most matrices, F16 for V and down projections, F32 for vectors."""
    if len(shape) == 1:
        return Q.F32
    return Q.F16 if name.split(".")[-2] in ("attn_v", "ffn_down") else Q.Q8_0


def gguf_name(hf: str, arch: str = "llama") -> str:
    """The GGUF name of HF tensor `hf`; each expert's projection maps to its stacked tensor."""
    stem, _, kind = hf.rpartition(".")
    if stem in HF_TO_GGUF:
        return f"{HF_TO_GGUF[stem]}.{kind}"
    m = LAYER.fullmatch(hf)
    assert m is not None, hf
    expert = EXPERT.fullmatch(m.group(2))
    if expert is not None:
        return f"blk.{m.group(1)}.ffn_{expert.group(2)}_exps.{m.group(3)}"
    names = {**HF_TO_GGUF, **(GEMMA_NORMS if arch.startswith("gemma") else {})}
    return f"blk.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"


def norm_shift(arch: str, name: str) -> float:
    """What the converter adds to a tensor: 1 to Gemma's (1 + weight) norms, else 0."""
    return 1.0 if arch.startswith("gemma") and name.endswith("norm.weight") else 0.0


def _arch_metadata(w: GGUFWriter, config: dict, arch: str, head_dim: int) -> None:
    """The keys beyond the Llama family's, as llama.cpp's converter writes them."""
    if arch.startswith("gemma"):
        if config.get("attn_logit_softcapping"):
            w.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        if config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(config["final_logit_softcapping"])
        w.add_sliding_window(config["sliding_window"])
        default = 2 if arch == "gemma2" else 6
        slides = [t == "sliding_attention" for t in config["layer_types"]]
        if slides != [(i + 1) % default != 0 for i in range(len(slides))]:
            # Not llama.cpp's assumed pattern: one flag per layer, a form the key also takes.
            w.add_sliding_window_pattern(slides)
    elif arch == "qwen3moe":
        w.add_expert_count(config.get("num_experts") or config["num_local_experts"])
        w.add_expert_used_count(config["num_experts_per_tok"])
        w.add_expert_feed_forward_length(config["moe_intermediate_size"])
    elif arch == "phi3":
        rope = config.get("rope_parameters") or {}
        rotated = int(head_dim * rope.get("partial_rotary_factor", 1.0))
        w.add_rope_dimension_count(rotated)
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        w.add_sliding_window(config.get("sliding_window") or 0)
        scale = config["max_position_embeddings"] / rope["original_max_position_embeddings"]
        w.add_rope_scaling_attn_factors(
            math.sqrt(1 + math.log(scale) / math.log(rope["original_max_position_embeddings"]))
        )
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of Q/K rows (halves -> interleaved pairs per head)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def stored(w: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The bytes (or floats) a GGUF stores for `w` as `qtype`.

    Types gguf cannot quantize (Q2_K...) get zero blocks of the right size: such files are only
    used to test that loading refuses them.
    """
    if qtype == Q.F16:
        return w.astype(np.float16)
    try:
        return quants.quantize(w, qtype)
    except NotImplementedError:
        return np.zeros(quant_shape_to_byte_shape(w.shape, qtype), dtype=np.uint8)


def roundtrip(w: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """What a reader gets back: gguf's numpy dequantization of the stored data."""
    return np.asarray(quants.dequantize(stored(w, qtype), qtype), dtype=np.float32).reshape(w.shape)


def _tokens(hf_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts by id and their types, padded to the model's vocab size as llama.cpp does."""
    data = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    kinds = dict.fromkeys(by_id, TokenType.NORMAL)
    for added in data["added_tokens"]:
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [kinds.get(i, TokenType.UNUSED) for i in range(size)]
    return tokens, types


def llama3_rope_freqs(config: dict, head_dim: int) -> np.ndarray | None:
    """The `rope_freqs.weight` divisors llama.cpp writes for Llama 3 RoPE scaling, else None."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if scaling.get("rope_type") != "llama3":
        return None
    base = config.get("rope_theta") or scaling["rope_theta"]
    factor, old = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelen = 2 * np.pi * base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = (old / wavelen - low) / (high - low)
    between = 1 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, between))
    return divisors.astype(np.float32)


def write_gguf(hf_dir: Path, out: Path, choose: TypeChooser = mixed_types) -> Path:
    """Convert the checkpoint in `hf_dir` to the GGUF file `out`."""
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    arch = GGUF_ARCH.get(config["model_type"], config["model_type"])
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    out.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(out, arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = config.get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)  # Gemma 3: the global layers' RoPE
    w.add_rope_freq_base(config.get("rope_theta") or rope.get("rope_theta", 10000.0))
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_file_type(7)  # MOSTLY_Q8_0
    _arch_metadata(w, config, arch, head_dim)

    tokens, types = _tokens(hf_dir, config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_NAMES[arch])
    w.add_token_list(tokens)
    w.add_token_types(types)
    SpecialVocab(hf_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    experts: dict[str, dict[int, np.ndarray]] = {}
    tensors = []
    for hf, tensor in load_file(hf_dir / "model.safetensors").items():
        name = gguf_name(hf, arch)
        data = tensor.astype(np.float32) + norm_shift(arch, name)
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            data = permute(data, heads if "attn_q" in name else kv_heads)
        expert = EXPERT.search(hf)
        if expert is not None:
            experts.setdefault(name, {})[int(expert.group(1))] = data
        else:
            tensors.append((name, data))
    tensors += [(name, np.stack([e[i] for i in sorted(e)])) for name, e in experts.items()]
    for name, data in tensors:
        qtype = choose(name, data.shape)
        if qtype == Q.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, stored(data, qtype), raw_dtype=qtype)
    divisors = llama3_rope_freqs(config, head_dim)
    if divisors is not None:
        w.add_tensor("rope_freqs.weight", divisors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def write_reference(hf_dir: Path, out_dir: Path, choose: TypeChooser = mixed_types) -> Path:
    """`hf_dir` with each tensor replaced by its GGUF round trip, as a safetensors directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copyfile(f, out_dir / f.name)
    arch = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))["model_type"]
    arch = GGUF_ARCH.get(arch, arch)
    tensors = {}
    for hf, t in load_file(hf_dir / "model.safetensors").items():
        name = gguf_name(hf, arch)
        shift = norm_shift(arch, name)
        tensors[hf] = roundtrip(t.astype(np.float32) + shift, choose(name, t.shape)) - shift
    save_file(tensors, out_dir / "model.safetensors")
    return out_dir


def assert_same_file(ours: GGUFFile, theirs: GGUFReader) -> None:
    """cortex's parser and gguf's `GGUFReader` agree on every field and every tensor's bytes."""
    fields = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields == fields
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.qtype == ref.tensor_type, mine.name
        assert mine.shape == tuple(int(d) for d in reversed(ref.shape.tolist())), mine.name
        assert np.array_equal(mine.data, np.asarray(ref.data).reshape(-1).view(np.uint8))
