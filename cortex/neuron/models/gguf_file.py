"""Parse a GGUF file's header: metadata key/values and tensor descriptors, tensors memory-mapped.

The `gguf` package's `GGUFReader` builds a numpy view for every element of every metadata
array. A Llama 3 file holds 128k token strings and 280k merges, which takes it tens of seconds;
SmolLM2's 49k tokens still take seconds. This parser reads the same layout (gguf's own
constants for value and tensor types) with one `struct` call per string and one `np.frombuffer`
per numeric array, so any header parses in well under a second. Tensor data stays in the
copy-on-write memory map: nothing is read until it is dequantized. The tests check that it
agrees with `GGUFReader` field for field and byte for byte.

Layout (little-endian): magic `GGUF`, version (2 or 3), tensor count, metadata count; metadata
entries (string key, value type, value); tensor infos (name, dims innermost first, type, offset);
then the tensor data, aligned to `general.alignment` (32 by default).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from cortex.errors import ModelLoadFailed

V = GGUFValueType
SCALARS: dict[GGUFValueType, str] = {
    V.UINT8: "B",
    V.INT8: "b",
    V.UINT16: "H",
    V.INT16: "h",
    V.UINT32: "I",
    V.INT32: "i",
    V.FLOAT32: "f",
    V.BOOL: "?",
    V.UINT64: "Q",
    V.INT64: "q",
    V.FLOAT64: "d",
}
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: its llama.cpp name, torch-order shape, storage type and bytes in the map."""

    name: str
    shape: tuple[int, ...]  # outermost first (GGUF lists dims innermost first)
    qtype: GGMLQuantizationType
    data: np.ndarray  # uint8 view into the file's memory map

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class GGUFFile:
    """A parsed GGUF file: `fields` (key -> Python value) and `tensors` (in file order)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="c")
            self._buf = memoryview(self._map)
            self._pos = 0
            self.fields, self.tensors = self._parse()
        except (OSError, ValueError, struct.error, IndexError, UnicodeDecodeError) as e:
            raise ModelLoadFailed(f"cannot read GGUF file {self.path}: {e}") from e

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value (str, int, float, bool or list), or `default` when absent."""
        return self.fields.get(key, default)

    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    # -- parsing ---------------------------------------------------------------------------

    def _unpack(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self._buf, self._pos)
        self._pos += struct.calcsize("<" + fmt)
        return value[0] if len(value) == 1 else value

    def _string(self) -> str:
        size = self._unpack("Q")
        start, self._pos = self._pos, self._pos + size
        return str(self._buf[start : self._pos], "utf-8", errors="replace")

    def _value(self, kind: GGUFValueType) -> Any:
        if kind == V.STRING:
            return self._string()
        if kind == V.ARRAY:
            item, count = V(self._unpack("I")), self._unpack("Q")
            return self._array(item, count)
        return self._unpack(SCALARS[kind])

    def _array(self, item: GGUFValueType, count: int) -> list[Any]:
        if item in SCALARS:
            dtype = np.dtype("<" + SCALARS[item])
            values = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos)
            self._pos += dtype.itemsize * count
            return values.tolist()
        return [self._value(item) for _ in range(count)]

    def _parse(self) -> tuple[dict[str, Any], list[TensorInfo]]:
        if bytes(self._buf[:4]) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        self._pos = 4
        version, n_tensors, n_fields = self._unpack("IQQ")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        fields = {}
        for _ in range(n_fields):
            key = self._string()
            fields[key] = self._value(V(self._unpack("I")))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._unpack("Q") for _ in range(self._unpack("I"))]
            qtype, offset = GGMLQuantizationType(self._unpack("I")), self._unpack("Q")
            infos.append((name, tuple(reversed(dims)), qtype, offset))
        alignment = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
        start = -(-self._pos // alignment) * alignment
        tensors = []
        for name, shape, qtype, offset in infos:
            block, size = GGML_QUANT_SIZES[qtype]
            n_bytes = int(np.prod(shape, dtype=np.int64)) // block * size
            begin = start + offset
            if begin + n_bytes > len(self._map):
                raise ValueError(f"tensor {name} runs past the end of the file")
            tensors.append(TensorInfo(name, shape, qtype, self._map[begin : begin + n_bytes]))
        return fields, tensors
