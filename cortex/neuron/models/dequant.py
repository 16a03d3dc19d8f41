"""Dequantize GGUF tensors with torch, on the device that will hold the weights.

Each ggml block type is unpacked by whole-tensor tensor ops (bit shifts, masks, a broadcast
multiply), never by a Python loop over blocks, so a 100 MB file dequantizes in about a second on
one CPU core and far faster on a GPU. The arithmetic follows ggml's reference order (scale times
quant, then the offset) operation for operation, so the fp32 results equal `gguf.quants.dequantize`
bit for bit. Blocks are processed in chunks only to bound the peak memory of the intermediates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from cortex.errors import UnsupportedQuantization

Q = GGMLQuantizationType
QK_K = 256
# Blocks unpacked per step: bounds the fp32 intermediates to a few hundred MB.
CHUNK_BLOCKS = 1 << 18


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 pairs of bytes `[n, 2]` as fp32 `[n, 1]`."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, groups: int) -> torch.Tensor:
    """`[n, groups*L]` bytes -> `[n, groups*2, L]`: each group's low nibbles, then its high."""
    n = qs.shape[0]
    qs = qs.reshape(n, groups, 1, -1) >> _shifts(qs, (0, 4)).reshape(1, 1, 2, 1)
    return (qs & 0x0F).reshape(n, groups * 2, -1)


def _shifts(like: torch.Tensor, values: tuple[int, ...] | range) -> torch.Tensor:
    return torch.tensor(list(values), dtype=like.dtype, device=like.device)


def _bits32(raw: torch.Tensor) -> torch.Tensor:
    """Four little-endian bytes `[n, 4]` -> their 32 bits `[n, 32]` (bit i at column i)."""
    word = raw.to(torch.int64)
    word = word[:, 0] | word[:, 1] << 8 | word[:, 2] << 16 | word[:, 3] << 24
    return ((word[:, None] >> _shifts(word, range(32))[None, :]) & 1).to(torch.uint8)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float().mul_(_f16(b[:, :2]))


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:], 1).reshape(b.shape[0], 32).to(torch.int8) - 8
    return q.float().mul_(_f16(b[:, :2]))


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 4:], 1).reshape(b.shape[0], 32).float()
    return q.mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1 quants `[n, 32]`: low nibbles from `qs`, fifth bit from the 32-bit mask `qh`."""
    return _nibbles(qs, 1).reshape(qs.shape[0], 32) | (_bits32(qh) << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _five_bit(b[:, 2:6], b[:, 6:]).to(torch.int8) - 16
    return q.float().mul_(_f16(b[:, :2]))


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _five_bit(b[:, 4:8], b[:, 8:]).float()
    return q.mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: the 8 sub-block scales and mins `[n, 8, 1]` (6-bit, packed in 12 bytes)."""
    n = b.shape[0]
    s = b[:, 4:16].reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1).float()
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1).float()
    scale = (_f16(b[:, 0:2]) * sc).reshape(n, 8, 1)
    offset = (_f16(b[:, 2:4]) * mn).reshape(n, 8, 1)
    return scale, offset


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    scale, offset = _k_scales(b)
    q = _nibbles(b[:, 16:], 4).float()
    return q.mul_(scale).sub_(offset).reshape(b.shape[0], QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scale, offset = _k_scales(b)
    qh = b[:, 16:48].reshape(n, 1, 1, 32) >> _shifts(b, range(8)).reshape(1, 1, 8, 1)
    q = _nibbles(b[:, 48:], 4) | ((qh & 1).reshape(n, 8, 32) << 4)
    return q.float().mul_(scale).sub_(offset).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    scale = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    ql = _nibbles(b[:, :128], 2).reshape(n, 8, 32)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> _shifts(b, (0, 2, 4, 6)).reshape(1, 1, 4, 1)
    q = (ql | ((qh & 0x03).reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return q.reshape(n, 16, 16).float().mul_(scale).reshape(n, QK_K)


BLOCK_KERNELS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
FLOAT_TYPES: dict[GGMLQuantizationType, torch.dtype] = {
    Q.F32: torch.float32,
    Q.F16: torch.float16,
    Q.BF16: torch.bfloat16,
}
SUPPORTED_TYPES = frozenset(BLOCK_KERNELS) | frozenset(FLOAT_TYPES)


def check_supported(name: str, qtype: GGMLQuantizationType) -> None:
    """Raise `UnsupportedQuantization` naming the tensor unless `qtype` can be dequantized."""
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise UnsupportedQuantization(
            f"tensor {name!r} is stored as {qtype.name}, which cortex cannot dequantize "
            f"(supported: {supported})"
        )


def _as_bytes(raw: np.ndarray) -> torch.Tensor:
    """A GGUF tensor's bytes (any numpy view) as a flat uint8 tensor sharing their memory."""
    with warnings.catch_warnings():
        # A read-only memory map is fine: every path below copies before anything could write.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(raw).reshape(-1).view(np.uint8))


def dequantize(
    raw: np.ndarray,
    qtype: GGMLQuantizationType,
    shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str = "tensor",
) -> torch.Tensor:
    """The tensor stored in `raw` (a GGUF tensor's bytes, any numpy view) as `dtype` on `device`.

    `shape` is the torch/numpy order (outermost first, i.e. GGUF's dims reversed). The bytes are
    shared with `raw` (no host copy) until they reach `device`; the result never aliases `raw`.
    """
    check_supported(name, qtype)
    data = _as_bytes(raw)
    if qtype in FLOAT_TYPES:
        flat = data.view(FLOAT_TYPES[qtype])
        return flat.to(device=device, dtype=dtype, copy=True).reshape(shape)
    return dequantize_blocks(data.to(device), qtype, dtype).reshape(shape)


def dequantize_blocks(
    data: torch.Tensor, qtype: GGMLQuantizationType, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """ggml blocks of `qtype` (uint8, any shape whose last dim holds whole blocks, on any device)
    -> their values `[..., elements]` in `dtype` on the same device."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    lead = data.shape[:-1]
    blocks = data.reshape(-1, type_size)
    kernel = BLOCK_KERNELS[qtype]
    elements = data.shape[-1] // type_size * block_size if data.dim() else 0
    if blocks.shape[0] <= CHUNK_BLOCKS:
        # One piece: the kernel's fp32 result is the answer (no second buffer, no copy).
        return kernel(blocks).to(dtype).reshape(*lead, elements)
    out = torch.empty(blocks.shape[0], block_size, dtype=dtype, device=data.device)
    for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
        out[start : start + CHUNK_BLOCKS] = kernel(blocks[start : start + CHUNK_BLOCKS])
    return out.reshape(*lead, elements)


@dataclass
class BlockTensor:
    """A 2-D GGUF tensor still in ggml blocks, on its device: `data` [rows, row_bytes] uint8.

    Each row holds whole blocks (a row's length is a multiple of the block size), so rows can be
    selected, permuted and concatenated as bytes.
    """

    data: torch.Tensor
    qtype: GGMLQuantizationType

    @classmethod
    def from_raw(
        cls,
        raw: np.ndarray,
        qtype: GGMLQuantizationType,
        shape: tuple[int, int],
        device: torch.device | str,
    ) -> BlockTensor:
        """The bytes of a GGUF tensor of torch-order `shape` [rows, cols], copied to `device`."""
        data = _as_bytes(raw).to(device, copy=True)
        return cls(data.reshape(shape[0], -1), qtype)

    @property
    def shape(self) -> tuple[int, int]:
        """[rows, cols] in elements."""
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        return self.data.shape[0], self.data.shape[1] // type_size * block_size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values [rows, cols] in `dtype`."""
        return dequantize_blocks(self.data, self.qtype, dtype)


# Types whose blocks are 32-value groups of 4-bit quants with a scale and an offset.
INT4_TYPES = frozenset({Q.Q4_0, Q.Q4_1, Q.Q4_K})


def int4_groups(t: BlockTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The quants of a Q4_0/Q4_1/Q4_K tensor as 32-wide groups with `w = (q - 8) * scale + zero`.

    Returns q [rows, cols] uint8 in 0..15 and scale, zero [rows, cols / 32] fp32: the
    asymmetric int4 layout of torch's weight-only int4 kernels. The values equal the
    dequantized ones up to fp32 rounding (the kernels then round scale and zero to their dtype).
    """
    rows = t.data.shape[0]
    b = t.data.reshape(-1, GGML_QUANT_SIZES[t.qtype][1])  # [blocks, type_size]
    if t.qtype == Q.Q4_K:
        scale, offset = _k_scales(b)  # [n, 8, 1] each: q * scale - offset
        q = _nibbles(b[:, 16:], 4)  # [n, 8, 32]
        zero = scale * 8 - offset
    else:
        d = _f16(b[:, :2])  # [n, 1]
        # Q4_0: (q - 8) * d; Q4_1: q * d + m = (q - 8) * d + (m + 8d).
        zero = torch.zeros_like(d) if t.qtype == Q.Q4_0 else _f16(b[:, 2:4]) + d * 8
        q = _nibbles(b[:, 2 if t.qtype == Q.Q4_0 else 4 :], 1)  # [n, 2, 16]
        scale = d
    return q.reshape(rows, -1), scale.reshape(rows, -1), zero.reshape(rows, -1)
