"""A neuron with a bearer token, a preload and a batch of one: auth on every route but /health,
SSE comments while a request waits, then a SIGTERM drain (new requests 503 `shutting_down`
with Retry-After, the stream in flight finishes, the process exits 0)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cortex.api.sse import SSEParser
from tests.support.neuron_proc import NeuronProc, Session, sse_events, start_neuron

TOKEN = "s3cret-token"
NEURON_TOML = f"""
[neuron]
token = "{TOKEN}"
drain_timeout = "60s"
[engine]
max_batch = 1
"""


@pytest.fixture(scope="module")
def neuron(models_root: Path, neuron_env: dict[str, str], tmp_path_factory) -> NeuronProc:
    config = tmp_path_factory.mktemp("cfg") / "neuron.toml"
    config.write_text(NEURON_TOML)
    proc = start_neuron(
        models_root, ["--config", str(config), "--preload", "stories260k"], env=neuron_env
    )
    yield proc
    proc.stop()


def test_preload_and_health_without_token(neuron: NeuronProc) -> None:
    with Session(neuron.url) as anonymous:
        deadline = time.monotonic() + 120
        while True:
            health = anonymous.get("/health")
            assert health.status_code == 200
            states = {m["id"]: m["state"] for m in health.json()["models"]}
            if states.get("stories260k") == "loaded":
                break
            assert time.monotonic() < deadline, health.text
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("GET", "/metrics"),
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/models/load"),
        ("GET", "/models/stories260k/endpoint"),
        ("POST", "/memory/release"),
    ],
)
def test_token_required(neuron: NeuronProc, method: str, path: str) -> None:
    for token in (None, "wrong"):
        with Session(neuron.url, token) as session:
            answer = session.request(method, path, json={"model": "stories260k"})
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "invalid_api_key"
    with Session(neuron.url, TOKEN) as session:
        assert session.get("/models").status_code == 200


def test_comments_while_waiting(neuron: NeuronProc) -> None:
    """With the model's one batch slot taken, a second stream gets SSE comments (one after each
    second of silence) until it is admitted; then its tokens follow as usual."""
    with Session(neuron.url, TOKEN) as first, Session(neuron.url, TOKEN) as second:
        assert first.post("/models/load", json={"model": "tiny/qwen3"}).status_code == 200
        long = {"model": "tiny/qwen3", "prompt": "Hi", "max_tokens": 4000, "stream": True}
        with first.post("/v1/completions", json=long, stream=True) as busy:
            busy_events = sse_events(busy)
            while not next(busy_events).data:
                pass
            short = {**long, "max_tokens": 3}
            with second.post("/v1/completions", json=short, stream=True) as waiting:
                waiting_events = sse_events(waiting)
                first_event = next(waiting_events)
                assert first_event.comment is not None and first_event.data is None
                busy.close()  # frees the slot: the waiting request is admitted
                rest = list(waiting_events)
        assert rest[-1].done
        finals = [e.json()["choices"][0]["finish_reason"] for e in rest if e.data and not e.done]
        assert finals[-1] in ("length", "stop")


def test_sigterm_drains(neuron: NeuronProc) -> None:
    body = {
        "model": "stories260k",
        "prompt": "Once upon a time",
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
    }
    with (
        Session(neuron.url, TOKEN) as session,
        session.post("/v1/completions", json=body, stream=True) as response,
    ):
        assert response.status_code == 200
        parser = SSEParser()
        chunks = response.iter_content(chunk_size=None)
        events = []
        while len(events) < 2:
            events += [e for e in parser.feed(next(chunks)) if e.data]
        neuron.terminate()
        deadline = time.monotonic() + 30
        while session.get("/health").json()["status"] != "draining":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = session.post("/v1/completions", json={**body, "stream": False})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["Retry-After"]) >= 1
        for chunk in chunks:
            events += [e for e in parser.feed(chunk) if e.data]
    assert events[-1].done
    last = events[-2].json()["choices"][0]
    assert last["finish_reason"] in ("length", "stop")
    assert neuron.wait(60) == 0
    assert "draining: 1 requests in flight" in neuron.log()


def test_drain_timeout_ends_streams_cleanly(
    models_root: Path, neuron_env: dict[str, str], tmp_path: Path
) -> None:
    """Past `drain_timeout` the rest are ended with an error event and [DONE]; exit 0. Also: with
    `hub_download` on but no hub reachable, an unknown model is still a plain 404."""
    config = tmp_path / "neuron.toml"
    config.write_text('[neuron]\ndrain_timeout = "1s"\nhub_download = true\n')
    proc = start_neuron(models_root, ["--config", str(config)], env=neuron_env)
    try:
        with Session(proc.url) as session:
            missing = session.post("/models/load", json={"model": "Nobody/Nothing"})
            assert missing.status_code == 404, missing.text
            assert session.post("/models/load", json={"model": "tiny/qwen3"}).status_code == 200
            body = {"model": "tiny/qwen3", "prompt": "Hi", "max_tokens": 4000, "stream": True}
            with session.post("/v1/completions", json=body, stream=True) as response:
                stream = sse_events(response)
                while not next(stream).data:
                    pass
                proc.terminate()
                rest = [e for e in stream if e.data]
        assert rest[-1].done
        assert rest[-2].json()["error"]["code"] == "unavailable"
        assert proc.wait(60) == 0
    finally:
        proc.stop()
