"""One pipeline for generated text: ids -> text -> stop strings -> reasoning -> tool calls.

1. The incremental detokenizer turns ids into text that never ends inside a character. EOS ids
   are dropped first: they end the answer and are never text. The request's stop token ids end
   it too: nothing from one on is text.
2. Stop strings are matched on that text, across token boundaries. Text that may begin a stop
   string is held back, so a stop string never leaks. After a stop string or a stop token
   `stopped` is true (the caller cancels the request) and nothing more is emitted.
   `stop_reason` says what ended the answer as vLLM's choice field does: the matched stop
   string, the stop token id, or None.
3. Reasoning: `<think>...</think>` becomes reasoning, also when the prompt itself opened the block
   (the tail of the prompt holds an unclosed `<think>`, e.g. templates that end in "<think>\\n").
   On by default when the vocabulary has the think tokens.
4. Tool calls are parsed in the content (not the reasoning) when the request has tools, in the
   model's format (`Tokenizer.tool_format`, Hermes by default).

`push` returns the deltas of each step; `finish` the last ones; `result()` assembles the whole
answer for non-streaming responses from the same deltas, so both always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cortex.neuron.text.detokenizer import IncrementalDetokenizer
from cortex.neuron.text.parsers import (
    Delta,
    ReasoningSplitter,
    StopMatcher,
    ToolParser,
    make_tool_parser,
)
from cortex.neuron.text.tokenizer import THINK_TAGS, Tokenizer

__all__ = ["ChatResult", "Delta", "TextStream", "assemble"]

# Prompt tokens searched for a template-opened think block: it is always the prompt's tail.
_PROMPT_TAIL = 16


@dataclass
class ChatResult:
    """A whole answer: `content` is None when the answer is only tool calls."""

    content: str | None
    reasoning_content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


def assemble(deltas: Iterable[Delta], finish_reason: str | None) -> ChatResult:
    """Assemble streamed deltas into one answer with OpenAI-shaped `tool_calls`. The finish
    reason becomes "tool_calls" when there are tool calls and generation stopped normally."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if d.kind == "content":
            content.append(d.text)
        elif d.kind == "reasoning":
            reasoning.append(d.text)
        elif d.index is not None:
            call = calls.setdefault(
                d.index, {"id": d.id, "type": "function", "function": {"name": d.name}}
            )
            call["function"]["arguments"] = call["function"].get("arguments", "") + (
                d.arguments or ""
            )
    text = "".join(content)
    if calls and finish_reason in ("stop", None):
        finish_reason = "tool_calls"
    return ChatResult(
        content=text if text or not calls else None,
        reasoning_content="".join(reasoning) or None,
        tool_calls=[calls[i] for i in sorted(calls)],
        finish_reason=finish_reason,
    )


def prompt_opens_think(tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> bool:
    """Whether the prompt ends inside a think block that the template opened."""
    tail = tokenizer.decode(list(prompt_ids[-_PROMPT_TAIL:]), skip_special_tokens=False)
    return tail.rfind(THINK_TAGS[0]) > tail.rfind(THINK_TAGS[1])


class TextStream:
    """Turns one sequence's generated ids into content, reasoning and tool-call deltas."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        *,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        tools: bool = False,
        reasoning: bool | None = None,
        skip_special_tokens: bool = True,
    ) -> None:
        """`stop_token_ids`: the request's own stop tokens (EOS ids need not be listed).
        `tools`: the request has tools (parse tool calls). `reasoning`: split `<think>` blocks
        (None: when the vocabulary has the think tokens)."""
        tool_format = (tokenizer.tool_format or "hermes") if tools else None
        self._tools: ToolParser | None = make_tool_parser(tool_format)
        keep = ["<|python_tag|>"] if tool_format == "llama3_json" else []
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens, keep)
        self._eos = frozenset(tokenizer.eos_token_ids)
        # An EOS id listed as a stop token is still EOS (vLLM checks EOS first).
        self._stop_ids = frozenset(stop_token_ids) - self._eos
        self._stop_token: int | None = None
        self._stop = StopMatcher(stop)
        use_reasoning = tokenizer.think_tokens is not None if reasoning is None else reasoning
        self._reasoning = (
            ReasoningSplitter(*THINK_TAGS, in_reasoning=prompt_opens_think(tokenizer, prompt_ids))
            if use_reasoning
            else None
        )
        self._deltas: list[Delta] = []
        self.finish_reason: str | None = None

    @property
    def stopped(self) -> bool:
        """A stop string matched or a stop token came: the caller should end the request."""
        return self._stop.stopped or self._stop_token is not None

    @property
    def stop_reason(self) -> str | int | None:
        """What ended the answer: the matched stop string, else the stop token id that came,
        else None (EOS, length, or not ended yet)."""
        return self._stop.matched if self._stop.stopped else self._stop_token

    def push(self, token_ids: Iterable[int]) -> list[Delta]:
        """Deltas for newly generated ids (often none while text is held back)."""
        if self.stopped:
            return []
        text = self._detok.push(self._text_ids(token_ids))
        return self._route(self._stop.feed(text)) if text else []

    def _text_ids(self, token_ids: Iterable[int]) -> list[int]:
        """The text ids among `token_ids`: EOS ids dropped, nothing from a stop token on."""
        ids = []
        for i in token_ids:
            if i in self._stop_ids:
                self._stop_token = i
                break
            if i not in self._eos:
                ids.append(i)
        return ids

    def finish(self, finish_reason: str | None) -> list[Delta]:
        """The remaining deltas at the end of generation; sets `finish_reason` ("tool_calls"
        when the answer made tool calls and generation stopped normally)."""
        out: list[Delta] = []
        if not self._stop.stopped:
            text = self._stop.feed(self._detok.flush())
            out += self._route(text + self._stop.finish())
        if self._reasoning is not None:
            out += self._route_pieces(self._reasoning.finish())
        if self._tools is not None:
            out += self._record(self._tools.finish())
        made_calls = self._tools is not None and self._tools.calls > 0
        normal_end = finish_reason in ("stop", None)
        self.finish_reason = "tool_calls" if made_calls and normal_end else finish_reason
        return out

    def result(self) -> ChatResult:
        """Everything emitted so far, assembled (call after `finish`)."""
        return assemble(self._deltas, self.finish_reason)

    def _route(self, text: str) -> list[Delta]:
        if not text:
            return []
        if self._reasoning is None:
            return self._route_pieces([("content", text)])
        return self._route_pieces(self._reasoning.feed(text))

    def _route_pieces(self, pieces: list[tuple[str, str]]) -> list[Delta]:
        out: list[Delta] = []
        for kind, text in pieces:
            if kind == "reasoning":
                out.append(Delta("reasoning", text))
            elif self._tools is not None:
                out += self._tools.feed(text)
            else:
                out.append(Delta("content", text))
        return self._record(out)

    def _record(self, deltas: list[Delta]) -> list[Delta]:
        merged: list[Delta] = []
        for d in deltas:
            if merged and d.kind != "tool_call" and merged[-1].kind == d.kind:
                merged[-1] = Delta(d.kind, merged[-1].text + d.text)
            else:
                merged.append(d)
        self._deltas += merged
        return merged
