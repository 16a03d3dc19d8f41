"""The CPU's C kernels (cpu_kernels.c): built on first use, called through ctypes.

At batch 1 on a small model the decode step is hundreds of small torch ops, and their set-up
and dispatch cost more than their arithmetic. Two of them are worth a kernel each:
- `paged_decode`, which decode_attention (attention.py) calls where `kernel_for` gives a
  library. Its contract is that of triton_attention.paged_decode: K/V read in place through
  the block tables, the new tokens already stored. At batch 1 on SmolLM2's shapes it takes
  ~50-77 µs a layer where torch's gather, mask and SDPA take 180-250 µs.
- `rms_norm`, HF's RMSNorm of bf16 rows (llama.py's RMSNorm), one call for torch's five.

The library is compiled with the machine's C compiler (`$CC`, else `cc`) for the machine's CPU
(`-march=native`) into `cache_dir()`, named by a hash of the source, the command and the CPU's
flags, so a cache shared between machines never runs code built for another CPU. A host
without a compiler, a writable cache or AVX-512 keeps torch's ops: one warning in the log,
nothing else changes. `CORTEX_CPU_KERNELS=off` keeps torch's ops too, and
`CORTEX_ATTENTION=sdpa` only attention (for comparisons).

The attention kernel runs on one thread. Per (sequence, KV head) it is about 3x faster than
SDPA here, and SDPA spreads those units over torch's threads, so it is used where that wins:
up to 3 intra-op threads, or at most 3 units in the batch.
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
from functools import cache
from importlib import resources
from pathlib import Path

import torch

log = logging.getLogger("cortex.neuron")

SOURCE = "cpu_kernels.c"  # beside this module
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
SPEEDUP = 3  # per (sequence, KV head) over SDPA, measured (see the module docstring)
_TYPES = {torch.float32: 0, torch.bfloat16: 1}
_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float


class KernelUnavailable(Exception):
    """The kernel cannot be built or loaded on this host (the reason is the message)."""


def build(cache_dir: Path, compiler: str) -> ctypes.CDLL:
    """Compile (unless cached) and load the kernel library; raises KernelUnavailable.
    `compiler` is a command line, as `$CC` may be ("ccache gcc")."""
    command = [*shlex.split(compiler), *FLAGS]
    try:  # a resource, not a path: the package may run from a zip archive
        source = resources.files(__package__).joinpath(SOURCE).read_bytes()
    except OSError as exc:
        raise KernelUnavailable(f"cannot read {SOURCE}: {exc}") from exc
    key = hashlib.sha256(source)
    key.update(" ".join(command).encode())
    key.update(_cpu_flags().encode())
    target = cache_dir / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
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
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {target.name}: {exc}") from exc
    if not lib.cortex_kernels_ready():
        raise KernelUnavailable("this CPU has no AVX-512")
    lib.cortex_paged_decode.argtypes = [_P, _L, _P, _P, _P, _P, _P] + [_I] * 8 + [_F, _F]
    lib.cortex_paged_decode.restype = _I
    lib.cortex_rms_norm_bf16.argtypes = [_P, _P, _P, _L, _I, _F]
    lib.cortex_rms_norm_bf16.restype = _I
    return lib


def kernel() -> ctypes.CDLL | None:
    """The library built for this host, or None where torch's ops stay
    (`CORTEX_CPU_KERNELS=off`, or it cannot be built: logged once)."""
    if os.environ.get("CORTEX_CPU_KERNELS") == "off":
        return None
    return _built()


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
    """The library when it takes this step (a dtype, head size and batch it serves faster),
    else None."""
    batch, _, dim = q.shape
    units = batch * k_cache.shape[2]
    if (
        os.environ.get("CORTEX_ATTENTION") != "sdpa"
        and q.dtype in _TYPES
        and k_cache.dtype == q.dtype
        and k_cache.is_contiguous()
        and dim % 16 == 0
        and dim <= 256
        and (torch.get_num_threads() <= SPEEDUP or units <= SPEEDUP)
    ):
        return kernel()
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """weight * bf16(x / rms(x)) over the last dim of a bf16 CPU tensor, or None where the
    kernel does not serve it (another dtype or device, a size not a multiple of 16)."""
    dim = x.shape[-1]
    if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.device.type != "cpu":
        return None
    if dim % 16 != 0 or (lib := kernel()) is None:
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    status = lib.cortex_rms_norm_bf16(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps
    )
    assert status == 0, "rms_norm admits only what the kernel supports"
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
    tables = block_tables.to(torch.int32).contiguous()
    lens = context_lens.to(torch.int32).contiguous()
    out = torch.empty(batch, heads, dim, dtype=q.dtype)
    status = lib.cortex_paged_decode(
        q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        tables.data_ptr(), lens.data_ptr(), out.data_ptr(), _TYPES[q.dtype],
        batch, heads, k_cache.shape[2], dim, k_cache.shape[1], tables.shape[1],
        window or 0, dim**-0.5 if scale is None else scale, softcap or 0.0,
    )  # fmt: skip
    if status == -1:
        raise MemoryError("CPU decode attention could not allocate its scratch memory")
    assert status == 0, "kernel_for() admits only what the kernel supports"
    return out


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()
