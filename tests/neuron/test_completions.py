"""Legacy completions and the bad-input matrix on a real neuron (shared `serving` process),
plus what happens to a stream when its client leaves or its model is unloaded."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import openai
import pytest

from tests.support.checkpoints import STORIES
from tests.support.neuron_proc import NeuronProc, Session, sse_events

HELLO = [{"role": "user", "content": "Hello"}]


def test_completion_matches_golden_greedy(client: Session) -> None:
    case = json.loads((STORIES / "expected" / "greedy.json").read_text())["cases"][0]
    answer = client.post(
        "/v1/completions",
        json={
            "model": "stories260k",
            "prompt": case["prompt_ids"],
            "max_tokens": 16,
            "temperature": 0,
        },
    ).json()
    choice = answer["choices"][0]
    assert answer["object"] == "text_completion"
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert len(choice["text"]) > 16 and case["generated_text"].startswith(choice["text"])
    assert answer["usage"]["completion_tokens"] == 16
    assert answer["usage"]["prompt_tokens"] == 1
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_completion_stream_equals_non_stream(client: Session) -> None:
    body = {
        "model": "stories260k",
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "temperature": 0,
    }
    whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    chunks = [e.json() for e in client.sse("/v1/completions", body) if e.data and not e.done]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "text_completion" for c in chunks)


def test_completion_logprobs(client: Session) -> None:
    body = {
        "model": "stories260k",
        "prompt": "Once",
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": 2,
    }
    logprobs = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 5
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


def test_max_tokens_clamped_to_context(client: Session) -> None:
    body = {"model": "stories260k", "prompt": [1] + [403] * 500, "max_tokens": 100_000}
    usage = client.post("/v1/completions", json=body).json()["usage"]
    assert usage["prompt_tokens"] == 501
    assert 1 <= usage["completion_tokens"] <= 11


def test_prompt_over_context(client: Session) -> None:
    answer = client.post(
        "/v1/completions", json={"model": "stories260k", "prompt": "Once upon a time " * 200}
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 512 maximum", error["message"])


def test_prefix_cache_reports_cached_tokens(client: Session) -> None:
    prompt = "Once upon a time there was a little dog who liked to run in the big green park. " * 3
    body = {"model": "stories260k", "prompt": prompt, "max_tokens": 2}
    hits = client.metric("neuron_prefix_cache_hits_total", "stories260k")
    client.post("/v1/completions", json=body)
    prompts = client.metric("neuron_prompt_tokens_total", "stories260k")
    usage = client.post("/v1/completions", json=body).json()["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 16
    # The metrics count the same reuse, and every prompt token of the request.
    assert client.metric("neuron_prefix_cache_hits_total", "stories260k") - hits == cached
    counted = client.metric("neuron_prompt_tokens_total", "stories260k") - prompts
    assert counted == usage["prompt_tokens"]


def test_concurrent_requests_match_single(client: Session) -> None:
    body = {"model": "stories260k", "prompt": "Lily saw a", "max_tokens": 6, "temperature": 0}
    alone = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/completions", json=body), range(6)))
    assert [a.json()["choices"][0]["text"] for a in answers] == [alone] * 6


# -- chat with the openai SDK ----------------------------------------------------------------


def test_sdk_completions(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="stories260k", prompt="Once upon", max_tokens=5)
    assert completion.choices[0].text
    streamed = list(
        sdk.completions.create(model="stories260k", prompt="Once", max_tokens=3, stream=True)
    )
    assert streamed[-1].choices[0].finish_reason == "length"


BAD_CHAT = [
    {"model": "tiny/qwen3"},
    {"model": "tiny/qwen3", "messages": []},
    {"model": "tiny/qwen3", "messages": "hello"},
    {"model": "tiny/qwen3", "messages": [{"content": "no role"}]},
    {"model": "tiny/qwen3", "messages": [{"role": "user", "content": 5}]},
    {"model": "tiny/qwen3", "messages": HELLO, "max_tokens": "ten"},
    {"model": "tiny/qwen3", "messages": HELLO, "max_tokens": -1},
    {"model": "tiny/qwen3", "messages": HELLO, "temperature": -1},
    {"model": "tiny/qwen3", "messages": HELLO, "top_p": 1.5},
    {"model": "tiny/qwen3", "messages": HELLO, "logit_bias": {"5": 101}},
    {"model": "tiny/qwen3", "messages": HELLO, "logit_bias": {"x": 1}},
    {"model": "tiny/qwen3", "messages": HELLO, "min_tokens": -1},
    {"model": "tiny/qwen3", "messages": HELLO, "n": 0},
    {"model": "tiny/qwen3", "messages": HELLO, "stop": 5},
    {"model": "tiny/qwen3", "messages": HELLO, "stream": "yes"},
    {"model": "tiny/qwen3", "messages": HELLO, "tools": "x"},
    {"model": "tiny/qwen3", "messages": HELLO, "top_logprobs": 3},
    {"model": "tiny/qwen3", "messages": HELLO, "response_format": {"type": "yaml"}},
    {"model": "tiny/qwen3", "messages": HELLO, "chat_template_kwargs": []},
    {"model": "stories260k", "messages": HELLO},  # no chat template
    {"model": "huge/llama", "messages": HELLO},  # on disk, not loaded
    {"model": "../etc", "messages": HELLO},
    {"model": 3, "messages": HELLO},
    [1, 2],
]
BAD_COMPLETION = [
    {"model": "stories260k"},
    {"model": "stories260k", "prompt": 5},
    {"model": "stories260k", "prompt": ["a", 5]},
    {"model": "stories260k", "prompt": [1, 99999]},
    {"model": "stories260k", "prompt": "x", "logprobs": 9},
]


@pytest.mark.parametrize("body", BAD_CHAT)
def test_bad_chat_input(client: Session, body) -> None:
    answer = client.post("/v1/chat/completions", json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert set(answer.json()["error"]) >= {"message", "type", "code", "param"}


@pytest.mark.parametrize("body", BAD_COMPLETION)
def test_bad_completion_input(client: Session, body) -> None:
    answer = client.post("/v1/completions", json=body)
    assert 400 <= answer.status_code < 500, answer.text


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"null", b"\xff\xfe", b'{"model": "tiny/qwen3", "messages": [}']
)
def test_malformed_json(client: Session, raw: bytes) -> None:
    answer = client.post(
        "/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_request"


def _wait_idle(client: Session, model: str) -> None:
    deadline = time.monotonic() + 60
    while client.metric("neuron_requests_running", model) or client.metric(
        "neuron_requests_waiting", model
    ):
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.1)


def test_disconnect_cancels_generation(client: Session, serving: NeuronProc) -> None:
    body = {
        "model": "tiny/qwen3",
        "messages": HELLO,
        "max_tokens": 4000,
        "stream": True,
        "temperature": 1.0,
        "seed": 1,
    }
    before = client.metric("neuron_generation_tokens_total", "tiny/qwen3")
    with (
        Session(serving.url) as own,
        own.post("/v1/chat/completions", json=body, stream=True) as response,
    ):
        for count, _ in enumerate(sse_events(response)):
            if count == 5:
                break
    _wait_idle(client, "tiny/qwen3")
    generated = client.metric("neuron_generation_tokens_total", "tiny/qwen3") - before
    assert 0 < generated < 4000
    deadline = time.monotonic() + 30
    while "status=499" not in serving.log():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_unload_during_stream(client: Session, serving: NeuronProc) -> None:
    body = {
        "model": "tiny/qwen3",
        "messages": HELLO,
        "max_tokens": 4000,
        "stream": True,
        "temperature": 1.0,
    }
    with (
        Session(serving.url) as own,
        own.post("/v1/chat/completions", json=body, stream=True) as response,
    ):
        seen = []
        for event in sse_events(response):
            seen.append(event)
            if len(seen) == 3:
                assert (
                    client.post("/models/unload", json={"model": "tiny/qwen3"}).status_code == 200
                )
            if event.done:
                break
    errors = [e.json()["error"] for e in seen if e.data and not e.done and "error" in e.json()]
    assert errors and errors[0]["code"] == "unavailable"
    assert seen[-1].done
    gone = client.post("/v1/chat/completions", json={**body, "stream": False})
    assert gone.status_code == 404
    assert client.post("/models/load", json={"model": "tiny/qwen3"}).status_code == 200
