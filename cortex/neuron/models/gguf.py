"""Load a llama.cpp GGUF file as a `CausalLM`: config from metadata, tensors renamed to HF names.

GGUF keeps everything in one file: the hyperparameters under `<arch>.*` keys, the tokenizer under
`tokenizer.*` (see `cortex/neuron/text/gguf_tokenizer.py`) and the tensors under llama.cpp's names,
often block-quantized. Here the metadata becomes the same `config.json`-style dict the safetensors
path reads (so `ModelConfig.from_dict` validates both alike), and the tensors are fed to
`CausalLM.load_weights` under their Hugging Face names: block-quantized matrices as their blocks
on the target device (`BlockTensor`), which the model's quantized layers keep (quantized.py),
everything else dequantized (`dequant.py`). `dtype="float32"` dequantizes everything: the exact
reference path.

llama.cpp's converter permutes the rows of Q and K for the `llama` architecture (its RoPE pairs
adjacent dims, HF's pairs the two halves); that permutation is undone here. Qwen files are not
permuted. Beyond the Llama family: `qwen3moe` stacks each layer's experts in one tensor per
projection (split back into HF's per-expert names here), `gemma2` / `gemma3` store every norm
weight plus 1 (llama.cpp's RMSNorm has no (1 + weight)), `phi3` keeps q/k/v and gate/up fused
and its LongRoPE factors as two tensors. The reader memory-maps the file, so nothing is read
twice.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import LlamaFileType

from cortex.errors import ModelLoadFailed, UnsupportedArchitecture
from cortex.neuron.models.architectures import CausalLM, build_model
from cortex.neuron.models.dequant import FLOAT_TYPES, BlockTensor, check_supported, dequantize
from cortex.neuron.models.dtypes import default_dtype, parse_dtype
from cortex.neuron.models.gguf_file import GGUFFile
from cortex.neuron.models.model_config import ModelConfig
from cortex.neuron.models.quantized import Scheme, check_scheme, planned_bytes

# GGUF `general.architecture` -> HF `model_type`.
ARCHITECTURES = {
    "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3_moe",
    "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3",
}  # fmt: skip
# The only architecture whose Q/K rows llama.cpp's converter permutes.
PERMUTED_ARCHITECTURES = {"llama"}
# Architectures whose norm weights the converter stores plus 1.
SHIFTED_NORMS = {"gemma2", "gemma3"}
# llama.cpp's layer counts of the Gemma 27B models, whose attention scale is hidden / heads
# rather than head_dim (llama.cpp derives it from the model size; no key holds it).
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}

GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
}
# Per-architecture differences from BLOCK_TENSORS.
ARCH_BLOCK_TENSORS = {
    "gemma2": {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
ARCH_BLOCK_TENSORS["gemma3"] = ARCH_BLOCK_TENSORS["gemma2"]
# Stacked experts (qwen3moe) -> the per-expert HF projection.
EXPERT_TENSORS = {
    "ffn_gate_exps": "gate_proj",
    "ffn_up_exps": "up_proj",
    "ffn_down_exps": "down_proj",
}
# Phi-3's LongRoPE factors, folded into config.rope_scaling.
ROPE_FACTORS = ("rope_factors_short.weight", "rope_factors_long.weight")
# Llama 3.1+ files carry their RoPE scaling as this tensor of per-frequency divisors.
ROPE_FREQS = "rope_freqs.weight"
BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Which file of a multi-quantization directory to serve: good quality per byte first.
PREFERRED_QUANTS = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_K_S", "Q5_K_S", "Q4_0", "Q4_1")


def find_gguf(path: str | Path) -> Path | None:
    """`path` if it is a `.gguf` file, else the `.gguf` a directory without safetensors holds.

    A directory holding `*.safetensors` is a safetensors model even if a GGUF sits beside it.
    Hub GGUF repositories hold one file per quantization: the first of `PREFERRED_QUANTS` found
    in a file name wins, else the first file by name.
    """
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    # mmproj files are vision projectors, not language models.
    files = sorted(p for p in path.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
    for quant in PREFERRED_QUANTS:
        match = next((f for f in files if quant in f.name.upper()), None)
        if match is not None:
            return match
    return files[0] if files else None


def open_gguf(path: str | Path) -> GGUFFile:
    """The parsed file (tensors memory-mapped). The last two files stay parsed, so loading the
    model and then its tokenizer parse the file once."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise ModelLoadFailed(f"cannot read GGUF file {path}: {e}") from e
    return _parsed(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _parsed(path: Path, mtime_ns: int, size: int) -> GGUFFile:
    return GGUFFile(path)


def architecture(reader: GGUFFile) -> str:
    """`general.architecture`, checked against the ones cortex runs from GGUF."""
    arch = reader.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


def _not_weights(name: str) -> bool:
    """Tensors that are settings (RoPE factors), not model weights."""
    return name == ROPE_FREQS or name in ROPE_FACTORS


def config_dict(reader: GGUFFile) -> dict[str, Any]:
    """The metadata as a `config.json`-style dict for `ModelConfig.from_dict`."""
    arch = architecture(reader)

    def hp(key: str, default: Any = None) -> Any:
        value = reader.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadFailed(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden, heads = int(hp("embedding_length")), int(hp("attention.head_count"))
    tensors = {t.name for t in reader.tensors}
    tokens = reader.get("tokenizer.ggml.tokens")
    eos = [reader.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    config = {
        "model_type": ARCHITECTURES[arch],
        "vocab_size": len(tokens) if tokens else int(hp("vocab_size")),
        "hidden_size": hidden,
        "intermediate_size": int(hp("feed_forward_length")),
        "num_hidden_layers": int(hp("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(hp("attention.head_count_kv", heads)),
        "head_dim": int(hp("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(hp("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(hp("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, arch),
        "max_position_embeddings": int(hp("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "bos_token_id": reader.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": list(dict.fromkeys(int(i) for i in eos if i is not None)),
        "torch_dtype": "bfloat16",
        "sliding_window": reader.get(f"{arch}.attention.sliding_window") or None,
    }
    if arch in SHIFTED_NORMS:
        config.update(_gemma_settings(reader, arch, config))
    elif arch == "qwen3moe":
        config.update(
            num_experts=int(hp("expert_count")),
            num_experts_per_tok=int(hp("expert_used_count")),
            moe_intermediate_size=int(hp("expert_feed_forward_length")),
            # llama.cpp's qwen3moe always renormalises the top-k weights.
            norm_topk_prob=bool(reader.get(f"{arch}.expert_weights_norm", True)),
            mlp_only_layers=[
                i
                for i in range(config["num_hidden_layers"])
                if f"blk.{i}.ffn_gate_inp.weight" not in tensors
            ],
        )
    elif arch == "phi3":
        rotated = int(hp("rope.dimension_count", config["head_dim"]))
        config["partial_rotary_factor"] = rotated / config["head_dim"]
    return config


def _gemma_settings(reader: GGUFFile, arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """Gemma's keys: activation, attention scale, soft-caps, windows and the local RoPE base."""
    wide = config["num_hidden_layers"] == GEMMA_27B_LAYERS[arch]
    # An int (every n-th layer is global), or one bool per layer (True: sliding); llama.cpp's
    # own Gemma converters write neither and assume 2 (gemma2) and 6 (gemma3).
    pattern = reader.get(f"{arch}.attention.sliding_window_pattern") or (
        2 if arch == "gemma2" else 6
    )
    if isinstance(pattern, list):
        kinds = ["sliding_attention" if slides else "full_attention" for slides in pattern]
        windows: dict[str, Any] = {"layer_types": kinds}
    else:
        windows = {"sliding_window_pattern": int(pattern)}
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": (
            config["hidden_size"] // config["num_attention_heads"] if wide else config["head_dim"]
        ),
        "attn_logit_softcapping": reader.get(f"{arch}.attn_logit_softcapping"),
        "final_logit_softcapping": reader.get(f"{arch}.final_logit_softcapping"),
        "rope_local_base_freq": 10000.0,  # llama.cpp hard-codes Gemma 3's local base
        **windows,
    }


def _rope_scaling(reader: GGUFFile, arch: str) -> dict[str, Any] | None:
    """HF `rope_scaling` from `<arch>.rope.scaling.*` or a Llama 3 `rope_freqs` tensor."""
    kind = reader.get(f"{arch}.rope.scaling.type")
    factor = reader.get(f"{arch}.rope.scaling.factor")
    if kind == "linear" and factor:
        return {"rope_type": "linear", "factor": float(factor)}
    if kind not in (None, "none", "linear"):
        original = reader.get(f"{arch}.rope.scaling.original_context_length")
        scaling = {"rope_type": kind, "factor": factor}
        return scaling | ({"original_max_position_embeddings": original} if original else {})
    short, long = (reader.tensor(name) for name in ROPE_FACTORS)
    if short is not None and long is not None:  # Phi-3's LongRoPE
        return {
            "rope_type": "longrope",
            "short_factor": np.asarray(short.data).view(np.float32).tolist(),
            "long_factor": np.asarray(long.data).view(np.float32).tolist(),
            "original_max_position_embeddings": reader.get(
                f"{arch}.rope.scaling.original_context_length"
            ),
            "attention_factor": reader.get(f"{arch}.rope.scaling.attn_factor"),
        }
    tensor = reader.tensor(ROPE_FREQS)
    if tensor is None:
        return None
    return _llama3_scaling(reader, arch, np.asarray(tensor.data).view(np.float32))


def _llama3_scaling(reader: GGUFFile, arch: str, divisors: np.ndarray) -> dict[str, Any]:
    """Recover Llama 3.1 `rope_scaling` from the divisors llama.cpp's converter wrote.

    The converter computes them from factor, low/high frequency factors (1 and 4 in every
    released model) and the original context (8192); only `factor` is free: the largest divisor.
    The recovered settings must reproduce every divisor, else the file is refused.
    """
    heads = int(reader.get(f"{arch}.attention.head_count"))
    dim = int(reader.get(f"{arch}.rope.dimension_count", 0)) or (
        int(reader.get(f"{arch}.embedding_length")) // heads
    )
    base = float(reader.get(f"{arch}.rope.freq_base", 10000.0))
    s = {
        "rope_type": "llama3",
        "factor": float(divisors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    old = s["original_max_position_embeddings"]
    smooth = np.clip((old / wavelen - 1.0) / 3.0, 0.0, 1.0)
    expected = 1.0 / ((1 - smooth) / s["factor"] + smooth)
    if divisors.shape != expected.shape or not np.allclose(divisors, expected, rtol=1e-3):
        raise UnsupportedArchitecture(f"{ROPE_FREQS} does not match Llama 3 RoPE scaling")
    return s


def gguf_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` described by the metadata of a GGUF file (or a directory holding one)."""
    return ModelConfig.from_dict(config_dict(open_gguf(find_gguf(path) or path)))


def hf_name(name: str, arch: str = "llama") -> str:
    """llama.cpp tensor name -> Hugging Face name (`blk.3.attn_q.weight` ->
    `model.layers.3.self_attn.q_proj.weight`); a stacked-experts tensor gives the name with
    `{}` where the expert number goes. Unknown names raise `ModelLoadFailed`."""
    stem, _, kind = name.rpartition(".")
    if stem in GLOBAL_TENSORS and kind in ("weight", "bias"):
        return f"{GLOBAL_TENSORS[stem]}.{kind}"
    m = BLOCK_NAME.fullmatch(name)
    names = {**BLOCK_TENSORS, **ARCH_BLOCK_TENSORS.get(arch, {})}
    if m is not None and m.group(2) in EXPERT_TENSORS:
        return f"model.layers.{m.group(1)}.mlp.experts.{{}}.{EXPERT_TENSORS[m.group(2)]}.weight"
    if m is None or m.group(2) not in names:
        raise ModelLoadFailed(f"GGUF tensor {name!r} has no counterpart in the model")
    return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (per head: interleaved pairs -> two halves)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def iter_weights(
    reader: GGUFFile,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    keep_blocks: bool = False,
) -> Iterator[tuple[str, torch.Tensor | BlockTensor]]:
    """(HF name, tensor on `device`) for every model tensor in the file: dequantized to `dtype`,
    except block-quantized matrices when `keep_blocks` (then a `BlockTensor`; stacked experts
    are always dequantized)."""
    arch = architecture(reader)
    permute = arch in PERMUTED_ARCHITECTURES
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for t in reader.tensors:
        if _not_weights(t.name):
            continue  # already folded into config.rope_scaling
        name = hf_name(t.name, arch)
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        weight: torch.Tensor | BlockTensor
        if keep_blocks and _kept_in_blocks(t.qtype, t.shape) and kind not in EXPERT_TENSORS:
            weight = BlockTensor.from_raw(t.data, t.qtype, t.shape, device)
        else:
            weight = dequantize(t.data, t.qtype, t.shape, device=device, dtype=dtype, name=t.name)
        if permute and kind in heads:  # rows permute alike as values or as whole-block rows
            weight = _rows(weight, lambda rows, h=heads[kind]: unpermute(rows, h))
        if arch in SHIFTED_NORMS and t.name.endswith("norm.weight"):
            weight = weight - 1.0
        if kind in EXPERT_TENSORS:  # [E, rows, cols]: one tensor per expert
            yield from ((name.format(e), w) for e, w in enumerate(weight))
        else:
            yield name, weight


def _load_plan(
    reader: GGUFFile, device: torch.device, dtype: torch.dtype | str | None, quantize: str | None
) -> tuple[torch.dtype, bool, Scheme | None]:
    """How `load_gguf_model` loads this file on `device`: (compute dtype, whether
    block-quantized matrices stay in blocks, the scheme for float linears). `dtype` None is the
    device's default; float32 dequantizes everything, the exact reference."""
    exact = dtype is not None and parse_dtype(dtype) == torch.float32
    run_dtype = parse_dtype(dtype) if dtype is not None else default_dtype(device)
    keep = not exact and any(_kept_in_blocks(t.qtype, t.shape) for t in reader.tensors)
    return run_dtype, keep, check_scheme(quantize)


def _kept_in_blocks(qtype: Any, shape: tuple[int, ...]) -> bool:
    return qtype not in FLOAT_TYPES and len(shape) == 2


def _rows(
    weight: torch.Tensor | BlockTensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor | BlockTensor:
    """`fn` applied to the rows of a tensor, or of a block tensor's bytes."""
    if isinstance(weight, BlockTensor):
        return BlockTensor(fn(weight.data), weight.qtype)
    return fn(weight)


def load_gguf_model(
    path: str | Path,
    device: torch.device | str,
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
) -> CausalLM:
    """Build the `CausalLM` a GGUF file describes on `device`.

    `dtype` None means the device's default compute dtype (`default_dtype`). Block-quantized
    matrices stay quantized (quantized.py) and the float ones are quantized if `quantize`
    ("int8", "int4") says so, unless `dtype` is float32: then everything is dequantized to fp32,
    the exact reference.
    """
    device = torch.device(device)
    file = find_gguf(path)
    if file is None:
        raise ModelLoadFailed(f"no GGUF file at {path}")
    reader = open_gguf(file)
    if int(reader.get("split.count", 1)) > 1:
        raise ModelLoadFailed(
            f"{file.name} is one part of a split GGUF; merge the parts first "
            "(llama-gguf-split --merge)"
        )
    for t in reader.tensors:
        check_supported(t.name, t.qtype)  # refuse before allocating anything
    config = ModelConfig.from_dict(config_dict(reader))
    run_dtype, keep, scheme = _load_plan(reader, device, dtype, quantize)
    model = build_model(config, device, run_dtype, quantize=scheme, blocks=keep)
    model.load_weights(iter_weights(reader, config, device, run_dtype, keep_blocks=keep))
    return model


def gguf_weight_bytes(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Bytes the weights take once `load_gguf_model(path, device, dtype, quantize)` has loaded
    them, from the header only: block-quantized matrices at their quantized size (unless dtype
    is float32), the rest in the compute dtype."""
    device = torch.device(device)
    reader = open_gguf(find_gguf(path) or path)
    weights = [t for t in reader.tensors if not _not_weights(t.name)]
    run_dtype, keep, scheme = _load_plan(reader, device, dtype, quantize)
    if not keep and scheme is None:
        return sum(t.n_elements for t in weights) * run_dtype.itemsize
    config = ModelConfig.from_dict(config_dict(reader))
    model = build_model(config, "meta", run_dtype, quantize=scheme, blocks=keep)
    arch = architecture(reader)
    kinds = {
        hf_name(t.name, arch): t.qtype if keep and _kept_in_blocks(t.qtype, t.shape) else None
        for t in weights
    }
    return planned_bytes(model, kinds, device)


@functools.lru_cache(maxsize=256)
def _info(file: Path, mtime_ns: int) -> dict[str, Any]:
    # Not through open_gguf's cache: listing many files must not keep them all mapped.
    reader = GGUFFile(file)
    file_type = reader.get("general.file_type")
    try:
        quant = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        # No (or an unknown) file type: name it after the commonest type among the matrices.
        counts = Counter(t.qtype.name for t in reader.tensors if len(t.shape) > 1)
        quant = counts.most_common(1)[0][0] if counts else "unknown"
    arch = reader.get("general.architecture")
    return {
        "format": "gguf",
        "quantization": quant,
        "bytes": file.stat().st_size,
        "arch": ARCHITECTURES.get(arch, arch),  # the model_type, as for safetensors
        "params": sum(t.n_elements for t in reader.tensors if not _not_weights(t.name)),
        "max_context": reader.get(f"{arch}.context_length"),
        "file": file.name,
    }


def gguf_info(path: str | Path) -> dict[str, Any]:
    """What `/models` shows for a GGUF model: format, quantization (e.g. "Q4_1"), bytes (the
    file's size), arch, params, max_context, file. Cached per file and modification time."""
    file = find_gguf(path)
    if file is None:
        raise ModelLoadFailed(f"no GGUF file at {path}")
    return dict(_info(file.resolve(), file.stat().st_mtime_ns))
