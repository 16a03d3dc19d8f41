"""Device discovery for `/health` and model placement.

CUDA devices report name, total and free memory from `torch.cuda.mem_get_info` (free as the
driver sees it, so other processes count). Without CUDA the only device is `cpu`, sized from
`/proc/meminfo` (`MemAvailable`), read directly to avoid depending on psutil.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import cache

from cortex.errors import ConfigError, InvalidRequest


@dataclass
class DeviceInfo:
    """One device as `/health` lists it."""

    id: str
    name: str
    total_bytes: int
    free_bytes: int

    def to_dict(self) -> dict:
        """The `/health` `devices[]` entry."""
        return asdict(self)


def _meminfo() -> tuple[int, int]:
    """(total, available) system memory in bytes."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    if "MemTotal" in values:
        return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0))
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages, pages


@cache  # constant for the process; /health asks on every poll
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cuda_count() -> int:
    """Number of visible CUDA devices (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def describe(device: str) -> DeviceInfo:
    """Name and memory of one device id (`cpu` or `cuda:N`)."""
    if device == "cpu":
        total, free = _meminfo()
        return DeviceInfo("cpu", _cpu_name(), total, free)
    import torch

    index = int(device.split(":", 1)[1])
    free, total = torch.cuda.mem_get_info(index)
    return DeviceInfo(device, torch.cuda.get_device_name(index), int(total), int(free))


def normalize(device: str) -> str:
    """`cuda` -> `cuda:0`, `CPU` -> `cpu`; anything else unknown raises `InvalidRequest`."""
    text = device.strip().lower()
    if text == "cpu":
        return "cpu"
    if text == "cuda":
        text = "cuda:0"
    head, _, index = text.partition(":")
    if head == "cuda" and index.isdigit():
        return f"cuda:{int(index)}"
    raise InvalidRequest(f"unknown device {device!r} (expected 'cpu' or 'cuda:N')", param="device")


def select_devices(requested: list[str]) -> list[str]:
    """The devices this neuron serves: `requested` (checked), else every CUDA device, else cpu."""
    count = cuda_count()
    if not requested:
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    chosen = []
    for item in requested:
        try:
            device = normalize(item)
        except InvalidRequest as exc:
            raise ConfigError(f"devices: {exc.message}") from None
        if device.startswith("cuda:") and int(device[5:]) >= count:
            raise ConfigError(f"devices: {device} is not available ({count} CUDA devices)")
        if device not in chosen:
            chosen.append(device)
    return chosen
