"""Safetensors checkpoints: find the shard files, stream tensors to the device, size weights.

Tensors are read one at a time with `safe_open(..., device=...)`, so each lands directly on the
target device and is copied into its (already allocated) parameter; no full host copy of the
model is ever built. `model_weight_bytes` reads only the JSON headers, for the memory preflight.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from cortex.errors import ModelLoadFailed
from cortex.neuron.models.dtypes import parse_dtype

INDEX_FILE = "model.safetensors.index.json"

# Bytes per element of safetensors dtype codes.
_ST_SIZES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's shard files: from the index if there is one, else `model.safetensors`,
    else every `*.safetensors`."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadFailed(f"cannot read {index}: {e}") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ModelLoadFailed(f"{index} names missing shard files: {', '.join(absent)}")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    # Mistral repos ship a `consolidated.safetensors` in Mistral's own layout beside the HF one.
    files = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("consolidated"))
    if not files:
        raise ModelLoadFailed(f"no *.safetensors files in {path}")
    return files


def iter_safetensors(path: Path, device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor of the checkpoint, each already on `device`."""
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield name, f.get_tensor(name)
        except (OSError, RuntimeError) as e:
            raise ModelLoadFailed(f"cannot read {file}: {e}") from e


def _header(file: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    with file.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def safetensors_weight_bytes(path: Path, dtype: torch.dtype | str | None = None) -> int:
    """Bytes the weights take once loaded in `dtype` (stored dtype when None); reads headers only.

    Tensors the model does not keep (RoPE buffers, a tied lm_head copy) are not counted.
    """
    target = parse_dtype(dtype).itemsize if dtype is not None else None
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    tied = bool(config.get("tie_word_embeddings", False))
    total = 0
    try:
        for file in safetensors_files(path):
            for name, info in _header(file).items():
                if name == "__metadata__" or name.endswith("rotary_emb.inv_freq"):
                    continue
                if tied and name == "lm_head.weight":
                    continue
                numel = 1
                for dim in info["shape"]:
                    numel *= dim
                total += numel * (target or _ST_SIZES.get(info["dtype"], 4))
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise ModelLoadFailed(f"cannot read safetensors headers in {path}: {e}") from e
    return total
