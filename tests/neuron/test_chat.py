"""Chat completions on a real neuron (shared `serving` process), mostly through the official
openai SDK: streaming, usage, n, logprobs, and with the scripted Qwen3 the reasoning split, a
tool call round trip, JSON mode and stop strings."""

from __future__ import annotations

import json

import openai

from tests.support.neuron_proc import Session

HELLO = [{"role": "user", "content": "Hello"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat(client: Session, **body) -> dict:
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_sdk_chat(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="tiny/qwen3", messages=HELLO, max_tokens=8, temperature=0
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.logprobs is None
    assert completion.usage.prompt_tokens == 9
    assert completion.usage.prompt_tokens_details.cached_tokens >= 0


def test_sdk_chat_stream_with_usage(sdk: openai.OpenAI) -> None:
    kwargs = {"model": "tiny/qwen3", "messages": HELLO, "max_tokens": 6, "temperature": 0}
    whole = sdk.chat.completions.create(**kwargs).choices[0].message
    chunks = list(
        sdk.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert text == (whole.content or "")
    assert reasoning == ((whole.model_extra or {}).get("reasoning_content") or "")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals in (["length"], ["stop"])


def test_n_sequences_with_seed(client: Session) -> None:
    body = {
        "model": "tiny/qwen3",
        "messages": HELLO,
        "max_tokens": 3,
        "n": 3,
        "seed": 7,
        "temperature": 1.0,
    }
    first = chat(client, **body)
    second = chat(client, **body)
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert [c["message"] for c in first["choices"]] == [c["message"] for c in second["choices"]]
    chunks = [
        e.json()
        for e in client.sse("/v1/chat/completions", {**body, "n": 2})
        if e.data and not e.done
    ]
    finished = {c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_chat_logprobs(client: Session) -> None:
    answer = chat(
        client,
        model="tiny/qwen3",
        messages=HELLO,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == answer["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] <= 0


# -- reasoning, tools, JSON, stop strings (scripted model) -----------------------------------


def test_reasoning_split(client: Session) -> None:
    message = chat(client, model="scripted/qwen3", messages=HELLO, temperature=0)["choices"][0][
        "message"
    ]
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "Hello there!"
    chunks = [
        e.json()
        for e in client.sse("/v1/chat/completions", {"model": "scripted/qwen3", "messages": HELLO})
        if e.data and not e.done
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello there!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_reasoning_when_template_opens_think(client: Session) -> None:
    message = chat(client, model="scripted/qwen3-opened", messages=HELLO)["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "Hello there!"


def test_tool_call_round_trip(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.chat.completions.create(
        model="scripted/qwen3", messages=messages, tools=[WEATHER_TOOL], extra_body=NO_THINKING
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = sdk.chat.completions.create(
        model="scripted/qwen3", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "Hello there!"
    assert second.choices[0].finish_reason == "stop"


def test_tool_call_stream(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="scripted/qwen3",
            messages=HELLO,
            tools=[WEATHER_TOOL],
            extra_body=NO_THINKING,
            stream=True,
        )
    )
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_object(client: Session) -> None:
    body = {
        "model": "scripted/qwen3",
        "messages": HELLO,
        "response_format": {"type": "json_object"},
        "temperature": 0,
    }
    # The mask allows only an opening brace (greedy picks the `{` token among them); the
    # scripted model then writes its object.
    assert json.loads(chat(client, **body)["choices"][0]["message"]["content"]) == {"answer": 42}
    chunks = [e.json() for e in client.sse("/v1/chat/completions", body) if e.data and not e.done]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert json.loads(text) == {"answer": 42}


def _stream_text_and_end(client: Session, body: dict) -> tuple[str, dict]:
    """The streamed content and the choice of the chunk that carries the finish_reason."""
    chunks = [e.json() for e in client.sse("/v1/chat/completions", body) if e.data and not e.done]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    (end,) = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert all("stop_reason" not in c["choices"][0] for c in chunks if c["choices"][0] is not end)
    return text, end


def test_stop_strings(client: Session) -> None:
    body = {"model": "scripted/qwen3", "messages": HELLO, "stop": ["nope", " there"]}
    choice = chat(client, **body)["choices"][0]
    assert choice["message"]["content"] == "Hello"
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", " there")
    text, end = _stream_text_and_end(client, body)
    assert (text, end["finish_reason"], end["stop_reason"]) == ("Hello", "stop", " there")


def test_stop_reason_is_null_at_eos(client: Session) -> None:
    body = {"model": "scripted/qwen3", "messages": HELLO, "stop": ["nope"]}
    choice = chat(client, **body)["choices"][0]
    assert choice["message"]["content"] == "Hello there!"
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    assert _stream_text_and_end(client, body)[1]["stop_reason"] is None


def test_stop_token_ids(client: Session) -> None:
    tokenized = client.post("/tokenize", json={"model": "scripted/qwen3", "prompt": " there"})
    (there,) = tokenized.json()["tokens"]
    body = {"model": "scripted/qwen3", "messages": HELLO, "stop_token_ids": [there]}
    choice = chat(client, **body)["choices"][0]
    assert choice["message"]["content"] == "Hello"
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", there)
    text, end = _stream_text_and_end(client, body)
    assert (text, end["stop_reason"]) == ("Hello", there)
    legacy = client.post(
        "/v1/completions",
        json={"model": "scripted/qwen3", "prompt": "\n", "stop_token_ids": [there]},
    ).json()["choices"][0]
    assert legacy["text"].endswith("Hello") and legacy["stop_reason"] == there


def test_stream_headers_carry_the_prompt_length(client: Session) -> None:
    body = {"model": "scripted/qwen3", "messages": HELLO, "stream": True, "max_tokens": 1}
    count = client.post("/tokenize", json={"model": "scripted/qwen3", "messages": HELLO})
    with client.post("/v1/chat/completions", json=body, stream=True) as answer:
        assert answer.headers["x-cortex-prompt-tokens"] == str(count.json()["count"])


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_fields_are_ignored(client: Session) -> None:
    chat(client, model="tiny/qwen3", messages=HELLO, max_tokens=2, frobnicate=True, user="u1")


# -- disconnects and unloads -------------------------------------------------------------------
