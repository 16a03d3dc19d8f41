"""OpenAI chat and legacy completion requests: validation into a `GenerationRequest`.

`parse_chat` / `parse_completion` turn a decoded JSON body into a `GenerationRequest`, raising
`InvalidRequest` (with `param`) for anything malformed; unknown fields are ignored.
`resolve_sampling` merges request -> the model's generation_config.json -> built-in defaults and
clamps `max_tokens` to the room left in the context (a prompt over the context raises
`ContextLengthExceeded`).

Decisions where OpenAI is silent or we cannot follow it exactly:
- `developer` messages are passed to chat templates as `system`.
- `tool_choice: "none"` hides the tools from the template and turns tool-call parsing off.
  `"required"` and a named function are enforced by constrained decoding (the answer is tool
  calls in the model's own format, arguments valid against the tool's `parameters`): a named
  function is called exactly once; `"required"` makes one call, or one or more while
  `parallel_tool_calls` is not false. Under `"auto"`, tools with `strict: true` get arguments
  valid against their schema once the model opens a call (see cortex/neuron/text/grammar.py).
- `response_format` `json_schema` is enforced whether or not `strict` is set (as vLLM does): a
  schema is a contract the caller wants kept; `json_object` is the schema `{"type": "object"}`.
  A constrained request cannot take `ignore_eos` (the grammar ends the answer).
- `top_p: 0` keeps only the most likely token: it is greedy decoding.
- A legacy completion takes one prompt or a batch (a list of strings or of token-id lists):
  choice `i * n + j` is the j-th answer to prompt i, as in OpenAI and vLLM. `max_tokens: 0`
  generates nothing; with `echo` the prompt comes back, with `logprobs` its tokens' logprobs
  (the first one null: nothing precedes it).
- vLLM's extensions `stop_token_ids`, `ignore_eos` and `min_tokens` are honoured; which stop
  string or stop token ended an answer is reported as vLLM does, in the choice's `stop_reason`
  (see cortex/api/openai.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cortex.api.limits import (
    DEFAULT_MAX_TOKENS,
    MAX_CHOICES,
    bounded,
    is_token,
    logit_bias,
    number,
    token_ids,
)
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
    prompts: list[str | list[int]] = field(default_factory=list)  # completions: one or a batch
    echo: bool = False
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
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    # Constrained decoding: the JSON schema of `response_format`, and how tools must be called.
    response_schema: dict[str, Any] | None = None
    tool_choice: str = "auto"  # "auto" | "none" | "required" | "function"
    tool_name: str | None = None  # with tool_choice "function"
    parallel_tool_calls: bool = True

    @property
    def prompt(self) -> str | list[int] | None:
        """The first (or only) prompt of a legacy completion."""
        return self.prompts[0] if self.prompts else None

    @property
    def strict_tools(self) -> bool:
        """Some tool asks for schema-valid arguments (`function.strict: true`)."""
        return any(t["function"].get("strict") is True for t in self.tools or [])

    @property
    def constrained(self) -> bool:
        """The answer is held to a grammar (a schema, a forced tool call or strict tools)."""
        forced = self.tool_choice in ("required", "function")
        return self.response_schema is not None or (
            self.parse_tools and (forced or self.strict_tools)
        )


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
    req.response_schema = _response_format(body.get("response_format"))
    if body.get("logit_bias") is not None:
        req.logit_bias = logit_bias(body["logit_bias"])
    req.min_tokens = _bounded(body, "min_tokens") or 0
    req.ignore_eos = _flag(body, "ignore_eos")
    if req.ignore_eos and req.response_schema is not None:
        raise _fail("'ignore_eos' cannot be used with 'response_format'", "ignore_eos")
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


def _response_format(value: Any) -> dict[str, Any] | None:
    """The JSON schema `response_format` asks for (None for text)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _fail(
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
            "response_format",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise _fail("'response_format.json_schema' must be an object", "response_format")
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise _fail("'response_format.json_schema.schema' must be an object", "response_format")
    return schema


def parse_chat(body: Any) -> GenerationRequest:
    """Validate a `/v1/chat/completions` body."""
    req = _common(body, "chat")
    req.messages = _messages(body.get("messages"))
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(_is_tool(t) for t in tools)):
        raise _fail("'tools' must be a list of {type: function, function: {name}}", "tools")
    _tool_choice(req, body.get("tool_choice"), tools or [])
    if tools and req.tool_choice != "none":
        req.tools = tools
        req.parse_tools = True
    if body.get("parallel_tool_calls") is not None:
        req.parallel_tool_calls = _flag(body, "parallel_tool_calls")
    if req.ignore_eos and req.constrained:
        raise _fail("'ignore_eos' cannot be used with a forced or strict tool call", "ignore_eos")
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


def _tool_choice(req: GenerationRequest, choice: Any, tools: list[dict[str, Any]]) -> None:
    """Set `req.tool_choice` (and `tool_name`); a forced call needs a tool to call."""
    if choice is None or choice in ("none", "auto", "required"):
        req.tool_choice = choice or "auto"
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in {t["function"]["name"] for t in tools}:
            raise _fail(f"'tool_choice' names {name!r}, which is not in 'tools'", "tool_choice")
        req.tool_choice, req.tool_name = "function", name
    else:
        raise _fail("'tool_choice' must be none, auto, required or a function", "tool_choice")
    if req.tool_choice == "required" and not tools:
        raise _fail("'tool_choice' 'required' needs 'tools'", "tool_choice")


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
    req.prompts = _prompts(body.get("prompt"))
    if len(req.prompts) * req.n > MAX_CHOICES:
        raise _fail(f"prompts times 'n' must be at most {MAX_CHOICES}", "prompt")
    req.echo = _flag(body, "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = number(logprobs, "logprobs", integer=True)
        if not 0 <= logprobs <= 5:
            raise _fail("'logprobs' must be between 0 and 5", "logprobs")
        req.logprobs, req.top_logprobs = True, int(logprobs)
    return req


def _prompts(value: Any) -> list[str | list[int]]:
    """One prompt (a string, token ids) or a batch (a list of strings or of token-id lists)."""
    batch = (
        value if isinstance(value, list) and value and isinstance(value[0], str | list) else [value]
    )
    prompts: list[str | list[int]] = []
    for prompt in batch:
        if isinstance(prompt, list) and prompt and all(is_token(t) for t in prompt):
            prompts.append([int(t) for t in prompt])
        elif isinstance(prompt, str):
            prompts.append(prompt)
        else:
            raise _fail(
                "'prompt' must be a string, a list of token ids, or a list of either", "prompt"
            )
    return prompts


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
    wanted = req.max_tokens
    if wanted is None:
        wanted = defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
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
        logit_bias=dict(req.logit_bias),
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
    )
    return fields
