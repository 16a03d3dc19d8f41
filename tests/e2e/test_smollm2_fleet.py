"""End to end with a real trained model: SmolLM2-135M-Instruct (Q4_1 GGUF) answers "Paris".

One fleet for the module: a real `cortex neuron` whose models dir holds the GGUF (as
`SmolLM2-135M-Instruct/`, the id `cortex fetch-demo` gives it), and a real `cortex serve` in
front of it (`--neuron URL`). Nothing is preloaded: the first request makes the gateway
cold-load the GGUF on the neuron. Each route is then asked "What is the capital of France?" at
temperature 0 through the official SDKs (OpenAI chat and Anthropic messages, streaming and not),
and `cortex probe --expect Paris` is run against the gateway as a subprocess. Greedy decoding
answers "The capital of France is Paris."; 16 tokens are enough to reach the name.

The file comes from `tests/support/smollm2.py` (downloaded once per machine); the module skips,
naming the reason, only where that download is impossible.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.support.cli_run import run_cli
from tests.support.gateway_proc import GatewayProc, start_gateway
from tests.support.neuron_proc import start_neuron
from tests.support.smollm2 import smollm2_or_skip

MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"
ANSWER = "Paris"
MAX_TOKENS = 16
# This anthropic SDK has no `temperature` argument any more; the Messages API still takes it.
GREEDY = {"temperature": 0}
TIMEOUT_S = 120.0  # generous: the cold load plus 16 tokens takes ~20 s on a busy 2-core machine


def get_json(url: str) -> dict:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def catalogue_state(gateway: GatewayProc) -> str | None:
    """The model's `cortex.state` in the gateway's `/v1/models` (None when not listed)."""
    for entry in get_json(f"{gateway.url}/v1/models")["data"]:
        if entry["id"] == MODEL:
            return entry["cortex"]["state"]
    return None


def wait_for_neuron(gateway: GatewayProc) -> None:
    """Until the gateway has polled its neuron and lists the model."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if get_json(f"{gateway.url}/health")["neurons"]["up"] == 1 and catalogue_state(gateway):
            return
        time.sleep(0.1)
    raise AssertionError(f"the gateway never saw its neuron:\n{gateway.log()[-4000:]}")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the real GGUF as `SmolLM2-135M-Instruct/`."""
    gguf = smollm2_or_skip()
    path = tmp_path_factory.mktemp("models")
    (path / MODEL).symlink_to(gguf.parent, target_is_directory=True)
    return path


@pytest.fixture(scope="module")
def gateway(models_dir: Path) -> Iterator[GatewayProc]:
    """`cortex serve --neuron URL` in front of a `cortex neuron` with nothing loaded."""
    neuron = start_neuron(models_dir)
    try:
        proc = start_gateway(args=["--neuron", neuron.url])
        try:
            wait_for_neuron(proc)
            yield proc
        finally:
            proc.stop()
    finally:
        neuron.stop()


@pytest.fixture(scope="module")
def openai_client(gateway: GatewayProc) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=TIMEOUT_S, max_retries=0)


@pytest.fixture(scope="module")
def anthropic_client(gateway: GatewayProc) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key="unused", timeout=TIMEOUT_S, max_retries=0)


def question() -> list[dict]:
    return [{"role": "user", "content": QUESTION}]


def test_openai_chat_cold_loads_the_gguf(gateway: GatewayProc, openai_client: OpenAI) -> None:
    assert catalogue_state(gateway) == "available"  # first request of the module: a cold load
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=question(), temperature=0, max_tokens=MAX_TOKENS
    )
    assert ANSWER in reply.choices[0].message.content, reply
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= MAX_TOKENS
    assert catalogue_state(gateway) == "loaded"


def test_openai_chat_stream(openai_client: OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=question(), temperature=0, max_tokens=MAX_TOKENS, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert ANSWER in text, text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_anthropic_messages(anthropic_client: Anthropic) -> None:
    message = anthropic_client.messages.create(
        model=MODEL, messages=question(), max_tokens=MAX_TOKENS, extra_body=GREEDY
    )
    assert ANSWER in message.content[0].text, message
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens <= MAX_TOKENS


def test_anthropic_messages_stream(anthropic_client: Anthropic) -> None:
    with anthropic_client.messages.stream(
        model=MODEL, messages=question(), max_tokens=MAX_TOKENS, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert ANSWER in text, text
    assert final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_cortex_probe_expects_paris(gateway: GatewayProc) -> None:
    args = ["--url", gateway.url, "--model", MODEL, "--prompt", QUESTION, "--expect", ANSWER]
    result = run_cli("probe", *args)
    assert result.code == 0, result.stdout + result.stderr
    assert f"answer contains {ANSWER!r}" in result.stdout and "probe ok" in result.stdout
