"""Streaming text parsers: stop strings, the reasoning split, tool calls. Pure text in, pieces out.

Every parser takes text in arbitrary chunks (`feed`) and holds back only what may still turn into
a tag or a stop string, so a tag split across chunks is still found and never leaks. Holding back
is bounded by the longest tag, so each chunk costs time in its own length, not the output's. The
non-streaming helpers (`split_reasoning`, `parse_tool_calls`) feed a whole text through the same
code, so streamed and non-streamed answers always agree.

Tool-call formats:
- "hermes" (Qwen, Hermes): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, any
  number of them, with content before. A call is emitted when its closing tag arrives (or at the
  end, if the JSON is complete); a body that is not a JSON object with a "name" stays content,
  tags included. Whitespace around calls is dropped.
- "llama3_json" (Llama 3.x): the whole answer is `{"name": ..., "parameters": {...}}` (several
  separated by ";"), optionally after `<|python_tag|>`. An answer that starts with "{" or the tag
  is held to the end and becomes tool calls if it parses, content otherwise.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DeltaKind = Literal["content", "reasoning", "tool_call"]


@dataclass
class Delta:
    """One piece of streamed output. A tool call comes as a start delta (index, id, name,
    arguments "") followed by a delta carrying its arguments text (index only)."""

    kind: DeltaKind
    text: str = ""
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


def partial_tag_len(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    longest = max((len(t) for t in tags), default=0)
    firsts = {t[0] for t in tags}
    for start in range(max(0, len(text) - longest + 1), len(text)):
        if text[start] not in firsts:
            continue
        tail = text[start:]
        if any(len(t) > len(tail) and t.startswith(tail) for t in tags):
            return len(text) - start
    return 0


def _find_first(text: str, tags: Sequence[str]) -> tuple[int, str | None]:
    found = [(i, t) for t in tags if (i := text.find(t)) >= 0]
    return min(found) if found else (-1, None)


class StopMatcher:
    """Cuts text at the first stop string; text that may begin one is held back. `matched` is
    the stop string that cut it (None until one did)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.matched: str | None = None
        self._held = ""

    @property
    def stopped(self) -> bool:
        """A stop string matched: nothing more is emitted."""
        return self.matched is not None

    def feed(self, text: str) -> str:
        """The text that is safe to emit now ("" once stopped)."""
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        buf = self._held + text
        i, stop = _find_first(buf, self.stops)
        if stop is not None:
            self.matched, self._held = stop, ""
            return buf[:i]
        n = partial_tag_len(buf, self.stops)
        self._held = buf[len(buf) - n :]
        return buf[: len(buf) - n]

    def finish(self) -> str:
        """Held text at the end (a stop string's beginning that never completed)."""
        held, self._held = self._held, ""
        return held


class ReasoningSplitter:
    """Splits text into ("reasoning" | "content", text) pieces at `<think>` / `</think>`.

    Starts in reasoning when the prompt opened the think block. Tags never reach the output: a
    `<think>` in content switches to reasoning, a stray `</think>` is dropped. Whitespace around
    reasoning, at the start of the content that follows it and before a leading `<think>` is
    dropped (chat templates strip it again when they render the history).
    """

    def __init__(self, start: str = "<think>", end: str = "</think>", in_reasoning: bool = False):
        self.tags = (start, end)
        self.in_reasoning = in_reasoning
        self._at_start = not in_reasoning
        self._lstrip = True
        self._held = ""

    def _piece(self, text: str) -> list[tuple[str, str]]:
        if self._lstrip:
            text = text.lstrip()
            self._lstrip = not text
        return [("reasoning" if self.in_reasoning else "content", text)] if text else []

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Pieces ready to emit."""
        buf, self._held = self._held + text, ""
        if self._at_start:
            head = buf.lstrip()
            if not head or (len(head) < len(self.tags[0]) and self.tags[0].startswith(head)):
                self._held = buf
                return []
            self._at_start = False
            self._lstrip = head.startswith(self.tags[0])
        out: list[tuple[str, str]] = []
        while True:
            i, tag = _find_first(buf, self.tags)
            if tag is None:
                break
            out += self._piece(self._trim(buf[:i]))
            self.in_reasoning, self._lstrip = tag == self.tags[0], True
            buf = buf[i + len(tag) :]
        n = partial_tag_len(buf, self.tags)
        kept = self._trim(buf[: len(buf) - n])
        self._held = buf[len(kept) :]
        return out + self._piece(kept)

    def _trim(self, text: str) -> str:
        # Reasoning's trailing whitespace waits: it is dropped when the block ends.
        return text.rstrip() if self.in_reasoning else text

    def finish(self) -> list[tuple[str, str]]:
        """The held text, as it stands."""
        held, self._held = self._held, ""
        return self._piece(self._trim(held))


def new_tool_call_id() -> str:
    """An OpenAI-style tool call id."""
    return "call_" + secrets.token_hex(12)


def _tool_call(obj: object) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a parsed call, or None when it is not a call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


class _ToolParser:
    """Shared bookkeeping: numbering calls and emitting them as deltas."""

    def __init__(self) -> None:
        self.calls = 0

    def _emit_call(self, name: str, arguments: str) -> list[Delta]:
        index, self.calls = self.calls, self.calls + 1
        return [
            Delta("tool_call", index=index, id=new_tool_call_id(), name=name, arguments=""),
            Delta("tool_call", index=index, arguments=arguments),
        ]

    @staticmethod
    def _content(text: str) -> list[Delta]:
        return [Delta("content", text)] if text else []


class HermesToolParser(_ToolParser):
    """`<tool_call>{json}</tool_call>` blocks in content become tool-call deltas."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        super().__init__()
        self._body: list[str] | None = None  # the open call's text, None outside a call
        self._held = ""
        self._lstrip = False  # drop whitespace that follows a call
        self._gap = ""  # whitespace before the open call: content again if the call is malformed

    def _text(self, text: str) -> list[Delta]:
        if self._lstrip:
            text = text.lstrip()
            self._lstrip = not text
        return self._content(text)

    def _close(self, complete: bool) -> list[Delta]:
        raw, self._body = "".join(self._body or ()), None
        try:
            call = _tool_call(json.loads(raw))
        except ValueError:
            call = None
        if call is not None:
            self._lstrip = True
            return self._emit_call(*call)
        return self._content(self._gap + self.OPEN + raw + (self.CLOSE if complete else ""))

    def feed(self, text: str) -> list[Delta]:
        """Deltas ready to emit for a chunk of content."""
        buf, self._held = self._held + text, ""
        out: list[Delta] = []
        while True:
            if self._body is not None:
                i = buf.find(self.CLOSE)
                if i < 0:
                    n = partial_tag_len(buf, (self.CLOSE,))
                    self._body.append(buf[: len(buf) - n])
                    self._held = buf[len(buf) - n :]
                    return out
                self._body.append(buf[:i])
                out += self._close(complete=True)
                buf = buf[i + len(self.CLOSE) :]
                continue
            i = buf.find(self.OPEN)
            if i < 0:
                break
            before = buf[:i].rstrip()
            out += self._text(before)
            self._gap = "" if self._lstrip else buf[len(before) : i]
            self._body, buf = [], buf[i + len(self.OPEN) :]
        # Trailing whitespace waits: it is dropped if a call follows.
        n = partial_tag_len(buf, (self.OPEN,))
        safe = buf[: len(buf) - n]
        kept = safe.rstrip()
        self._held = buf[len(kept) :]
        return out + self._text(kept)

    def finish(self) -> list[Delta]:
        """Deltas for what is left at the end of generation."""
        held, self._held = self._held, ""
        if self._body is not None:
            self._body.append(held)
            return self._close(complete=False)
        return self._text(held)


class Llama3JsonToolParser(_ToolParser):
    """A whole answer of JSON calls (after an optional `<|python_tag|>`) becomes tool calls."""

    TAG = "<|python_tag|>"

    def __init__(self) -> None:
        super().__init__()
        self._mode: Literal["start", "json", "text"] = "start"
        self._parts: list[str] = []

    def feed(self, text: str) -> list[Delta]:
        """Deltas ready to emit for a chunk of content."""
        if self._mode == "text":
            return self._content(text.replace(self.TAG, ""))
        self._parts.append(text)
        if self._mode == "json":
            return []
        head = "".join(self._parts).lstrip()
        if not head or (len(head) < len(self.TAG) and self.TAG.startswith(head)):
            return []
        self._mode = "json" if head.startswith(("{", self.TAG)) else "text"
        return [] if self._mode == "json" else self._flush_parts()

    def _flush_parts(self) -> list[Delta]:
        text, self._parts = "".join(self._parts), []
        return self._content(text.replace(self.TAG, ""))

    def finish(self) -> list[Delta]:
        """Tool calls if the held answer parses as calls, else the answer as content."""
        if self._mode != "json":
            return self._flush_parts()
        calls = self._parse("".join(self._parts).strip().removeprefix(self.TAG))
        if not calls:
            return self._flush_parts()
        self._parts = []
        return [d for call in calls for d in self._emit_call(*call)]

    @staticmethod
    def _parse(text: str) -> list[tuple[str, str]]:
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while pos < len(text):
            try:
                obj, end = decoder.raw_decode(text, pos)
            except ValueError:
                return []
            call = _tool_call(obj)
            if call is None:
                return []
            calls.append(call)
            pos = end
            while pos < len(text) and text[pos] in " \t\r\n;":
                pos += 1
        return calls


ToolParser = HermesToolParser | Llama3JsonToolParser


def make_tool_parser(tool_format: str | None) -> ToolParser | None:
    """The parser for a tokenizer's `tool_format` ("hermes", "llama3_json"), or None."""
    if tool_format == "llama3_json":
        return Llama3JsonToolParser()
    return HermesToolParser() if tool_format == "hermes" else None


def split_reasoning(text: str, in_reasoning: bool = False) -> tuple[str, str]:
    """(reasoning, content) of a whole generated text."""
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    parts: dict[str, list[str]] = {"reasoning": [], "content": []}
    for kind, piece in [*splitter.feed(text), *splitter.finish()]:
        parts[kind].append(piece)
    return "".join(parts["reasoning"]), "".join(parts["content"])


def parse_tool_calls(text: str, tool_format: str = "hermes") -> tuple[str, list[Delta]]:
    """(content, tool-call deltas) of a whole generated content text."""
    parser = make_tool_parser(tool_format)
    if parser is None:
        return text, []
    deltas = [*parser.feed(text), *parser.finish()]
    content = "".join(d.text for d in deltas if d.kind == "content")
    return content, [d for d in deltas if d.kind == "tool_call"]
