"""Constrained decoding: the grammar a request's answer must follow, compiled with llguidance.

Why llguidance (over xgrammar and outlines-core): the widest JSON-schema coverage of the three
(`$ref`, `anyOf`/`oneOf`, string formats and patterns, numeric bounds), an Earley parser that
computes a mask in tens of microseconds without a per-schema precompilation of the vocabulary
(a schema compiles in about a millisecond), abi3 CPU wheels with no torch or transformers
dependency, and the MIT licence; vLLM, SGLang and llama.cpp ship it.

What is constrained (a request's `constrained` property):
- `response_format` `json_schema` / `json_object`: the answer is one JSON value of the schema;
- `tool_choice` a named function: exactly one call of that tool, in the model's own tool-call
  format (`Tokenizer.tool_format`: Hermes `<tool_call>\\n{"name": ..., "arguments": ...}\\n
  </tool_call>`, Llama 3 `{"name": ..., "parameters": ...}`), arguments valid against the
  tool's `parameters`; so the text stream turns it into `tool_calls` as for any answer;
- `tool_choice: "required"`: a call of one of the tools; several (Hermes: one block after
  another, Llama 3: separated by "; ") unless `parallel_tool_calls` is false;
- `tool_choice: "auto"` with a `strict: true` tool: free text, but a call the model opens must
  be a call of one of the tools (strict tools' arguments valid against their schema, other
  tools' arguments any object). The free text admits no special token but the think tags.
Generated JSON is written compactly, with `", "` and `": "` as separators and no other
whitespace: a small model left free to indent can write whitespace forever.
Thinking: constrained requests render the chat template with thinking off unless the request
turns it on itself (prompts.py); then the grammar first admits a `<think>...</think>` block (or
the rest of one, when the prompt opened it).

Compiling: the llguidance tokenizer of a model is built once, on the first constrained request
(about a second for a 150k vocabulary), off the event loop; compiled grammars are kept per
tokenizer in a small LRU, and every sequence gets its own copy of the compiled matcher. A schema
llguidance cannot compile is a 400 naming the request field (`response_format` or `tools`) and
llguidance's message (which names the keyword).
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any

import llguidance

from cortex.api.openai import GenerationRequest
from cortex.errors import InvalidRequest
from cortex.neuron.engine.logits import TokenConstraint
from cortex.neuron.text.prompts import template_kwargs
from cortex.neuron.text.textstream import prompt_opens_think
from cortex.neuron.text.tokenizer import THINK_TAGS, Tokenizer

CACHE_SIZE = 64  # compiled grammars kept per model
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_HERMES = ("<tool_call>", "</tool_call>")
_PYTHON_TAG = "<|python_tag|>"


class CompiledGrammar:
    """A compiled grammar: `constraint()` gives each sequence its own matcher."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._template = matcher  # never fed a token: only copied
        self.vocab_size = vocab_size

    def constraint(self) -> TokenConstraint:
        """A fresh matcher at the grammar's start, for one sequence."""
        return TokenConstraint(self._template.deep_copy(), self.vocab_size)


class GrammarCompiler:
    """One model's llguidance tokenizer and its cache of compiled grammars (thread-safe)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._lltok: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()

    @property
    def lltok(self) -> llguidance.LLTokenizer:
        """The llguidance tokenizer (built on first use; its EOS ids are the model's)."""
        with self._lock:
            if self._lltok is None:
                tok = self._tokenizer
                self._lltok = llguidance.LLTokenizer(
                    tok.hf.to_str(), n_vocab=tok.vocab_size, eos_token=list(tok.eos_token_ids)
                )
            return self._lltok

    def compile(self, grammar: str, param: str) -> CompiledGrammar:
        """The compiled `grammar` (from the cache when seen); 400 naming `param` if invalid."""
        lltok = self.lltok
        with self._lock:
            matcher = self._cache.get(grammar)
            if matcher is not None:
                self._cache.move_to_end(grammar)
                return CompiledGrammar(matcher, lltok.vocab_size)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
        if is_error:
            raise InvalidRequest(f"'{param}' cannot be enforced: {messages[0]}", param=param)
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(
                f"'{param}' cannot be enforced: {matcher.get_error()}", param=param
            )
        with self._lock:
            self._cache[grammar] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return CompiledGrammar(matcher, lltok.vocab_size)


_compilers: weakref.WeakKeyDictionary[Tokenizer, GrammarCompiler] = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def compiler_for(tokenizer: Tokenizer) -> GrammarCompiler:
    """The GrammarCompiler of `tokenizer`'s model (one per loaded tokenizer)."""
    with _compilers_lock:
        compiler = _compilers.get(tokenizer)
        if compiler is None:
            compiler = _compilers[tokenizer] = GrammarCompiler(tokenizer)
        return compiler


async def compile_request(
    tokenizer: Tokenizer, req: GenerationRequest, prompt_ids: list[int]
) -> CompiledGrammar | None:
    """The compiled grammar of `req` (None when it is not constrained), compiled off the
    event loop; `prompt_ids` tell whether the prompt opened a think block."""
    if not req.constrained:
        return None
    spec = request_grammar(req, tokenizer, prompt_ids)
    if spec is None:
        return None
    grammar, param = spec
    return await asyncio.to_thread(compiler_for(tokenizer).compile, grammar, param)


def request_grammar(
    req: GenerationRequest, tokenizer: Tokenizer, prompt_ids: list[int]
) -> tuple[str, str] | None:
    """(llguidance grammar, the request field it enforces) for a constrained request."""
    if req.response_schema is not None:
        answer, param = f"answer: {_json(req.response_schema)}", "response_format"
    elif req.parse_tools and req.tools:
        answer, param = _tool_rules(req, tokenizer), "tools"
        if answer is None:
            return None
    else:
        return None
    return "%llguidance {}\n" + _start(req, tokenizer, prompt_ids) + answer, param


def _json(schema: dict[str, Any]) -> str:
    """`%json {...}` of `schema`, written compactly (see the module docstring)."""
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_STYLE})


def _special(tokenizer: Tokenizer, text: str) -> str:
    """`text` in a grammar: the special-token form when it is one token, else a literal."""
    token_id = tokenizer.token_id(text)
    return f"<[{token_id}]>" if token_id is not None else json.dumps(text)


def _start(req: GenerationRequest, tokenizer: Tokenizer, prompt_ids: list[int]) -> str:
    """The start rule: the answer, after a think block when the request turned thinking on."""
    if tokenizer.think_tokens is None or req.kind != "chat":
        return "start: answer\n"
    close = _special(tokenizer, THINK_TAGS[1])
    if prompt_opens_think(tokenizer, prompt_ids):
        return f"start: THINK {close} WS answer\nTHINK: /(.|\\n)*/\nWS: /\\s*/\n"
    if template_kwargs(req).get("enable_thinking") is True:
        open_ = _special(tokenizer, THINK_TAGS[0])
        return f"start: ({open_} THINK {close} WS)? answer\nTHINK: /(.|\\n)*/\nWS: /\\s*/\n"
    return "start: answer\n"


def _tool_rules(req: GenerationRequest, tokenizer: Tokenizer) -> str | None:
    """Rules for `answer` under a forced or strict tool choice (None: nothing to enforce)."""
    tools = [t["function"] for t in req.tools or []]
    if req.tool_choice == "function":
        tools = [t for t in tools if t["name"] == req.tool_name]
    strict_only = req.tool_choice == "auto"
    llama = tokenizer.tool_format == "llama3_json"
    key = "parameters" if llama else "arguments"
    calls = []
    for tool in tools:
        params = tool.get("parameters") or {"type": "object"}
        if strict_only and tool.get("strict") is not True:
            params = {"type": "object"}
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool["name"]}, key: params},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    body = f"body: {_json({'anyOf': calls})}\n"
    if llama:
        call = "call: body\n"
        separator = '"; "'
    else:
        open_, close = (_special(tokenizer, tag) for tag in _HERMES)
        call = f'call: {open_} "\\n" body "\\n" {close}\n'
        separator = '"\\n"'
    many = req.tool_choice != "function" and req.parallel_tool_calls
    calls_rule = f"calls: call ({separator} call)*\n" if many else "calls: call\n"
    if not strict_only:
        return "answer: calls\n" + calls_rule + call + body
    # auto: free text, and any call the model opens follows the grammar.
    if llama:
        return "answer: TEXT | calls\nTEXT: /[^{](.|\\n)*/\n" + calls_rule + call + body
    specials = " | ".join(_special(tokenizer, t) for t in (tokenizer.think_tokens or ()))
    free = f"free: (TEXT{' | ' + specials if specials else ''})*\nTEXT: /(.|\\n)+/\n"
    return "answer: free (call free)*\n" + free + call + body
