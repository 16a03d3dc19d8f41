"""OpenAI chat and legacy completion requests: validation into a `GenerationRequest`.

`parse_chat` / `parse_completion` turn a decoded JSON body into a `GenerationRequest`, raising
`InvalidRequest` (with `param`) for anything malformed; unknown fields are ignored.
`resolve_sampling` merges request -> the model's generation_config.json -> built-in defaults and
clamps `max_tokens` to the room left in the context (a prompt over the context raises
`ContextLengthExceeded`).

Decisions where OpenAI is silent or we cannot follow it exactly:
- `developer` messages are passed to chat templates as `system`.
- `tool_choice: "none"` hides the tools from the template and turns tool-call parsing off;
  `"required"` and a named function are treated as `"auto"` (no constrained decoding).
- `response_format` `json_object` and `json_schema` both mean "the answer parses as JSON" (the
  schema itself is not enforced; see cortex/neuron/json_mode.py).
- A legacy completion takes one prompt (a string or a list of token ids); batches are refused.
- vLLM's `stop_token_ids` extension is honoured; which stop string or stop token ended an answer
  is reported as vLLM does, in the choice's `stop_reason` (see cortex/api/openai.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cortex.api.limits import DEFAULT_MAX_TOKENS, bounded, is_token, number, token_ids
from cortex.errors import ContextLengthExceeded, InvalidRequest

BUILTIN_SAMPLING: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty")  # fmt: skip
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class GenerationRequest:
    """Everything a chat or legacy completion request asks for, validated."""

    kind: str  # "chat" | "completion"
    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    parse_tools: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    max_tokens: int | None = None
    sampling: dict[str, float | int] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    json_mode: bool = False


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _bounded(body: dict[str, Any], key: str, bound: str | None = None) -> Any:
    """`body[key]` within the bounds of `bound` (default `key`), or None when absent."""
    value = body.get(key)
    return None if value is None else bounded(value, bound or key)


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail(f"'{key}' must be a boolean", key)
    return value


def _common(body: Any, kind: str) -> GenerationRequest:
    if not isinstance(body, dict):
        raise _fail("the request body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("'model' is required and must be a string", "model")
    req = GenerationRequest(kind=kind, model=model)
    req.stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _fail("'stream_options' must be an object", "stream_options")
        req.include_usage = bool(options.get("include_usage")) and req.stream
    for key in ("max_completion_tokens", "max_tokens"):
        value = _bounded(body, key, "max_tokens")
        if value is not None:
            req.max_tokens = value
            break
    for key in _FLOAT_FIELDS:
        value = _bounded(body, key)
        if value is not None:
            req.sampling[key] = value
    top_k = _bounded(body, "top_k")
    if top_k is not None:
        req.sampling["top_k"] = max(0, top_k)  # -1 and 0 both mean off
    req.seed = _bounded(body, "seed")
    req.n = _bounded(body, "n") or 1
    req.stop = _stop(body.get("stop"))
    req.stop_token_ids = _stop_token_ids(body.get("stop_token_ids"))
    req.json_mode = _response_format(body.get("response_format"))
    return req


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _fail("'stop' must be a string or a list of strings", "stop")
    return [s for s in value if s]


def _stop_token_ids(value: Any) -> list[int]:
    """vLLM's `stop_token_ids` extension: token ids that end the answer like EOS."""
    return [] if value is None else token_ids(value, "stop_token_ids")


def _response_format(value: Any) -> bool:
    if value is None:
        return False
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _fail(
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
            "response_format",
        )
    return kind != "text"


def parse_chat(body: Any) -> GenerationRequest:
    """Validate a `/v1/chat/completions` body."""
    req = _common(body, "chat")
    req.messages = _messages(body.get("messages"))
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(_is_tool(t) for t in tools)):
        raise _fail("'tools' must be a list of {type: function, function: {name}}", "tools")
    choice = body.get("tool_choice")
    if (
        choice is not None
        and choice not in ("none", "auto", "required")
        and not (isinstance(choice, dict) and isinstance(choice.get("function"), dict))
    ):
        raise _fail("'tool_choice' must be none, auto, required or a function", "tool_choice")
    if tools and choice != "none":
        req.tools = tools
        req.parse_tools = True
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _fail("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    req.template_kwargs = dict(kwargs or {})
    req.logprobs = _flag(body, "logprobs")
    top = _bounded(body, "top_logprobs")
    if top is not None:
        if top and not req.logprobs:
            raise _fail("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        req.top_logprobs = top
    return req


def _is_tool(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _fail("'messages' must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _fail(f"{param} needs a 'role' among {sorted(_ROLES)}", param)
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                    raise _fail(f"{param}.content: only text parts are supported", param)
                if not isinstance(part.get("text"), str):
                    raise _fail(f"{param}.content: a text part needs 'text'", param)
        elif content is not None and not isinstance(content, str):
            raise _fail(f"{param}.content must be a string, a list of parts or null", param)
        message = dict(message)
        if message["role"] == "developer":
            message["role"] = "system"
        out.append(message)
    return out


def parse_completion(body: Any) -> GenerationRequest:
    """Validate a legacy `/v1/completions` body."""
    req = _common(body, "completion")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(is_token(t) for t in prompt):
        req.prompt = [int(t) for t in prompt]
    elif isinstance(prompt, str):
        req.prompt = prompt
    else:
        raise _fail("'prompt' must be a string or a list of token ids (one prompt)", "prompt")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = number(logprobs, "logprobs", integer=True)
        if not 0 <= logprobs <= 5:
            raise _fail("'logprobs' must be between 0 and 5", "logprobs")
        req.logprobs, req.top_logprobs = True, int(logprobs)
    return req


def resolve_sampling(
    req: GenerationRequest, defaults: dict[str, Any], prompt_tokens: int, max_context: int
) -> dict[str, Any]:
    """Sampling fields (`SamplingParams` keyword arguments) for one sequence of `req`.

    Precedence: request -> `defaults` (the model's generation_config.json) -> built-in.
    `max_tokens` is clamped to the context room; a prompt over the context raises
    `ContextLengthExceeded`.
    """
    if prompt_tokens > max_context:
        raise ContextLengthExceeded(prompt_tokens, max_context)
    room = max_context - prompt_tokens
    wanted = req.max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    fields: dict[str, Any] = {"max_tokens": max(0, min(int(wanted), room))}
    greedy_default = defaults.get("do_sample") is False
    for key, builtin in BUILTIN_SAMPLING.items():
        value = req.sampling.get(key, defaults.get(key, builtin))
        fields[key] = type(builtin)(value) if value is not None else builtin
    if greedy_default and "temperature" not in req.sampling:
        fields["temperature"] = 0.0
    fields.update(
        seed=req.seed,
        stop=list(req.stop),
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
    )
    return fields
