"""Compile every kernel variant for a CUDA target without a GPU: Triton's front end, its
NVIDIA passes and the ptxas shipped in the triton wheel (what the interpreter never runs).

`python -m tests.kernels.compile_cuda [sm]` (default 90, the H200's); needs TRITON_INTERPRET
unset, so tests/kernels/test_compile.py runs it in a subprocess.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cortex.neuron.models import triton_attention as ta

# A model's shapes: Qwen2-7B-like GQA (7 query heads per KV head), Phi-3's head_dim 96.
SHAPE = {"GROUP": 7, "HEAD_DIM": 96, "DIM_PAD": 128}


def signature(kernel, pointers: dict[str, str]) -> dict[str, str]:
    """Triton types by argument name: `*_ptr` from `pointers` (else the model dtype), the
    score scalars fp32, UPPER_CASE constexpr, the rest (strides, lengths) i32."""
    types = {}
    for name in kernel.arg_names:
        if name.endswith("_ptr"):
            types[name] = pointers.get(name, pointers["model"])
        elif name in ("scale", "softcap"):
            types[name] = "fp32"
        else:
            types[name] = "constexpr" if name.isupper() else "i32"
    return types


def variants(dtype: str):
    """(kernel, signature, constexprs) of every kernel variant the wrappers launch."""
    index = {"block_tables_ptr": "*i32", "context_lens_ptr": "*i32", "query_start_loc_ptr": "*i32"}
    model = {"model": f"*{dtype}", **index}
    partial = {**model, "out_ptr": "*fp32", "lse_ptr": "*fp32"}
    for window in (False, True):
        for softcap in (False, True):
            flags = {"USE_WINDOW": window, "USE_SOFTCAP": softcap}
            for splits, pointers in ((1, {**model, "lse_ptr": f"*{dtype}"}), (4, partial)):
                consts = {**SHAPE, "GROUP_PAD": 16, "TILE": ta.DECODE_TILE, "NUM_SPLITS": splits}
                yield ta._decode_kernel, signature(ta._decode_kernel, pointers), consts | flags
            tiles = {"TILE_M": ta.PREFILL_TILE_M, "TILE_N": ta.PREFILL_TILE_N}
            yield ta._prefill_kernel, signature(ta._prefill_kernel, model), SHAPE | tiles | flags
    merge = {"model": "*fp32", "out_ptr": f"*{dtype}"}
    consts = {"HEADS": 28, "HEAD_DIM": 96, "DIM_PAD": 128, "NUM_SPLITS": 4}
    yield ta._merge_splits_kernel, signature(ta._merge_splits_kernel, merge), consts


def main(sm: int) -> None:
    target = GPUTarget("cuda", sm, 32)
    for kernel, types, consts in variants("bf16"):
        triton.compile(ASTSource(kernel, types, consts), target=target)
        print("compiled", kernel.__name__, {k: v for k, v in consts.items() if k.isupper()})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
