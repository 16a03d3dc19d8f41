"""The CPU's C kernels (cpu_kernels.c): built on first use, called through ctypes.

At batch 1 on a small model the decode step is hundreds of small torch ops, and their set-up
and dispatch cost more than their arithmetic; torch's int4 and int8 kernels also stream a
matrix-vector product below the memory's speed. The kernels, each with the torch path it
replaces as its reference:
- `decode_layer` / `run_layer`: a whole Llama-family decoder layer (llama.py's DecoderLayer)
  as one call per decode step, composed of the kernels below in the order the layer's modules
  call them, so its result is theirs bit for bit. LlamaForCausalLM runs its layers so where
  `DecoderLayer.fused` gives one; any other layer, and a step they do not take, runs as
  modules. This is what takes SmolLM2 Q4_1 past llama.cpp on 2 cores (bench/llamacpp_cpu.py).
- `paged_decode`, which decode_attention (attention.py) calls where `kernel_for` gives a
  library. Its contract is that of triton_attention.paged_decode: K/V read in place through
  the block tables, the new tokens already stored; each (sequence, KV head)'s positions split
  over torch's threads at small batches. `rope_decode` adds RoPE and the cache store in front.
- `int4_matmul` (AVX512-VNNI) and `int8_matmul`: a decode step's few rows against
  Int4Linear's CPU layout and Int8Linear; `int4_dequantize` for a prefill's dense matmul.
- `rms_norm`, `add_rms_norm` and `silu_mul`: HF's RMSNorm of bf16 rows (one call for torch's
  five), the residual add before it, and the gated MLP's SiLU-and-multiply.

The library is compiled with the machine's C compiler (`$CC`, else `cc`) for the machine's CPU
(`-march=native`) into `cache_dir()`, named by a hash of the source, the command and the CPU's
flags, so a cache shared between machines never runs code built for another CPU. A host
without a compiler, a writable cache or AVX-512 keeps torch's ops: one warning in the log,
nothing else changes. `CORTEX_CPU_KERNELS=off` keeps torch's ops too, and
`CORTEX_ATTENTION=sdpa` only attention (for comparisons); both are read once, at first use.

The parallel kernels run on torch's own OpenMP threads (`-fopenmp` links the libgomp torch
already loaded), as many as `torch.get_num_threads()`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch

log = logging.getLogger("cortex.neuron")

SOURCE = "cpu_kernels.c"  # beside this module
# No FMA contraction: rope_decode rounds each product as torch does, to equal its bits.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC"]
OPENMP = "-fopenmp"  # links libgomp: the one torch has loaded, so its threads are shared
MAX_ROWS = 8  # rows of x the matmul kernels take: decode batches (as MAX_ROWS in the C file)
MAX_PARTS = 3  # parts of one linear layer of a decode layer (as MAX_PARTS in the C file)
# Rows up to which the int4 matmul beats dequantizing the weight for torch's dense matmul
# (measured at SmolLM2's, 4096 x 4096 and 12288 x 4096 shapes: the crossing is at 16-128).
INT4_ROWS = 32
_TYPES = {torch.float32: 0, torch.bfloat16: 1}
_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float


class KernelUnavailable(Exception):
    """The kernel cannot be built or loaded on this host (the reason is the message)."""


def build(cache_dir: Path, compiler: str) -> ctypes.CDLL:
    """Compile (unless cached) and load the kernel library; raises KernelUnavailable.
    `compiler` is a command line, as `$CC` may be ("ccache gcc"). A compiler without OpenMP
    (clang without libomp) builds it without: the kernels then run on one thread."""
    try:
        target = _compile(cache_dir, compiler, [*FLAGS, OPENMP])
    except KernelUnavailable:
        target = _compile(cache_dir, compiler, FLAGS)
    return _load(target)


def _compile(cache_dir: Path, compiler: str, flags: list[str]) -> Path:
    """The library built with these flags, in `cache_dir` (built there unless it is)."""
    command = [*shlex.split(compiler), *flags]
    try:  # a resource, not a path: the package may run from a zip archive
        source = resources.files(__package__).joinpath(SOURCE).read_bytes()
    except OSError as exc:
        raise KernelUnavailable(f"cannot read {SOURCE}: {exc}") from exc
    key = hashlib.sha256(source)
    key.update(" ".join(command).encode())
    key.update(_cpu_flags().encode())
    target = cache_dir / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed: two neurons building at once both succeed.
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            built = Path(scratch) / target.name
            (Path(scratch) / SOURCE).write_bytes(source)
            subprocess.run(
                [*command, "-o", str(built), str(Path(scratch) / SOURCE)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            built.replace(target)
    except FileNotFoundError as exc:
        raise KernelUnavailable(f"no C compiler ({compiler})") from exc
    except subprocess.CalledProcessError as exc:
        raise KernelUnavailable(f"{compiler} failed: {exc.stderr.decode()[-300:]}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelUnavailable(f"cannot build in {cache_dir}: {exc}") from exc
    return target


def _load(target: Path) -> ctypes.CDLL:
    """The built library, its functions typed."""
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {target.name}: {exc}") from exc
    if not lib.cortex_kernels_ready():
        raise KernelUnavailable("this CPU has no AVX-512 (F, BW and VL)")
    lib.cortex_decode_layer.argtypes = [_P, _P, _P]
    lib.cortex_decode_layer.restype = _I
    lib.cortex_int4_matmul.argtypes = [_P, _L, _I, _P, _P, _P, _L, _I, _L, _I, _I]
    lib.cortex_int4_matmul.restype = _I
    lib.cortex_int4_dequantize.argtypes = [_P, _P, _P, _P, _L, _I, _I, _I]
    lib.cortex_int4_dequantize.restype = _I
    lib.cortex_paged_decode.argtypes = [_P, _L, _P, _P, _P, _P, _P] + [_I] * 8 + [_F, _F, _I]
    lib.cortex_paged_decode.restype = _I
    lib.cortex_rms_norm_bf16.argtypes = [_P, _P, _P, _L, _I, _F]
    lib.cortex_rms_norm_bf16.restype = _I
    lib.cortex_rope_decode.argtypes = [_P, _L, _P, _L, _P, _P, _I, _P, _P, _P, _P, _P, _P]
    lib.cortex_rope_decode.argtypes += [_I] * 8 + [_F, _F, _I]
    lib.cortex_rope_decode.restype = _I
    lib.cortex_add_rms_norm_bf16.argtypes = [_P, _P, _P, _P, _P, _L, _I, _F]
    lib.cortex_add_rms_norm_bf16.restype = _I
    lib.cortex_silu_mul_bf16.argtypes = [_P, _L, _P, _L, _I]
    lib.cortex_silu_mul_bf16.restype = _I
    lib.cortex_int8_matmul.argtypes = [_P, _L, _P, _P, _P, _L, _I, _L, _I, _I]
    lib.cortex_int8_matmul.restype = _I
    return lib


def kernel() -> ctypes.CDLL | None:
    """The library built for this host, or None where torch's ops stay
    (`CORTEX_CPU_KERNELS=off`, or it cannot be built: logged once)."""
    if setting("CORTEX_CPU_KERNELS") == "off":
        return None
    return _built()


@cache
def setting(name: str) -> str | None:
    """Environment variable `name` as first read: a kernel call reads the switches, and
    reading the environment costs more than some of the kernels. `reread_settings` forgets."""
    return os.environ.get(name)


def reread_settings() -> None:
    """Read the switches again at their next use (tests that change them)."""
    setting.cache_clear()


@cache
def _built() -> ctypes.CDLL | None:
    try:
        return build(cache_dir(), os.environ.get("CC", "cc"))
    except KernelUnavailable as exc:
        log.warning("the CPU kernels are off, torch's ops run instead: %s", exc)
        return None


def cache_dir() -> Path:
    """Where built kernels live: systemd's `CacheDirectory=` ($CACHE_DIRECTORY, as the packaged
    unit sets), else the user cache dir."""
    if systemd := os.environ.get("CACHE_DIRECTORY"):
        return Path(systemd.split(":")[0]) / "kernels"
    import platformdirs

    return platformdirs.user_cache_path("cortex") / "kernels"


def kernel_for(q: torch.Tensor, k_cache: torch.Tensor) -> ctypes.CDLL | None:
    """The library when it takes this step's attention (a dtype and head size it serves),
    else None."""
    return _attention(q.dtype, k_cache)


def _attention(dtype: torch.dtype, k_cache: torch.Tensor) -> ctypes.CDLL | None:
    """`kernel_for` queries of `dtype` on this cache, whatever the batch (at 1, 4 and 16
    sequences of 700 positions on 2 threads it takes 0.04, 0.11 and 0.43 ms where
    torch's gather, mask and SDPA take 0.38, 0.39 and 2.1)."""
    dim = k_cache.shape[-1]
    if (
        setting("CORTEX_ATTENTION") != "sdpa"
        and dtype in _TYPES
        and k_cache.dtype == dtype
        and k_cache.is_contiguous()
        and dim % 16 == 0
        and dim <= 256
    ):
        return kernel()
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """weight * bf16(x / rms(x)) over the last dim of a bf16 CPU tensor, or None where the
    kernel does not serve it (another dtype or device, a size not a multiple of 16)."""
    dim = x.shape[-1]
    if not _bf16_rows(x, dim) or weight.dtype != x.dtype or (lib := kernel()) is None:
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    status = lib.cortex_rms_norm_bf16(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps
    )
    _check(status, "rms_norm")
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rms_norm(residual + x) * weight, residual + x) for bf16 CPU rows, or None where the
    kernel does not serve them (as `rms_norm`)."""
    dim = x.shape[-1]
    if not _bf16_rows(x, dim) or residual.dtype != x.dtype or weight.dtype != x.dtype:
        return None
    if (lib := kernel()) is None:
        return None
    x, residual = x.contiguous(), residual.contiguous()
    total, out = torch.empty_like(x), torch.empty_like(x)
    status = lib.cortex_add_rms_norm_bf16(
        x.data_ptr(), residual.data_ptr(), weight.data_ptr(), total.data_ptr(), out.data_ptr(),
        x.numel() // dim, dim, eps,
    )  # fmt: skip
    _check(status, "add_rms_norm")
    return out, total


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """silu(gate) * up for bf16 CPU rows [T, 2I] holding gate then up, -> [T, I]; or None where
    the kernel does not serve them."""
    inter = gate_up.shape[-1] // 2
    if not _bf16_rows(gate_up, inter) or gate_up.dim() != 2 or gate_up.stride(1) != 1:
        return None
    if (lib := kernel()) is None:
        return None
    rows = gate_up.shape[0]
    out = torch.empty(rows, inter, dtype=gate_up.dtype)
    status = lib.cortex_silu_mul_bf16(
        gate_up.data_ptr(), gate_up.stride(0), out.data_ptr(), rows, inter
    )
    _check(status, "silu_mul")
    return out


def _bf16_rows(x: torch.Tensor, size: int) -> bool:
    """Whether x is a bf16 CPU tensor whose rows the kernels take (`size` a multiple of 16)."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and size % 16 == 0


class _LinearPart(ctypes.Structure):
    _fields_ = [("bits", _I), ("weight", _P), ("scales", _P), ("n", _L)]


class _Linear(ctypes.Structure):
    _fields_ = [("parts", _I), ("part", _LinearPart * MAX_PARTS), ("bias", _P)]


class _DecodeLayer(ctypes.Structure):
    _fields_ = [
        *[(name, _P) for name in ("input_norm", "post_norm", "q_norm", "k_norm")],
        ("eps", _F),
        *[(name, _Linear) for name in ("qkv", "o", "gate_up", "down")],
        ("k_cache", _P),
        ("v_cache", _P),
        *[(name, _I) for name in ("heads", "kv_heads", "dim", "hidden", "inter")],
        *[(name, _I) for name in ("block_size", "window")],
        ("scale", _F),
        ("softcap", _F),
    ]


class _DecodeStep(ctypes.Structure):
    _fields_ = [
        *[(name, _I) for name in ("rows", "threads", "rotary", "width")],
        *[(name, _P) for name in ("cos", "sin", "slots", "tables", "lens")],
    ]


# A linear layer as the decode layer takes it: its parts side by side, each (bits, weight,
# scales) as Int4Linear (4: packed, scales_and_mins) or Int8Linear (8: q, scales) hold them,
# and the bias (None: none).
Parts = tuple[list[tuple[int, torch.Tensor, torch.Tensor]], torch.Tensor | None]


@dataclass
class DecodeLayer:
    """A decoder layer prepared for `run_layer`: the C struct of its weights' and caches'
    addresses, and the tensors behind them (held, so no address outlives its tensor)."""

    struct: _DecodeLayer
    k_cache: torch.Tensor  # to check a step against (`decode_step`)
    tensors: list[torch.Tensor]


def decode_layer(
    norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    eps: float,
    linears: list[Parts],
    caches: tuple[torch.Tensor, torch.Tensor],
    heads: int,
    inter: int,
    window: int | None,
    scale: float | None,
    softcap: float | None,
) -> DecodeLayer | None:
    """A Llama-family decoder layer (llama.py's DecoderLayer) as one C call per decode step:
    its RMSNorm weights (input, post-attention, then Qwen3's q and k norms or None), its qkv,
    o, gate_up and down layers as `Parts`, its K/V caches, `heads` query heads and `inter`
    MLP features. None where the kernels do not serve it: not bf16, sizes not whole vectors, no
    int4 kernel here."""
    k_cache, v_cache = caches
    _, block_size, kv_heads, dim = k_cache.shape
    hidden = norms[0].shape[0]
    dtypes = {t.dtype for t in (*norms, k_cache) if t is not None}
    if dtypes != {torch.bfloat16} or k_cache.device.type != "cpu" or not int4_ready():
        return None
    if hidden % 32 or inter % 32 or (heads * dim) % 32 or dim % 16 or dim > 256:
        return None
    if any(len(parts) > MAX_PARTS for parts, _ in linears):
        return None
    struct = _DecodeLayer(
        *[t.data_ptr() if t is not None else None for t in norms],
        eps,
        *[_linear(parts, bias) for parts, bias in linears],
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        heads, kv_heads, dim, hidden, inter, block_size, window or 0,
        dim**-0.5 if scale is None else scale,
        softcap or 0.0,
    )  # fmt: skip
    tensors = [t for t in (*norms, k_cache, v_cache) if t is not None]
    for parts, bias in linears:
        tensors += [t for _, *pair in parts for t in pair] + ([bias] if bias is not None else [])
    return DecodeLayer(struct, k_cache, tensors)


def _linear(
    parts: list[tuple[int, torch.Tensor, torch.Tensor]], bias: torch.Tensor | None
) -> _Linear:
    struct = _Linear(len(parts), bias=bias.data_ptr() if bias is not None else None)
    for i, (bits, weight, scales) in enumerate(parts):
        struct.part[i] = _LinearPart(bits, weight.data_ptr(), scales.data_ptr(), weight.shape[0])
    return struct


# A decode step as the fused layers take it: the C struct, and the tensors it points into.
FusedStep = tuple[_DecodeStep, tuple[torch.Tensor, ...]]


def decode_step(
    layer: DecodeLayer,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> FusedStep | None:
    """What the layers of one decode step share (x [B, hidden] the residual stream, cos and
    signed sin [B, 1, R]), and the tensors it points into (keep them while it runs); None
    where the step is not the kernels' (a batch over MAX_ROWS, or one `kernel_for` leaves on
    SDPA: the layers' modules then run it)."""
    rows = x.shape[0]
    if rows > MAX_ROWS or not x.is_contiguous() or _attention(x.dtype, layer.k_cache) is None:
        return None
    cos, sin = cos.contiguous(), sin.contiguous()
    slots, tables, lens = _indices(slots, block_tables, context_lens)
    struct = _DecodeStep(
        rows, torch.get_num_threads(), cos.shape[-1], tables.shape[1], cos.data_ptr(),
        sin.data_ptr(), slots.data_ptr(), tables.data_ptr(), lens.data_ptr(),
    )  # fmt: skip
    return struct, (cos, sin, slots, tables, lens)


def run_layer(layer: DecodeLayer, step: _DecodeStep, x: torch.Tensor) -> None:
    """x [B, hidden] (bf16, contiguous) through the layer, in place."""
    status = kernel().cortex_decode_layer(  # type: ignore[union-attr]
        ctypes.byref(layer.struct), ctypes.byref(step), x.data_ptr()
    )
    _check(status, "decode_layer")


def int4_ready() -> bool:
    """Whether the int4 matmul is built here (it needs AVX512-VNNI): Int4Linear then keeps its
    weight in the layout the kernel reads."""
    return (lib := kernel()) is not None and _has_vnni(lib)


@cache
def _has_vnni(lib: ctypes.CDLL) -> bool:
    return bool(lib.cortex_kernels_ready() & 2)


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, scales_and_mins: torch.Tensor
) -> torch.Tensor | None:
    """x [M, K] (fp32 or bf16, M <= INT4_ROWS) @ W.T -> [M, N] in x's dtype, W int4 in
    Int4Linear's CPU layout (`packed` [N, K / 2], `scales_and_mins` fp16 [2, N, K / 32]); x is
    quantized to int8 per group of 32 on the way. None where the kernel does not serve it."""
    rows, k = x.shape
    if x.dtype not in _TYPES or rows > INT4_ROWS or x.stride(1) != 1:
        return None
    if (lib := kernel()) is None or not _has_vnni(lib):
        return None
    n = packed.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype)
    status = lib.cortex_int4_matmul(
        x.data_ptr(), x.stride(0), _TYPES[x.dtype], packed.data_ptr(), scales_and_mins.data_ptr(),
        out.data_ptr(), n, rows, n, k, torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "int4_matmul")
    return out


def int4_dequantize(
    packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """Rows of an int4 weight in Int4Linear's CPU layout (`packed` [N, K / 2], `scales` and
    `mins` fp16 [N, K / 32], rows contiguous) as `dtype` values [N, K], or None where the
    kernels are off (the caller dequantizes with torch's ops)."""
    if dtype not in _TYPES or (lib := kernel()) is None:
        return None
    n, k = packed.shape[0], packed.shape[1] * 2
    out = torch.empty(n, k, dtype=dtype)
    status = lib.cortex_int4_dequantize(
        packed.data_ptr(), scales.data_ptr(), mins.data_ptr(), out.data_ptr(), n, k,
        _TYPES[dtype], torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "int4_dequantize")
    return out


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] @ (q * scales[:, None]).T -> [M, N] for bf16 x and scales and int8 q [N, K] on
    the CPU, or None where the kernel does not serve it (another dtype, more than MAX_ROWS rows,
    K not a multiple of 16)."""
    rows, k = x.shape
    if x.dtype != torch.bfloat16 or scales.dtype != torch.bfloat16 or x.device.type != "cpu":
        return None
    if rows > MAX_ROWS or k % 16 or x.stride(1) != 1 or (lib := kernel()) is None:
        return None
    n = q.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype)
    status = lib.cortex_int8_matmul(
        x.data_ptr(), x.stride(0), q.data_ptr(), scales.data_ptr(), out.data_ptr(), n, rows, n,
        k, torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "int8_matmul")
    return out


def rope_decode(
    qk: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    window: int | None,
    scale: float | None,
    softcap: float | None,
) -> torch.Tensor | None:
    """A decode step's attention from its projections: RoPE on q and k, k and v stored at
    `slots` (int64), then `paged_decode` over the block tables. qk [B, H + KVH, D] (q heads,
    then k heads) and v [B, KVH, D] may be row views of the fused projection; cos and signed
    sin [B, 1, R] as `Rotary.cos_sin` gives them. -> out [B, H, D]; None where `kernel_for`
    gives no library."""
    if qk.device.type != "cpu" or (lib := kernel_for(qk, k_cache)) is None:
        return None
    batch, _, dim = qk.shape
    kv_heads = k_cache.shape[2]
    heads = qk.shape[1] - kv_heads
    if qk.stride(2) != 1 or qk.stride(1) != dim:
        qk = qk.contiguous()
    if v.stride(2) != 1 or v.stride(1) != dim:
        v = v.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    slots, tables, lens = _indices(slots, block_tables, context_lens)
    out = torch.empty(batch, heads, dim, dtype=qk.dtype)
    status = lib.cortex_rope_decode(
        qk.data_ptr(), qk.stride(0), v.data_ptr(), v.stride(0), cos.data_ptr(), sin.data_ptr(),
        cos.shape[-1], slots.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        tables.data_ptr(), lens.data_ptr(), out.data_ptr(), _TYPES[qk.dtype],
        batch, heads, kv_heads, dim, k_cache.shape[1], tables.shape[1],
        window or 0, dim**-0.5 if scale is None else scale, softcap or 0.0,
        torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "rope_decode")
    return out


def paged_decode(
    lib: ctypes.CDLL,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    window: int | None,
    scale: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """q [B, H, D] -> out [B, H, D], attending to each sequence's cached K/V (see the C file)."""
    batch, heads, dim = q.shape
    if q.stride(2) != 1 or q.stride(1) != dim:
        q = q.contiguous()
    tables, lens = _as(block_tables, torch.int32), _as(context_lens, torch.int32)
    out = torch.empty(batch, heads, dim, dtype=q.dtype)
    status = lib.cortex_paged_decode(
        q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        tables.data_ptr(), lens.data_ptr(), out.data_ptr(), _TYPES[q.dtype],
        batch, heads, k_cache.shape[2], dim, k_cache.shape[1], tables.shape[1],
        window or 0, dim**-0.5 if scale is None else scale, softcap or 0.0,
        torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "paged_decode")
    return out


def _check(status: int, kernel: str) -> None:
    """A kernel's status: 0 done, -1 out of memory (MemoryError, as torch's allocator says it),
    anything else a call its Python side should not have made."""
    if status == -1:
        raise MemoryError(f"the CPU kernel {kernel} could not allocate its scratch memory")
    assert status == 0, f"{kernel} was called with what it does not support"


def _indices(slots: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor):
    """The step's slots (int64), block tables and context lengths (int32), contiguous: as the
    engine makes them already, so no copy."""
    return _as(slots, torch.int64), _as(block_tables, torch.int32), _as(context_lens, torch.int32)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if x.dtype != dtype:
        x = x.to(dtype)
    return x if x.is_contiguous() else x.contiguous()


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()
