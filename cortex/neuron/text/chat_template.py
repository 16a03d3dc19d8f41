"""Chat templates rendered the way Hugging Face transformers renders them.

The environment matches `transformers.utils.chat_template_utils`: an
`ImmutableSandboxedEnvironment` with `trim_blocks`, `lstrip_blocks` and the `loopcontrols`
extension, a `{% generation %}` tag (rendered as its body), `raise_exception`, `strftime_now`,
`tojson` with HF's semantics (`ensure_ascii=False`, `indent`, `separators`, `sort_keys=False`), a
`dict` constructor and a `namespace` that refuses underscore names. Templates come from
`chat_template.jinja`, else `chat_template.json`, else `tokenizer_config.json` (a string, or a
list of named templates: "tool_use" when tools are given and it exists, else "default").

Messages are normalised before rendering, so OpenAI-style requests render like HF renders the
equivalent plain messages:

- keys whose value is null are dropped (as HF does), except `content: null`, which becomes "";
- list-valued content (OpenAI content parts) becomes one string: the text parts joined with "\\n"
  (what vLLM does for templates that expect strings). Parts that are not text are refused with
  `InvalidRequest`: the models served are text-only, and dropping an image silently would answer a
  different question than the one asked;
- tool-call `arguments` given as a JSON string are parsed to an object (templates such as
  Qwen2.5's and Llama 3's apply `tojson` to them); a string that is not a JSON object stays as-is;
- every tool call the OpenAI spec allows renders as a function call: a `custom` tool call
  (`{"custom": {"name", "input"}}`) becomes `{"function": {"name", "arguments": input}}`, a call
  without `arguments` gets `{}`; the deprecated `function_call` of an assistant message becomes
  its one tool call and the `function` role becomes `tool` (templates know neither), so no
  template meets an undefined field;
- `reasoning` / `thinking` are copied to `reasoning_content`, as HF does;
- the role "developer" (OpenAI's newer name for the system role) becomes "system": templates do
  not know it, and Qwen's would silently leave the message out;
- an empty `tools` list means no tools (Llama's template would otherwise announce an empty tool
  environment).

System messages after the first: they are kept in place when the template accepts them (Qwen2.5,
Qwen3, Llama 3.2 and SmolLM2 all render them where they stand, which is what the conversation
means). A template that raises on them, or that silently leaves their text out of the prompt, is
rendered again with every system message merged, in order and joined by a blank line, into one
system message at the start. They are never dropped or turned into user text.

Templates without a system role (Gemma 2's raises on one): the system text is merged into the
first user turn, followed by a blank line, which is what Gemma 3's own template does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cortex.errors import InvalidRequest

ChatTemplate = str | dict[str, str]

# Content part type -> the key holding its text.
_TEXT_PART_TYPES = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
}
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: HF marks assistant spans with it; we render the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names so templates cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters and sorts keys; HF's does neither.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in HF's sandboxed environment (cached by source text)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidRequest(f"the model's chat template does not compile: {e}") from e


def load_chat_template(model_dir: Path, tokenizer_config: Mapping[str, Any]) -> ChatTemplate | None:
    """The template of a model directory: `chat_template.jinja`, `chat_template.json`, or
    `tokenizer_config.json`'s `chat_template` (a list of named templates becomes a dict)."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = model_dir / "chat_template.json"
    if json_file.is_file():
        template = json.loads(json_file.read_text(encoding="utf-8")).get("chat_template")
    else:
        template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        return {t["name"]: t["template"] for t in template}
    return template


def select_template(template: ChatTemplate, tools: Sequence[Any] | None) -> str:
    """Pick the template to render, as HF's `get_chat_template` does for named templates."""
    if isinstance(template, str):
        return template
    if tools and "tool_use" in template:
        return template["tool_use"]
    if "default" in template:
        return template["default"]
    raise InvalidRequest(f"the model has several chat templates and no default: {sorted(template)}")


def _content_text(content: Any) -> Any:
    if content is None:
        return ""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type", "text") if isinstance(part, Mapping) else None
        key = _TEXT_PART_TYPES.get(kind) if isinstance(kind, str) else None
        text = part.get(key) if key else None
        if not isinstance(text, str):
            raise InvalidRequest(
                f"content part of type {kind!r} is not supported: this model takes text only",
                param="messages",
            )
        texts.append(text)
    return "\n".join(texts)


def _tool_call(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return call
    call = {k: v for k, v in call.items() if v is not None}
    custom = call.pop("custom", None)
    if isinstance(custom, Mapping) and "function" not in call:
        call["type"] = "function"
        call["function"] = {"name": custom.get("name"), "arguments": custom.get("input", "")}
    function = call.get("function")
    if isinstance(function, Mapping) and function.get("arguments") is None:
        call["function"] = function = {**function, "arguments": {}}
    if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
        try:
            parsed = json.loads(function["arguments"])
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            call["function"] = {**function, "arguments": parsed}
    return call


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Copies of `messages` in the shape chat templates expect (see the module docstring)."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    out = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidRequest("each message must be an object with a role", param="messages")
        msg = {k: v for k, v in message.items() if v is not None}
        msg["content"] = _content_text(message.get("content"))
        if msg["role"] == "developer":  # OpenAI's newer name for the system role
            msg["role"] = "system"
        if msg["role"] == "function":  # the deprecated tool result
            msg["role"] = "tool"
        function_call = msg.pop("function_call", None)
        if isinstance(function_call, Mapping) and not msg.get("tool_calls"):
            msg["tool_calls"] = [{"type": "function", "function": function_call}]
        if isinstance(msg.get("tool_calls"), list):
            msg["tool_calls"] = [_tool_call(c) for c in msg["tool_calls"]]
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


def _merge_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = [m for m in messages if m["role"] == "system"]
    merged = {**system[0], "content": "\n\n".join(str(m["content"]) for m in system)}
    return [merged, *(m for m in messages if m["role"] != "system")]


def _system_into_first_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The system text prefixed to the first user turn (Gemma's way), or None if there is no
    system message or no user turn to carry it."""
    system = [str(m["content"]) for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    first = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if not system or first is None:
        return None
    prefix = "\n\n".join(system) + "\n\n"
    rest[first] = {**rest[first], "content": prefix + str(rest[first]["content"])}
    return rest


def _render(template: jinja2.Template, variables: dict[str, Any]) -> str:
    try:
        return template.render(variables)
    except jinja2.TemplateError as e:
        raise InvalidRequest(f"chat template error: {e}", param="messages") from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise InvalidRequest(
            f"chat template failed on these messages: {e}", param="messages"
        ) from e


def render_chat_template(
    template: ChatTemplate,
    messages: Sequence[Any],
    tools: Sequence[Any] | None = None,
    add_generation_prompt: bool = True,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Render `messages` (normalised first) to the prompt text, as HF's `apply_chat_template`
    does with `tokenize=False`. `variables` are further template variables: the special tokens
    (bos_token, ...) and kwargs such as `enable_thinking`; they cannot replace `messages`,
    `tools` or `add_generation_prompt`. Raises `InvalidRequest` on template errors."""
    msgs = normalize_messages(messages)
    if tools and (not isinstance(tools, Sequence) or isinstance(tools, str)):
        raise InvalidRequest("tools must be a list", param="tools")
    tools = list(tools) if tools else None
    compiled = compile_template(select_template(template, tools))
    base = {"documents": None, **(variables or {})}
    base.update(tools=tools, add_generation_prompt=add_generation_prompt)
    late_system = [m for m in msgs[1:] if m["role"] == "system"]
    if not late_system:
        try:
            return _render(compiled, {**base, "messages": msgs})
        except InvalidRequest:
            merged_into_user = _system_into_first_user(msgs)
            if merged_into_user is None:
                raise
            return _render(compiled, {**base, "messages": merged_into_user})
    merged = {**base, "messages": _merge_system_messages(msgs)}
    try:
        text = _render(compiled, {**base, "messages": msgs})
    except InvalidRequest:
        return _render(compiled, merged)
    if all(str(m["content"]) in text for m in late_system):
        return text
    return _render(compiled, merged)
