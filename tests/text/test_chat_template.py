"""Chat templates render token-identical to transformers' `apply_chat_template`."""

from __future__ import annotations

import copy
import json

import pytest
import tokenizers
from transformers import AutoTokenizer

from cortex.errors import InvalidRequest
from cortex.neuron.text.chat_template import normalize_messages, render_chat_template
from cortex.neuron.text.tokenizer import Tokenizer, generation_defaults
from tests.conftest import FIXTURES

MODELS = ["qwen3", "qwen2.5", "llama3.2"]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city, in °C",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
ARGS = {"city": "Zürich", "unit": "c"}


def tool_call(arguments):
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


def tool_round(arguments, content=""):
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": content, "tool_calls": [tool_call(arguments)]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]


# (name, cortex messages, the plain messages HF gets, tools, template kwargs)
CASES = [
    ("plain", [{"role": "user", "content": "Hi there"}], None, None, {}),
    (
        "system_history",
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a shape."},
            {"role": "assistant", "content": "Circle."},
            {"role": "user", "content": "And a colour? 🙂 café"},
        ],
        None,
        None,
        {},
    ),
    ("tools", [{"role": "user", "content": "Weather?"}], None, [WEATHER], {}),
    ("tools_system", tool_round(ARGS)[:2], None, [WEATHER], {}),
    ("tool_args_object", tool_round(ARGS), None, [WEATHER], {}),
    ("tool_args_string", tool_round(json.dumps(ARGS)), tool_round(ARGS), [WEATHER], {}),
    ("tool_content_null", tool_round(ARGS, None), None, [WEATHER], {}),
    (
        "list_content",
        [
            {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "a\nb"}],
        None,
        {},
    ),
    (
        "late_system",
        [
            {"role": "system", "content": "First rules."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "system", "content": "Now answer in French."},
            {"role": "user", "content": "How are you?"},
        ],
        None,
        None,
        {},
    ),
    ("thinking_on", [{"role": "user", "content": "2+3?"}], None, None, {"enable_thinking": True}),
    ("thinking_off", [{"role": "user", "content": "2+3?"}], None, None, {"enable_thinking": False}),
    (
        "reasoning_history",
        [
            {"role": "user", "content": "2+3?"},
            {"role": "assistant", "content": "5", "reasoning_content": "Add them."},
            {"role": "user", "content": "times 2?"},
        ],
        None,
        None,
        {},
    ),
]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, load_tokenizer):
    path = FIXTURES / request.param
    return request.param, load_tokenizer(request.param), AutoTokenizer.from_pretrained(path)


def hf_render(hf, messages, tools, tokenize, **kwargs):
    return hf.apply_chat_template(
        messages,
        tools=tools,
        add_generation_prompt=True,
        tokenize=tokenize,
        return_dict=False,
        **kwargs,
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_transformers(pair, case):
    name, tok, hf = pair
    _, messages, plain, tools, kwargs = case
    if name == "llama3.2":
        kwargs = {**kwargs, "date_string": "26 Jul 2024"}
    original = copy.deepcopy(messages)
    text = tok.render_chat(messages, tools=tools, **kwargs)
    ids = tok.encode_chat(messages, tools=tools, **kwargs)
    assert messages == original, "the caller's messages must not be modified"
    reference = plain or messages
    assert text == hf_render(hf, copy.deepcopy(reference), tools, False, **kwargs)
    assert ids == hf_render(hf, copy.deepcopy(reference), tools, True, **kwargs)


def test_llama_bos_once_and_today(pair):
    name, tok, hf = pair
    messages = [{"role": "user", "content": "Hi"}]
    ids = tok.encode_chat(messages)
    assert ids == hf_render(hf, messages, None, True)
    if name == "llama3.2":
        assert ids[:2] != [tok.bos_token_id] * 2 and ids[0] == tok.bos_token_id


def test_late_system_kept_in_place(pair):
    _, tok, _ = pair
    text = tok.render_chat(CASES[8][1], date_string="26 Jul 2024")
    assert text.index("Hi!") < text.index("Now answer in French.") < text.index("How are you?")


def test_late_system_merged_when_template_refuses():
    template = (
        "{% for m in messages %}{% if m.role == 'system' and not loop.first %}"
        "{{ raise_exception('System role only first') }}{% endif %}"
        "[{{ m.role }}]{{ m.content }}{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "u1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "u2"},
    ]
    assert render_chat_template(template, messages) == "[system]s2[user]u1[user]u2"
    dropping = "{% for m in messages %}{% if m.role != 'system' or loop.first %}{{ m.content }}|{% endif %}{% endfor %}"
    messages.insert(0, {"role": "system", "content": "s1"})
    assert render_chat_template(dropping, messages) == "s1\n\ns2|u1|u2|"


def test_hf_template_environment():
    template = (
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
        "{% if loop.first %}{% continue %}{% endif %}!{% endfor %}"
        "{{ {'b': 'ü<>', 'a': 1} | tojson }}{{ [1] | tojson(indent=2) }}{{ strftime_now('%Y') }}"
    )
    text = render_chat_template(template, [{"role": "user", "content": "x"}] * 2)
    assert text.startswith('xx!{"b": "ü<>", "a": 1}[\n  1\n]2')
    unsafe = "{% set ns = namespace() %}{% set ns._x = 1 %}"
    with pytest.raises(InvalidRequest):
        render_chat_template(unsafe, [{"role": "user", "content": "x"}])
    escape = "{{ messages.__class__ }}{{ ''.__class__.__mro__ }}"
    with pytest.raises(InvalidRequest):
        render_chat_template(escape, [{"role": "user", "content": "x"}])


def test_template_errors_are_invalid_request(pair):
    name, tok, _ = pair
    with pytest.raises(InvalidRequest):
        tok.render_chat([])
    with pytest.raises(InvalidRequest):
        tok.render_chat([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(InvalidRequest):
        tok.render_chat([{"role": "user", "content": "x"}], tools={"not": "a list"})
    user = [{"role": "user", "content": "x"}]
    # Reserved names in a request's chat_template_kwargs never break the call.
    assert tok.render_chat(user, None, True, messages=[]) == tok.render_chat(user)
    assert tok.render_chat(user, None, True, add_generation_prompt=False) == tok.render_chat(
        user, add_generation_prompt=False
    )
    if name == "llama3.2":
        two_calls = tool_round(ARGS)
        two_calls[2]["tool_calls"] *= 2
        with pytest.raises(InvalidRequest, match="single tool-calls"):
            tok.render_chat(two_calls, tools=[WEATHER])


def test_named_templates_pick_default_and_tool_use():
    hf = tokenizers.Tokenizer.from_file(str(FIXTURES / "qwen2.5" / "tokenizer.json"))
    tok = Tokenizer(
        hf, chat_template={"default": "D{{ tools }}", "tool_use": "T{{ tools|length }}"}
    )
    messages = [{"role": "user", "content": "x"}]
    assert tok.render_chat(messages) == "DNone"
    assert tok.render_chat(messages, tools=[WEATHER]) == "T1"
    assert tok.render_chat(messages, tools=[]) == "DNone"


def test_smollm2_template_with_chatml_tokenizer():
    template = (FIXTURES / "smollm2" / "chat_template.jinja").read_text()
    path = FIXTURES / "qwen2.5"
    hf = AutoTokenizer.from_pretrained(path)
    tok = Tokenizer(
        tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")),
        chat_template=template,
        eos_token="<|im_end|>",
    )
    for messages in (CASES[0][1], CASES[1][1], CASES[8][1]):
        expected = hf_render(hf, messages, None, True, chat_template=template)
        assert tok.encode_chat(messages) == expected


def test_normalize_messages():
    out = normalize_messages(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [tool_call("not json")],
                "name": None,
            },
            {"role": "assistant", "content": "x", "thinking": "t"},
            {"role": "developer", "content": "d"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}, "raw"]},
        ]
    )
    assert out[2] == {"role": "system", "content": "d"}
    assert out[3]["content"] == "no\nraw"
    assert out[0] == {"role": "assistant", "content": "", "tool_calls": [tool_call("not json")]}
    assert out[1]["reasoning_content"] == "t"


def test_qwen3_oracle(load_tokenizer):
    oracle = json.loads((FIXTURES / "qwen3" / "oracle" / "python_oracle.json").read_text())
    tok = load_tokenizer("qwen3")
    for case in oracle["chat"]:
        req = case["request"]
        kwargs = req.get("chat_template_kwargs", {})
        assert tok.render_chat(req["messages"], **kwargs) == case["rendered"], case["name"]
        assert tok.encode_chat(req["messages"], **kwargs) == case["token_ids"], case["name"]
    for case in oracle["completion"]:
        prompt = case["request"]["prompt"]
        if isinstance(prompt, list):
            continue  # token ids pass through untouched: nothing to tokenize
        ids = tok.encode(prompt, add_special_tokens=case["request"].get("add_special_tokens", True))
        assert ids == case["token_ids"], case["name"]


def test_tokenizer_basics(load_tokenizer):
    llama = load_tokenizer("llama3.2")
    assert llama.eos_token_ids == [128001, 128008, 128009]
    assert llama.encode("Hi")[0] == llama.bos_token_id == 128000
    assert llama.encode("Hi", add_special_tokens=False)[0] != 128000
    assert llama.think_tokens is None and llama.tool_format == "llama3_json"
    qwen = load_tokenizer("qwen3")
    assert qwen.think_tokens == ("<think>", "</think>") and qwen.tool_format == "hermes"
    assert qwen.eos_token_ids == [151645, 151643] and qwen.bos_token_id is None
    assert qwen.decode(qwen.encode("héllo 🙂<|im_end|>")) == "héllo 🙂"
    stories = load_tokenizer("stories260k")
    assert not stories.has_chat_template and stories.encode("Once upon a time")[0] == 1
    with pytest.raises(InvalidRequest):
        stories.render_chat([{"role": "user", "content": "hi"}])


def test_added_tokens_from_tokenizer_config(tmp_path):
    source = FIXTURES / "stories260k"
    for name in ("tokenizer.json", "generation_config.json"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        "512": {"content": "<|im_end|>", "special": True},
        "513": {"content": "<tool_call>", "special": False, "normalized": False},
    }
    config["eos_token"] = "<|im_end|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.token_id("<|im_end|>") == 512 and tok.eos_token_ids == [2, 512]
    assert tok.special_ids == {0, 1, 2, 512}
    assert tok.encode("a<tool_call>", add_special_tokens=False)[-1] == 513


def test_generation_defaults():
    assert generation_defaults(FIXTURES / "qwen3") == {
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "eos_token_ids": [151645, 151643],
    }
    assert generation_defaults(FIXTURES / "stories260k") == {
        "temperature": 0.0,
        "eos_token_ids": [2],
    }
    assert generation_defaults(FIXTURES / "smollm2") == {}
