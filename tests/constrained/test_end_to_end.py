"""Constrained decoding and OpenAI's spec points end to end: the official openai and anthropic
SDKs against a real `cortex serve` in front of a real `cortex neuron` serving a tiny random-weight
Qwen3 (real tokenizer). A random model never writes valid JSON by chance: only the mask can make
`chat.completions.parse` succeed, for every seed at temperature 1. The models below bound every
string and number, so a masked random model ends within `max_tokens`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import FIXTURES
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.gateway_proc import start_gateway
from tests.support.neuron_proc import Session, start_neuron

MODEL = "tiny-qwen3"
HELLO = [{"role": "user", "content": "Describe a pet."}]
SEEDS = (0, 1, 2, 3)
EOS_IDS = (151643, 151645)  # Qwen3's <|endoftext|> and <|im_end|>
pytestmark = pytest.mark.slow


class Pet(BaseModel):
    name: str = Field(max_length=8)
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    vaccinated: bool


class GetWeather(BaseModel):
    city: str = Field(max_length=10)
    unit: Literal["c", "f"]


class Noop(BaseModel):
    pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict[str, str]]:
    """{"neuron": URL, "gateway": URL}: the model preloaded, the gateway in front."""
    models = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(
        "qwen3", models / MODEL, tokenizer_from=FIXTURES / "qwen3", max_position_embeddings=4096
    )
    neuron = start_neuron(models, ["--preload", MODEL])
    gateway = None
    try:
        with Session(neuron.url) as session:
            deadline = time.monotonic() + 180
            while session.get("/models").json()["data"][0]["state"] != "loaded":
                assert time.monotonic() < deadline, neuron.log()[-3000:]
                time.sleep(0.2)
        gateway = start_gateway(f'[[neurons]]\nname = "n1"\nendpoint = "{neuron.url}"\n')
        yield {"neuron": neuron.url, "gateway": gateway.url}
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


@pytest.fixture(params=["neuron", "gateway"])
def url(request, stack) -> str:
    """Each test runs on the neuron and through the gateway."""
    return stack[request.param]


@pytest.fixture
def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def http(url: str) -> Iterator[Session]:
    with Session(url) as session:
        yield session


# --- constrained decoding -------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_parse_pydantic_response_format(sdk: openai.OpenAI, seed: int) -> None:
    reply = sdk.chat.completions.parse(
        model=MODEL, messages=HELLO, response_format=Pet, temperature=1.0, seed=seed,
        max_tokens=200,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Pet)


@pytest.mark.parametrize("attempt", range(2))
def test_responses_parse_pydantic_text_format(stack: dict[str, str], attempt: int) -> None:
    """The Responses API's `text.format` json_schema reaches the mask through the gateway."""
    client = openai.OpenAI(base_url=f"{stack['gateway']}/v1", api_key="unused", max_retries=0)
    reply = client.responses.parse(
        model=MODEL, input="Describe a pet.", text_format=Pet, temperature=1.0,
        max_output_tokens=200, store=False,
    )  # fmt: skip
    assert reply.status == "completed"
    assert isinstance(reply.output_parsed, Pet)


def test_json_object_stream_parses(http: Session) -> None:
    schema = Pet.model_json_schema()
    body = {
        "model": MODEL,
        "messages": HELLO,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "pet", "schema": schema},
        },
        "temperature": 1.0,
        "seed": 5,
        "max_tokens": 200,
    }
    chunks = [e.json() for e in http.sse("/v1/chat/completions", body) if e.data and not e.done]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    Pet.model_validate_json(text)
    # json_object: the answer opens an object (a random model may not close it in 8 tokens).
    short = {**body, "response_format": {"type": "json_object"}, "max_tokens": 8, "stream": False}
    assert (
        http.post("/v1/chat/completions", json=short)
        .json()["choices"][0]["message"]["content"]
        .startswith("{")
    )


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_named_tool_choice(sdk: openai.OpenAI, seed: int) -> None:
    tools = [openai.pydantic_function_tool(Noop), openai.pydantic_function_tool(GetWeather)]
    reply = sdk.chat.completions.parse(
        model=MODEL, messages=HELLO, tools=tools, temperature=1.0, seed=seed, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_required_tool_choice(sdk: openai.OpenAI, seed: int) -> None:
    tools = [openai.pydantic_function_tool(Noop), openai.pydantic_function_tool(GetWeather)]
    reply = sdk.chat.completions.parse(
        model=MODEL, messages=HELLO, tools=tools, tool_choice="required", temperature=1.0,
        seed=seed, max_tokens=200, parallel_tool_calls=False,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert isinstance(call.function.parsed_arguments, Noop | GetWeather)


def test_bad_schema_is_a_400(sdk: openai.OpenAI) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
        )  # fmt: skip
    assert info.value.body["param"] == "response_format"
    assert "no-such-format" in info.value.body["message"]


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
def test_anthropic_forced_tool(stack: dict[str, str], choice: dict) -> None:
    client = anthropic.Anthropic(base_url=stack["gateway"], api_key="unused", max_retries=0)
    # A random model fills open objects forever: the schemas close them.
    weather = {**GetWeather.model_json_schema(), "additionalProperties": False}
    tools = [
        {"name": "get_weather", "input_schema": weather},
        {"name": "noop", "input_schema": {"type": "object", "additionalProperties": False}},
    ]
    for _ in range(2):
        message = client.messages.create(
            model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "weather?"}],
            tools=tools, tool_choice={**choice, "disable_parallel_tool_use": True},
            extra_body={"temperature": 1.0},
        )  # fmt: skip
        assert message.stop_reason == "tool_use"
        uses = [b for b in message.content if b.type == "tool_use"]
        assert uses
        if choice["type"] == "tool":
            assert [u.name for u in uses] == ["get_weather"]
            GetWeather.model_validate(uses[0].input)


# --- logit_bias, min_tokens, ignore_eos ----------------------------------------------------


def test_logit_bias_on_chat_and_completions(http: Session) -> None:
    chat = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": HELLO, "max_tokens": 4, "logit_bias": {"9707": 100},
        "logprobs": True,
    }).json()  # fmt: skip
    assert [e["token"] for e in chat["choices"][0]["logprobs"]["content"]] == ["Hello"] * 4
    text = http.post("/v1/completions", json={
        "model": MODEL, "prompt": "Hi", "max_tokens": 3, "logit_bias": {"38835": 100},
    }).json()  # fmt: skip
    assert text["choices"][0]["text"] == " fox" * 3


def test_min_tokens_and_ignore_eos(http: Session) -> None:
    eos = {str(t): 100 for t in EOS_IDS}  # the model would stop at once
    base = {"model": MODEL, "messages": HELLO, "logit_bias": eos, "max_tokens": 8}
    now = http.post("/v1/chat/completions", json=base).json()
    assert now["usage"]["completion_tokens"] == 0
    later = http.post("/v1/chat/completions", json={**base, "min_tokens": 5}).json()
    assert later["usage"]["completion_tokens"] == 5
    assert later["choices"][0]["finish_reason"] == "stop"
    never = http.post("/v1/chat/completions", json={**base, "ignore_eos": True}).json()
    assert never["usage"]["completion_tokens"] == 8
    assert never["choices"][0]["finish_reason"] == "length"


# --- OpenAI's spec, point by point ----------------------------------------------------------


def test_system_fingerprint_is_a_string(http: Session) -> None:
    chat = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2}
    ).json()
    text = http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    ).json()
    assert isinstance(chat["system_fingerprint"], str) and isinstance(
        text["system_fingerprint"], str
    )


def test_top_p_zero_is_greedy(http: Session) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "seed": 1}
    zero = http.post("/v1/chat/completions", json={**body, "top_p": 0, "temperature": 1.0})
    greedy = http.post("/v1/chat/completions", json={**body, "temperature": 0})
    assert zero.status_code == 200, zero.text
    assert zero.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


def test_completion_prompt_batch(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=MODEL, prompt=["Hi", "Once upon"], n=2, max_tokens=3)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    single = sdk.completions.create(model=MODEL, prompt="Once upon", max_tokens=3, temperature=0)
    batch = sdk.completions.create(
        model=MODEL, prompt=["Hi", "Once upon"], max_tokens=3, temperature=0
    )
    assert batch.choices[1].text == single.choices[0].text
    assert batch.usage.prompt_tokens == reply.usage.prompt_tokens


def test_completion_chunks_carry_no_null_usage(http: Session) -> None:
    body = {
        "model": MODEL,
        "prompt": "Hi",
        "max_tokens": 3,
        "stream_options": {"include_usage": True},
    }
    chunks = [e.json() for e in http.sse("/v1/completions", body) if e.data and not e.done]
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_max_tokens_zero_scores_the_prompt(http: Session, sdk: openai.OpenAI) -> None:
    prompt = "The quick brown fox"
    reply = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = reply.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length"
    lps = choice.logprobs
    assert "".join(lps.tokens) == prompt
    assert lps.token_logprobs[0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lps.token_logprobs[1:])
    assert reply.usage.completion_tokens == 0 and reply.usage.prompt_tokens == len(lps.tokens)
    # Scoring is the same when the prompt's blocks are in the prefix cache already.
    again = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    assert again.choices[0].logprobs.token_logprobs == lps.token_logprobs
    # The logprob of a prompt token is the one a generation of it reports.
    step = sdk.completions.create(model=MODEL, prompt="The quick brown", max_tokens=1, logprobs=1,
                                  temperature=0, logit_bias={"38835": 100})  # fmt: skip
    assert step.choices[0].logprobs.tokens == [" fox"]
    assert step.choices[0].logprobs.token_logprobs[0] == pytest.approx(
        lps.token_logprobs[-1], abs=1e-4
    )
    plain = http.post(
        "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 0}
    ).json()
    assert plain["choices"][0]["text"] == "" and plain["usage"]["completion_tokens"] == 0


def test_every_spec_message_renders(sdk: openai.OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "be brief", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}], "name": "me"},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a": 1}'},
                },
                {"id": "c2", "type": "custom", "custom": {"name": "g", "input": "raw text"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "ok"}]},
        {"role": "tool", "tool_call_id": "c2", "content": "done"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "old style"},
    ]
    reply = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert json.loads(reply.to_json())["system_fingerprint"]
