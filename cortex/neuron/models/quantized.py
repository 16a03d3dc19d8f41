"""Weight-only quantized layers, and the placeholder that assembles them at load.

A quantized layer keeps its weight narrow on the device and multiplies it with torch's own
weight-only kernels (no extra dependency); its forward contract is nn.Linear's (or
nn.Embedding's), so the decoder does not know it is there.

- `Int4Linear`: asymmetric 4-bit groups of 32 along the input dim: cortex's own layout and C
  kernels on a CPU with AVX512-VNNI, else torch's packing for `_weight_int4pack_mm_for_cpu` on
  CPU and tinygemm's `_weight_int4pack_mm` on CUDA (bf16 only); see the class. GGUF's Q4_0, Q4_1
  and Q4_K blocks are such groups, so they load without requantizing (up to the rounding of
  scale and zero).
- `Int8Linear`: int8 rows with one scale per output channel: on CPU the C kernel of
  cpu_kernels.py for a decode step's few bf16 rows (twice torch's speed on the lm_head), else
  `_weight_int8pack_mm`; an int8 -> dtype cast inside the matmul elsewhere. Q8_0, Q5_* and
  Q6_K (no 5-, 6- or group-scaled 8-bit kernel exists in torch) are requantized to it from
  their exact values: the error is at most half a step of the row's scale (max |w| / 254).
- `BlockEmbedding`: a GGUF embedding table kept in its ggml blocks; a lookup dequantizes only the
  rows it gathers, so it equals the dequantized table exactly.
- `RowsOf`: a tied embedding whose table is the quantized lm_head's: lookups read the head's
  rows, so the table is held once (as llama.cpp holds it), not twice.
- `ConcatLinear`: a fused layer whose GGUF parts need different kernels (Q4_K_M stores v in
  Q6_K in some layers): one layer per run of parts, so the Q4 parts stay int4.

`Pending` stands in for a layer while the model streams in: the loader fills its parts (the HF
tensors of a fused layer) and, once the last one is in, `build` makes the real layer from them,
so no full-precision copy of the model ever exists.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from cortex.errors import ModelLoadFailed
from cortex.neuron.models import cpu_kernels
from cortex.neuron.models.dequant import INT4_TYPES, BlockTensor, dequantize_blocks, int4_groups

Scheme = Literal["int8", "int4"]
SCHEMES: tuple[Scheme, ...] = ("int8", "int4")
GROUP = 32  # int4 group width: GGUF's Q4 block size
# A prefill dequantizes an int4 weight (cortex's CPU layout) in slices of this size: they stay
# in the cache for the matmul, and a buffer this small is reused by the allocator where a whole
# large layer's would be mapped, zeroed and faulted in afresh each time (2x slower at 64-128
# rows on a 12288 x 4096 layer).
DEQUANTIZED_BYTES = 8 << 20
# Weight: a float tensor, or a GGUF tensor still in blocks.
Weight = torch.Tensor | BlockTensor
# A part of a pending layer as planning sees it: its GGUF block type (None: floats) and rows.
PartKind = tuple[GGMLQuantizationType | None, int]


class Int4Linear(nn.Module):
    """y = x @ W.T (+ b), W held as int4 groups of GROUP along the input dim. Build with
    `from_groups` (or `quantize`). Two layouts, chosen at build:

    - cortex's, on a CPU whose C kernels have the int4 matmul (`cpu_kernels.int4_ready`):
      `packed` [N, K / 2] uint8, each group's 32 values as 16 bytes (byte j holds value j in its
      low nibble, value j + 16 in its high one), and `scales_and_mins` fp16 [2, N, K / GROUP]:
      w = q * scale + min. Up to `cpu_kernels.INT4_ROWS` rows (decode steps, short prompts)
      go through `cpu_kernels.int4_matmul`, which quantizes them to int8 per group (as
      llama.cpp does); more rows (a prefill) through torch's dense matmul of the dequantized
      weight (`DEQUANTIZED_BYTES` at a time), there 1.9-2.3x faster than torch's int4 kernel
      (128 and 600 rows; at 9-32 rows the C matmul is 0.8-1.3x its speed).
      fp16 holds GGUF's Q4_0 and Q4_1 scales and minima exactly.
    - torch's, elsewhere: `packed` as `_convert_weight_to_int4pack(_for_cpu)` lays it out and
      `scales_and_zeros` [K / GROUP, N, 2] in the compute dtype, w = (q - 8) * scale + zero.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        cortex: bool,
    ) -> None:
        super().__init__()
        self.cortex = cortex  # the layout: cortex's (True) or torch's
        self.dtype = dtype  # of the inputs and outputs
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_mins" if cortex else "scales_and_zeros", scales)
        self.register_buffer("bias", bias)
        if cortex:
            self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        else:
            self.in_features = scales.shape[0] * GROUP
            self.out_features = scales.shape[1]

    @staticmethod
    def cortex_layout(device: torch.device, dtype: torch.dtype) -> bool:
        """Whether a layer on `device` computing in `dtype` is built in cortex's layout."""
        cpu = device.type == "cpu" and dtype in (torch.bfloat16, torch.float32)
        return cpu and cpu_kernels.int4_ready()

    @staticmethod
    def fits(shape: tuple[int, int], device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the kernels take a [N, K] weight on `device` computing in `dtype`."""
        n, k = shape
        if k % GROUP:
            return False
        if device.type == "cpu":
            return Int4Linear.cortex_layout(device, dtype) or n % 16 == 0
        # tinygemm: bf16 only, K a multiple of 16 x its inner tiles (at least 2), N of 8.
        return device.type == "cuda" and dtype == torch.bfloat16 and n % 8 == 0 and k % 32 == 0

    @staticmethod
    def scale_bytes(device: torch.device, dtype: torch.dtype) -> int:
        """Bytes of one group's scale (and of its zero or min) in the layout built here."""
        return 2 if Int4Linear.cortex_layout(device, dtype) else dtype.itemsize

    @classmethod
    def from_groups(
        cls,
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> Int4Linear:
        """q [N, K] in 0..15, scale and zero [N, K / GROUP]: `w = (q - 8) * scale + zero`."""
        if cls.cortex_layout(q.device, dtype):
            mins = zero.float() - 8 * scale.float()
            scales_and_mins = torch.stack((scale.float(), mins)).half()  # [2, N, K / GROUP]
            if scales_and_mins.isfinite().all():  # else beyond fp16: torch's layout below
                n, k = q.shape
                halves = q.to(torch.uint8).view(n, k // GROUP, 2, GROUP // 2)
                packed = halves[:, :, 0] | halves[:, :, 1] << 4  # [N, K / GROUP, 16]
                return cls(packed.reshape(n, k // 2), scales_and_mins, bias, dtype, cortex=True)
        if q.device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        else:
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # [N, K / 2]
            tiles = next(t for t in (8, 4, 2) if q.shape[1] % (16 * t) == 0)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)
        scales_and_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1)  # [K / GROUP, N, 2]
        scales_and_zeros = scales_and_zeros.to(dtype).contiguous()
        return cls(packed, scales_and_zeros, bias, dtype, cortex=False)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        """Min/max asymmetric int4 of a float weight [N, K], per group of GROUP inputs."""
        n, k = weight.shape
        groups = weight.float().reshape(n, k // GROUP, GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # [N, K / GROUP]
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = ((groups - low[..., None]) / scale[..., None]).round_().clamp_(0, 15)
        return cls.from_groups(q.to(torch.uint8).reshape(n, k), scale, low + 8 * scale, bias, dtype)

    def can_read_rows(self) -> bool:
        """Whether `rows` works (see `rows_readable`)."""
        if self.cortex:
            return True
        shape = (self.out_features, self.in_features)
        return self.rows_readable(self.packed.device, shape, self.dtype)

    @staticmethod
    def rows_readable(device: torch.device, shape: tuple[int, int], dtype: torch.dtype) -> bool:
        """Whether rows of a [N, K] weight packed on `device` (computing in `dtype`) can be
        read back: always in cortex's layout; in torch's, on CPU, where the packed layout is
        found (`_int4_row_map`) and N is whole blocks of it (a partial last block may be laid
        out otherwise)."""
        if Int4Linear.cortex_layout(device, dtype):
            return True
        if device.type != "cpu" or (found := _int4_row_map(shape[1])) is None:
            return False
        return shape[0] % found[0] == 0

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` [T] of the weight, dequantized: [T, K] (a tied embedding's lookup)."""
        k = self.in_features
        if self.cortex:
            return self._cortex_rows(self.packed[ids], self.scales_and_mins[:, ids])  # [T, K]
        block, where = _int4_row_map(k)  # type: ignore[misc]
        pos = (ids // block)[:, None] * (block * k) + where[ids % block]  # [T, K] nibble index
        q = (self.packed.view(-1)[pos // 2] >> (pos % 2 * 4)) & 15  # [T, K]
        scale, zero = self.scales_and_zeros[:, ids].float().repeat_interleave(GROUP, 0).unbind(-1)
        return ((q - 8) * scale.T + zero.T).to(self.dtype)  # [T, K]

    def _cortex_rows(self, packed: torch.Tensor, scales_and_mins: torch.Tensor) -> torch.Tensor:
        """Rows of cortex's layout (packed [T, K / 2], scales_and_mins [2, T, K / GROUP]) as
        values [T, K]: w = q * scale + min in fp32, rounded to the layer's dtype."""
        rows = packed.shape[0]
        groups = packed.view(rows, -1, GROUP // 2)  # [T, K / GROUP, 16]
        q = torch.cat((groups & 15, groups >> 4), dim=-1).float()  # [T, K / GROUP, GROUP]
        scale, low = scales_and_mins.float()[..., None]  # [T, K / GROUP, 1] each
        return (q * scale + low).view(rows, -1).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cortex:
            return self._cortex_forward(x)
        flat = x.reshape(-1, self.in_features).to(self.dtype)  # [T, K]
        if flat.device.type == "cpu":
            mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        else:
            mm = torch.ops.aten._weight_int4pack_mm
        out = mm(flat, self.packed, GROUP, self.scales_and_zeros)  # [T, N]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _cortex_forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.dtype)  # [T, K]
        out = cpu_kernels.int4_matmul(flat, self.packed, self.scales_and_mins)
        if out is None:  # a prefill: dense matmuls of the weight, dequantized a slice at a time
            out = torch.empty(flat.shape[0], self.out_features, dtype=self.dtype)
            step = max(16, DEQUANTIZED_BYTES // (self.in_features * self.dtype.itemsize))
            for lo in range(0, self.out_features, step):
                rows = slice(lo, lo + step)
                packed, scales_and_mins = self.packed[rows], self.scales_and_mins[:, rows]
                weight = cpu_kernels.int4_dequantize(packed, *scales_and_mins, self.dtype)
                if weight is None:  # the kernels were switched off after the load
                    weight = self._cortex_rows(packed, scales_and_mins)
                out[:, rows] = F.linear(flat, weight)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T (+ b) with q int8 [N, K] and one scale per output channel."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("scales", scales)  # [N], the compute dtype
        self.register_buffer("bias", bias)
        self.out_features, self.in_features = q.shape

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        """Symmetric per-channel int8 of a float weight [N, K]: scale = max |row| / 127."""
        weight = weight.float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)  # [N]
        q = (weight / scales[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        return cls(q, scales.to(dtype), bias)

    def can_read_rows(self) -> bool:
        return True

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` [T] of the weight, dequantized: [T, K] (a tied embedding's lookup)."""
        return self.q[ids].to(self.scales.dtype) * self.scales[ids, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)  # [T, K]
        if flat.device.type == "cpu":
            out = cpu_kernels.int8_matmul(flat, self.q, self.scales)  # [T, N]
            if out is None:
                out = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scales)
        else:
            out = F.linear(flat, self.q.to(flat.dtype)) * self.scales
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class BlockEmbedding(nn.Module):
    """An embedding table kept in ggml blocks; lookups dequantize the gathered rows."""

    def __init__(self, table: BlockTensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("blocks", table.data)  # [vocab, row_bytes] uint8
        self.qtype = table.qtype
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = table.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize_blocks(self.blocks[ids], self.qtype, self.dtype)  # [..., hidden]


class RowsOf(nn.Module):
    """A tied embedding that reads its rows from the quantized lm_head (one copy of the table,
    as llama.cpp keeps it), instead of a second copy kept in ggml blocks."""

    def __init__(self, head: Int4Linear | Int8Linear) -> None:
        super().__init__()
        self.head = [head]  # a list: the head is the model's module, not a child of this one
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head[0].rows(ids.reshape(-1)).view(*ids.shape, -1)  # [..., hidden]


def shares_table(head: nn.Module) -> bool:
    """Whether a tied embedding can read its rows from this lm_head (`RowsOf`)."""
    return isinstance(head, Int4Linear | Int8Linear) and head.can_read_rows()


@functools.cache
def _int4_row_map(k: int) -> tuple[int, torch.Tensor] | None:
    """How `_convert_weight_to_int4pack_for_cpu` lays out a [N, K] weight, found by packing
    index patterns (the layout is the kernel's, and differs by CPU capability): (rows per
    block B, the nibble index of each value (r, k) of a block [B, K], block b's from b * B * K
    on), or None when no such blocking holds (a tied embedding then keeps its own copy)."""
    for block in (16, 32, 64, 128):
        count = 2 * block * k  # two blocks: the second must repeat the first, shifted
        index = torch.arange(count).view(2 * block, k)  # [2B, K]
        source = torch.zeros(count, dtype=torch.int64)  # nibble index -> value index
        for digit in range(math.ceil(math.log(count, 16))):
            values = (index >> (4 * digit) & 15).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 1).view(-1)
            nibbles = torch.stack((packed & 15, packed >> 4), dim=-1).view(-1)  # low first
            source |= nibbles.long() << (4 * digit)
        where = torch.empty_like(source)
        where[source] = torch.arange(count)  # value index -> nibble index
        where = where.view(2 * block, k)
        if torch.equal(source.sort().values, torch.arange(count)) and torch.equal(
            where[block:], where[:block] + block * k
        ):
            return block, where[:block]
    return None


class Pending(nn.Module):
    """A linear or embedding layer whose weight is still arriving, in parts (HF names, in row
    order); `build` turns the complete parts into the real layer. Its bias, if any, is a plain
    parameter that loads as usual."""

    def __init__(self, layer: nn.Linear | nn.Embedding, quantize: Scheme | None) -> None:
        super().__init__()
        self.embedding = isinstance(layer, nn.Embedding)
        self.shape = tuple(layer.weight.shape)
        self.bias = getattr(layer, "bias", None)
        self.quantize = quantize
        self.parts: dict[str, Weight | None] = {}

    @property
    def meta_weight(self) -> torch.Tensor:
        """A storage-less stand-in of the weight, to name and size its parts."""
        return torch.empty(self.shape, device="meta")

    def expect(self, name: str) -> None:
        """Declare part `name` (in row order)."""
        self.parts[name] = None

    def fill(self, name: str, weight: Weight) -> bool:
        """Take part `name`; True once every part is in."""
        self.parts[name] = weight
        return all(p is not None for p in self.parts.values())

    def plan(self, parts: list[PartKind], device: torch.device, dtype: torch.dtype) -> str:
        """What `build` makes of parts of these kinds and row counts: "blocks" (a
        `BlockEmbedding`), "int4", "int8", "float", or "split" (a `ConcatLinear` of one layer
        per run of parts sharing a kernel)."""
        kinds = [kind for kind, _ in parts]
        if not self.embedding and len(_kernel_runs(kinds)) > 1:
            runs = [self._plan_rows(parts[lo:hi], device, dtype) for lo, hi in _kernel_runs(kinds)]
            if "int4" in runs:
                return "split"
        return self._plan_rows(parts, device, dtype)

    def _plan_rows(self, parts: list[PartKind], device: torch.device, dtype: torch.dtype) -> str:
        """The one kernel for these parts together (rows stacked)."""
        kinds = [kind for kind, _ in parts]
        blocks = [k for k in kinds if k is not None]
        if self.embedding:
            return "blocks" if len(kinds) == 1 and blocks else "float"
        scheme = self.quantize
        if blocks:  # GGUF blocks choose: int4 where every part is a Q4 type, else int8
            scheme = "int4" if all(k in INT4_TYPES for k in kinds) else "int8"
        shape = (sum(rows for _, rows in parts), self.shape[1])
        if scheme == "int4" and not Int4Linear.fits(shape, device, dtype):
            scheme = "int8"
        return scheme or "float"

    def planned_bytes(self, parts: list[PartKind], device, dtype) -> int:
        """Bytes the weight `build` makes takes (the bias is a parameter, counted apart)."""
        plan = self.plan(parts, device, dtype)
        if plan == "split":
            runs = _kernel_runs([kind for kind, _ in parts])
            return sum(self.planned_bytes(parts[lo:hi], device, dtype) for lo, hi in runs)
        n, k = sum(rows for _, rows in parts), self.shape[1]
        size = dtype.itemsize
        if plan == "blocks":
            block, type_size = GGML_QUANT_SIZES[parts[0][0]]
            return n * k // block * type_size
        if plan == "int4":
            return n * k // 2 + k // GROUP * n * 2 * Int4Linear.scale_bytes(device, dtype)
        if plan == "int8":
            return n * k + n * size
        return n * k * size

    def build(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The layer the complete parts make (see the module docstring for which)."""
        parts: list[Weight] = list(self.parts.values())  # type: ignore[arg-type]
        self.parts = {}
        bias = None if self.bias is None else self.bias.detach()
        kinds = _part_kinds(parts)
        if self.plan(kinds, device, dtype) != "split":
            return self._build(parts, bias, device, dtype)
        layers, row = [], 0
        for lo, hi in _kernel_runs([kind for kind, _ in kinds]):
            rows = sum(p.shape[0] for p in parts[lo:hi])
            run_bias = None if bias is None else bias[row : row + rows]
            layers.append(self._build(parts[lo:hi], run_bias, device, dtype))
            row += rows
        return ConcatLinear(layers)

    def _build(
        self, parts: list[Weight], bias: torch.Tensor | None, device: torch.device, dtype
    ) -> nn.Module:
        """One layer with one kernel for `parts`, stacked by rows."""
        kinds = _part_kinds(parts)
        plan = self._plan_rows(kinds, device, dtype)
        if plan == "blocks":
            return BlockEmbedding(parts[0], dtype)  # type: ignore[arg-type]
        if plan == "int4" and all(k is not None for k, _ in kinds):  # Q4 blocks: no requantizing
            groups = zip(*(int4_groups(p) for p in parts), strict=True)  # type: ignore[arg-type]
            q, scale, zero = (torch.cat(g) for g in groups)
            return Int4Linear.from_groups(q, scale, zero, bias, dtype)
        weight = _values(parts, dtype if plan == "float" else torch.float32)  # [N, K]
        if plan == "int4":
            return Int4Linear.quantize(weight, bias, dtype)
        if plan == "int8":
            return Int8Linear.quantize(weight, bias, dtype)
        if self.embedding:
            return _embedding(weight, dtype)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        linear.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return linear


class ConcatLinear(nn.Module):
    """A fused linear layer whose parts need different kernels (a Q4_K_M checkpoint's q and k
    are Q4_K, its v Q6_K in some layers): one layer per run of parts, outputs concatenated.

    One int8 layer for all would hold the Q4 parts at twice their size."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_features = layers[0].in_features
        self.out_features = sum(layer.out_features for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer(x) for layer in self.layers], dim=-1)  # [..., N]


def kernel_parts(layer: nn.Module) -> cpu_kernels.Parts | None:
    """A linear layer as the CPU's decode layer kernel takes it (`cpu_kernels.decode_layer`):
    int4 in cortex's layout and bf16 int8 layers, alone or side by side in a ConcatLinear;
    None for any other (a float layer, torch's int4 layout)."""
    layers = layer.layers if isinstance(layer, ConcatLinear) else [layer]
    parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for part in layers:
        if isinstance(part, Int4Linear) and part.cortex and part.dtype == torch.bfloat16:
            parts.append((4, part.packed, part.scales_and_mins))
        elif isinstance(part, Int8Linear) and part.scales.dtype == torch.bfloat16:
            parts.append((8, part.q, part.scales))
        else:
            return None
    biases = [part.bias for part in layers]
    if all(b is None for b in biases):
        return parts, None
    if any(b is None for b in biases):
        return None
    return parts, torch.cat(biases) if len(biases) > 1 else biases[0]


class PendingPart(NamedTuple):
    """Where one checkpoint tensor goes: part `part` (its HF name) of the `Pending` layer at
    `module`, of `shape`."""

    module: str
    layer: Pending
    part: str
    shape: tuple[int, ...]


def _part_kinds(parts: list[Weight]) -> list[PartKind]:
    return [(p.qtype if isinstance(p, BlockTensor) else None, p.shape[0]) for p in parts]


def _kernel_runs(kinds: list[GGMLQuantizationType | None]) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of consecutive parts that are all Q4 blocks or all not."""
    runs: list[tuple[int, int]] = []
    for i, kind in enumerate(kinds):
        if runs and (kind in INT4_TYPES) == (kinds[runs[-1][0]] in INT4_TYPES):
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _values(parts: list[Weight], dtype: torch.dtype) -> torch.Tensor:
    """The parts' values stacked by rows, in `dtype`."""
    values = [p.dequantize(dtype) if isinstance(p, BlockTensor) else p.to(dtype) for p in parts]
    return values[0] if len(values) == 1 else torch.cat(values)


def _embedding(weight: torch.Tensor, dtype: torch.dtype) -> nn.Embedding:
    table = nn.Embedding(*weight.shape, device="meta", dtype=dtype)
    table.weight = nn.Parameter(weight, requires_grad=False)
    return table


def quantizable(name: str, module: nn.Module) -> bool:
    """Linear layers that may be quantized: all but a MoE router (it runs in fp32 to choose)."""
    return isinstance(module, nn.Linear) and not name.endswith("mlp.gate")


def check_scheme(value: str | None) -> Scheme | None:
    """`quantize` as users give it: "int8", "int4", or None / "none"."""
    if value is None or value.lower() == "none":
        return None
    if value.lower() not in SCHEMES:
        raise ModelLoadFailed(f"unsupported quantize {value!r}; use int8, int4 or none")
    return value.lower()  # type: ignore[return-value]


def planned_bytes(
    model: nn.Module,
    kinds: dict[str, GGMLQuantizationType | None],
    device: torch.device,
) -> int:
    """Bytes a model built with `Pending` layers (on the meta device: nothing allocated) will
    hold once loaded from tensors of these kinds (HF name -> GGUF block type, None for floats).
    """
    total = resident_bytes(model)  # its plain parameters, biases of pending layers included
    parts: dict[int, tuple[Pending, list[PartKind]]] = {}
    for source, targets in model.weight_slots().items():
        for target in targets:
            if isinstance(target, PendingPart):
                layer = parts.setdefault(id(target.layer), (target.layer, []))
                layer[1].append((kinds.get(source), target.shape[0]))
    dtype = model.dtype
    sizes = {id(layer): layer.planned_bytes(k, device, dtype) for layer, k in parts.values()}
    total += sum(sizes.values())
    head, table = model.lm_head, model.model.embed_tokens
    if model.config.tie_word_embeddings and isinstance(head, Pending):
        plan = head.plan(parts[id(head)][1], device, dtype)
        readable = Int4Linear.rows_readable(device, head.shape, dtype)
        if plan == "int8" or (plan == "int4" and readable):
            # The embedding will read the head's rows (`RowsOf`): its own table goes.
            total -= sizes[id(table)] if id(table) in sizes else resident_bytes(table)
    return total


def resident_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and weight buffers hold (shared tensors counted once)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
