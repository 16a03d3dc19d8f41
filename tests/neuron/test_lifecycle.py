"""Lifecycle routes of a real `cortex neuron` process: health, discovery, load/unload, endpoint,
tokenize, metrics, and the errors around them (never a 5xx)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cortex.neuron.manager import weight_footprint
from cortex.neuron.models.gguf import load_gguf_model
from cortex.neuron.models.loading import model_weight_bytes
from cortex.neuron.models.quantized import resident_bytes
from cortex.neuron.registry import ModelLocation, describe
from tests.conftest import FIXTURES
from tests.gguf.writer import write_gguf
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.neuron_proc import NeuronProc, Session, start_neuron

NEURON_TOML = """
[neuron]
name = "test-node"
max_body_bytes = "64KiB"
[engine]
max_batch = 32
"""


@pytest.fixture(scope="module")
def neuron(models_root: Path, neuron_env: dict[str, str], tmp_path_factory) -> NeuronProc:
    config = tmp_path_factory.mktemp("cfg") / "neuron.toml"
    config.write_text(NEURON_TOML)
    proc = start_neuron(models_root, ["--config", str(config)], env=neuron_env)
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def client(neuron: NeuronProc) -> Session:
    with Session(neuron.url) as session:
        yield session


def _error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) >= {"message", "type", "code", "param"}
    return error


def test_health(client: Session) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["node"] == "test-node"
    assert body["version"]
    assert body["uptime_s"] >= 0
    (device,) = body["devices"]
    assert device["id"] == "cpu"
    assert device["total_bytes"] >= device["free_bytes"] > 0
    assert device["name"]


def test_memory_release_answers_the_bytes_released(client: Session) -> None:
    # The gateway's defrag calls this; a CPU device has no allocator cache to release.
    response = client.post("/memory/release", json={})
    assert response.status_code == 200
    assert response.json() == {"released_bytes": 0}


def test_models_lists_disk_and_hf_cache(client: Session) -> None:
    data = {m["id"]: m for m in client.get("/models").json()["data"]}
    for model_id in ("stories260k", "tiny/qwen3", "scripted/qwen3", "Test/Stories", "huge/llama"):
        assert model_id in data, sorted(data)
    stories = data["stories260k"]
    assert stories["arch"] == "llama"
    assert stories["params"] == 260032
    assert stories["max_context"] == 512
    assert stories["format"] == "safetensors"
    assert data["tiny/qwen3"]["arch"] == "qwen3"
    assert not any(i.startswith("outside") for i in data)  # never walks out through a symlink


def test_load_single_flight_then_unload(client: Session, neuron: NeuronProc) -> None:
    def load() -> requests.Response:
        return client.post("/models/load", json={"model": "stories260k"})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: load(), range(4)))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "stories260k"
        assert body["state"] == "loaded"
        assert body["device"] == "cpu"
        assert body["bytes"] > 0
    assert neuron.log().count("loaded model=stories260k") == 1
    again = load()
    assert again.status_code == 200
    health = client.get("/health").json()
    (entry,) = [m for m in health["models"] if m["id"] == "stories260k"]
    assert entry["state"] == "loaded" and entry["device"] == "cpu"
    assert {"bytes", "in_flight", "waiting"} <= set(entry)
    listed = {m["id"]: m for m in client.get("/models").json()["data"]}
    assert listed["stories260k"]["state"] == "loaded"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["stories260k"]
    assert client.post("/models/unload", json={"model": "stories260k"}).json() == {
        "model": "stories260k",
        "state": "unloaded",
    }
    _error(client.post("/models/unload", json={"model": "stories260k"}), 404, "model_not_found")
    assert client.get("/v1/models").json()["data"] == []


def test_load_from_hf_cache_with_device_and_dtype(client: Session) -> None:
    answer = client.post(
        "/models/load", json={"model": "Test/Stories", "device": "cpu", "dtype": "bfloat16"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["dtype"] == "bfloat16"
    completion = client.post(
        "/v1/completions", json={"model": "Test/Stories", "prompt": "Once", "max_tokens": 3}
    )
    assert completion.status_code == 200, completion.text
    assert client.post("/models/unload", json={"model": "Test/Stories"}).status_code == 200


def test_insufficient_memory_before_allocating(client: Session) -> None:
    error = _error(
        client.post("/models/load", json={"model": "huge/llama"}), 507, "insufficient_memory"
    )
    assert error["required_bytes"] > error["free_bytes"] > 0
    # A smaller context fits: the preflight counts the KV cache the load will really take.
    small = client.post("/models/load", json={"model": "huge/llama", "max_context": 1024})
    assert small.status_code == 200, small.text
    assert small.json()["max_context"] == 1024
    assert client.post("/models/unload", json={"model": "huge/llama"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no/such-model"}, 404, "model_not_found"),
        ({"model": "broken/gpt2"}, 422, "unsupported_architecture"),
        ({"model": "../models/stories260k"}, 400, "invalid_request"),
        ({"model": "/etc/passwd"}, 400, "invalid_request"),
        ({"model": "stories\x00260k"}, 400, "invalid_request"),
        ({"model": "outside/stories260k"}, 400, "invalid_request"),
        ({"model": "stories260k", "device": "cuda:7"}, 400, "invalid_request"),
        ({"model": "stories260k", "device": "tpu"}, 400, "invalid_request"),
        ({"model": "stories260k", "dtype": "int3"}, 400, "invalid_request"),
        ({"model": "stories260k", "max_context": -1}, 400, "invalid_request"),
        ({"model": 12}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
    ],
)
def test_load_errors(client: Session, body: dict, status: int, code: str) -> None:
    _error(client.post("/models/load", json=body), status, code)


def test_load_malformed_json(client: Session) -> None:
    _error(client.post("/models/load", data=b"{not json"), 400, "invalid_request")
    _error(client.post("/models/load", json=["a"]), 400, "invalid_request")


def test_endpoint_with_slash_in_id(client: Session, neuron: NeuronProc) -> None:
    answer = client.get("/models/tiny/qwen3/endpoint")
    assert answer.status_code == 200
    assert answer.json()["url"] == neuron.url
    _error(client.get("/models/not/there/endpoint"), 404, "model_not_found")
    _error(client.get("/models/outside/stories260k/endpoint"), 400, "invalid_request")


def test_tokenize_counts_the_chat_template(client: Session) -> None:
    assert client.post("/models/load", json={"model": "tiny/qwen3"}).status_code == 200
    messages = [{"role": "user", "content": "Hello"}]
    body = client.post("/tokenize", json={"model": "tiny/qwen3", "messages": messages}).json()
    # <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n
    assert body["count"] == len(body["tokens"]) == 9
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with_tools = client.post(
        "/tokenize", json={"model": "tiny/qwen3", "messages": messages, "tools": tools}
    ).json()
    assert with_tools["count"] > body["count"]
    plain = client.post("/tokenize", json={"model": "tiny/qwen3", "prompt": "Hello"}).json()
    assert plain["count"] == 1
    _error(client.post("/tokenize", json={"model": "tiny/qwen3"}), 400, "invalid_request")
    _error(client.post("/tokenize", json={"model": "nope", "prompt": "x"}), 404, "model_not_found")


def test_unknown_route_and_method(client: Session) -> None:
    _error(client.get("/nope"), 404, "not_found")
    assert client.get("/models/load").status_code == 405


def test_body_limit(client: Session) -> None:
    big = {"model": "tiny/qwen3", "prompt": "x" * 100_000}
    _error(client.post("/v1/completions", json=big), 413, "payload_too_large")


def test_metrics_parse(client: Session) -> None:
    assert client.post("/models/load", json={"model": "tiny/qwen3"}).status_code == 200
    answer = client.post(
        "/v1/completions", json={"model": "tiny/qwen3", "prompt": "Hi", "max_tokens": 4}
    )
    assert answer.status_code == 200, answer.text
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "neuron_requests_running",
        "neuron_requests_waiting",
        "neuron_kv_cache_usage_ratio",
        "neuron_prefix_cache_hits",
        "neuron_prompt_tokens",
        "neuron_generation_tokens",
        "neuron_time_to_first_token_seconds",
        "neuron_model_load_seconds",
    ):
        assert name in families, name
    samples = {
        (s.name, s.labels.get("model")): s.value for f in families.values() for s in f.samples
    }
    assert samples[("neuron_generation_tokens_total", "tiny/qwen3")] >= 4
    assert samples[("neuron_requests_running", "tiny/qwen3")] == 0
    assert samples[("neuron_model_load_seconds", "tiny/qwen3")] > 0
    assert samples[("neuron_time_to_first_token_seconds_count", "tiny/qwen3")] >= 1
    assert any(
        s.name.endswith("_bucket") for s in families["neuron_time_to_first_token_seconds"].samples
    )


def test_preflight_counts_a_gguf_as_loaded(tmp_path: Path) -> None:
    """A GGUF's preflight weight bytes are what its weights hold once loaded: quantized layers
    at their quantized size by default, everything dequantized for dtype float32."""
    hf = make_tiny_checkpoint("qwen3", tmp_path / "hf", tokenizer_from=FIXTURES / "qwen3")
    gguf = write_gguf(hf, tmp_path / "tiny" / "tiny.Q8_0.gguf")
    location = ModelLocation("tiny", gguf.parent, "gguf", "models_dir")
    for asked in (None, "bfloat16", "float32"):
        _, dtype, weights = weight_footprint(location, "cpu", asked)
        model = load_gguf_model(gguf, "cpu", asked)
        assert dtype == model.dtype
        assert weights == resident_bytes(model)
    assert weights == model_weight_bytes(hf, "float32")  # the checkpoint it was made from
    # `/models` lists it with its quantization and its quantized size, the file size beside.
    listed = describe(location)
    assert listed["format"] == "gguf" and listed["quantization"] == "Q8_0"
    assert listed["bytes"] == model_weight_bytes(gguf, "bfloat16")
    assert listed["file_bytes"] == gguf.stat().st_size
