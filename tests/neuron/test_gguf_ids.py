"""A GGUF model has two ids, its directory and its file: loading by either gives one copy of the
weights, under the directory's id, and requests by either id reach it (issue 16, point 11)."""

from __future__ import annotations

from pathlib import Path

from cortex.neuron.models.gguf import find_gguf
from cortex.neuron.registry import ModelRegistry
from tests.conftest import FIXTURES
from tests.gguf.writer import write_gguf
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.neuron_proc import Session, start_neuron


def tiny_gguf(models: Path) -> Path:
    hf = make_tiny_checkpoint("qwen3", models.parent / "hf", tokenizer_from=FIXTURES / "qwen3")
    return write_gguf(hf, models / "tiny" / "tiny.Q8_0.gguf")


def test_a_gguf_files_id_is_its_directorys(tmp_path: Path) -> None:
    models = tmp_path / "models"
    tiny_gguf(models)
    (models / "two").mkdir()
    for name in ("a.Q8_0.gguf", "b.Q4_0.gguf"):  # the directory loads the preferred one
        (models / "two" / name).write_bytes(b"GGUF")
    registry = ModelRegistry([models])
    assert registry.canonical_id("tiny/tiny.Q8_0.gguf") == "tiny"
    assert registry.canonical_id("tiny") == "tiny"
    chosen = registry.resolve("two").path
    picked = find_gguf(chosen).name
    other = ({"a.Q8_0.gguf", "b.Q4_0.gguf"} - {picked}).pop()
    assert registry.canonical_id(f"two/{picked}") == "two"
    assert registry.canonical_id(f"two/{other}") == f"two/{other}"
    assert registry.canonical_id("nothing/x.gguf") == "nothing/x.gguf"


def test_loading_by_file_id_after_the_directory_loads_no_second_copy(tmp_path: Path) -> None:
    models = tmp_path / "models"
    tiny_gguf(models)
    with start_neuron(models) as neuron, Session(neuron.url) as http:
        first = http.post("/models/load", json={"model": "tiny"})
        assert first.status_code == 200, first.text
        again = http.post("/models/load", json={"model": "tiny/tiny.Q8_0.gguf"})
        assert again.status_code == 200 and again.json()["model"] == "tiny"
        assert [m["id"] for m in http.get("/health").json()["models"]] == ["tiny"]
        body = {"model": "tiny/tiny.Q8_0.gguf", "prompt": "hi", "max_tokens": 2}
        assert http.post("/v1/completions", json=body).status_code == 200
