"""cortex's GGUF header parser reads exactly what gguf's own `GGUFReader` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants

from cortex.errors import ModelLoadFailed
from cortex.neuron.models.gguf_file import GGUFFile
from tests.gguf.writer import assert_same_file

Q = GGMLQuantizationType


def write_sampler(path: Path) -> Path:
    """A GGUF with every metadata value type and tensors of several storage types."""
    w = GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1 / 3)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁ 日本 🙂")
    w.add_array("t.strs", ["a", "", "Ġb c", "<|im_end|>"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_key_value("t.floats", [0.5, -1.25], GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
    w.add_array("t.bools", [True, False])
    rng = np.random.default_rng(0)
    w.add_tensor("a.weight", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal(64).astype(np.float16))
    for i, qtype in enumerate((Q.Q8_0, Q.Q4_1, Q.Q5_0)):
        data = rng.standard_normal((5, 96)).astype(np.float32)
        w.add_tensor(f"q{i}.weight", quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_parser_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = write_sampler(tmp_path / "sampler.gguf")
    ours = GGUFFile(path)
    assert_same_file(ours, GGUFReader(path))
    assert ours.get("t.str") == "héllo ▁ 日本 🙂"
    assert ours.get("t.u64") == 2**63 + 5
    assert ours.tensor("q1.weight").shape == (5, 96)
    assert ours.tensor("missing") is None


def test_garbage_is_a_load_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(ModelLoadFailed, match="bad magic"):
        GGUFFile(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(write_sampler(tmp_path / "full.gguf").read_bytes()[:-100])
    with pytest.raises(ModelLoadFailed, match="past the end"):
        GGUFFile(truncated)
