"""The Responses API's streamed events, built live from the neuron's OpenAI chat chunks.

Pure data: no aiohttp, no torch. `ResponseStream.feed(chunk)` and friends return the events to
send, in order; `encode(events)` puts them on the wire as named SSE events (`event: TYPE` then
`data: {...}` with the same `type`), the shape Codex CLI accepted (tests/fixtures/codex/README.md).

The sequence, every event numbered by `sequence_number` from 0:
`response.created`, `response.in_progress`; per output item `response.output_item.added`, then
- reasoning: `response.reasoning_summary_part.added`, `response.reasoning_summary_text.delta`...,
  `response.reasoning_summary_text.done`, `response.reasoning_summary_part.done`;
- message: `response.content_part.added`, `response.output_text.delta`...,
  `response.output_text.done`, `response.content_part.done`;
- function call (opened once its name is known): `response.function_call_arguments.delta`...,
  `response.function_call_arguments.done`;
and `response.output_item.done`; at the end `response.completed` or `response.incomplete`
(finish_reason length: `max_output_tokens`) carrying the whole Response, or, when the stream
broke after it started, `response.failed` with the error.

A keep-alive (while a model cold-loads or a long prompt prefills) is an SSE comment: the
Responses stream has no ping event, and comments are ignored by every SSE client.
"""

from __future__ import annotations

from typing import Any

from cortex.api import response_object as objects
from cortex.api import sse, tool_calls
from cortex.api.openai import reasoning_text
from cortex.api.responses import ITEM_PREFIXES, new_id
from cortex.errors import CortexError, UpstreamError

KEEP_ALIVE = {"type": ""}  # rendered as an SSE comment by `encode`, never numbered


def encode(events: list[dict[str, Any]]) -> bytes:
    """Events as SSE bytes: named events, and keep-alives as comments."""
    return b"".join(
        sse.comment() if event is KEEP_ALIVE else sse.event(event["type"], event)
        for event in events
    )


def has_token(events: list[dict[str, Any]]) -> bool:
    """Whether the events carry generated text, reasoning or tool-call arguments."""
    return any(event["type"].endswith(".delta") for event in events)


class ResponseStream:
    """The event sequence of one streamed response (see the module docstring).

    `response` is the Response object: in progress until `finish()` or `fail()` made it final
    (what the gateway stores)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.started = False
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._open: str | int | None = None  # "reasoning", "message" or an OpenAI tool index
        self._item_id = ""
        self._text = ""
        self._tools: dict[int, tool_calls.PendingCall] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return event

    def _at(self) -> dict[str, Any]:
        """The fields that place an event in the open item."""
        return {"item_id": self._item_id, "output_index": len(self._output)}

    def start(self, _prompt_usage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """`response.created` and `response.in_progress` (once)."""
        if self.started:
            return []
        self.started = True
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def ping(self) -> list[dict[str, Any]]:
        """A keep-alive (after the opening events if they were not sent yet)."""
        return [*self.start(), KEEP_ALIVE]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events for one OpenAI `chat.completion.chunk`."""
        events = self.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if reasoning:
                events += self._emit("reasoning", reasoning)
            if delta.get("content"):
                events += self._emit("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close the open item; `response.completed` (or `.incomplete`) with the Response."""
        if self._finish_reason is None:
            raise UpstreamError("the model's stream ended before it finished its answer")
        tool_calls.check_named(self._tools)
        events = [*self.start(), *self._close()]
        self.response = objects.finished(
            self.response, self._output, self._finish_reason, self._usage
        )
        kind = "completed" if self.response["status"] == "completed" else "incomplete"
        events.append(self._event(f"response.{kind}", response=self.response))
        return events

    def fail(self, error: CortexError) -> list[dict[str, Any]]:
        """`response.failed`: the stream broke after it started."""
        events = self.start()
        self.response = objects.failed(self.response, self._output, error)
        return [*events, self._event("response.failed", response=self.response)]

    def _emit(self, kind: str, text: str) -> list[dict[str, Any]]:
        events = [] if self._open == kind else [*self._close(), *self._open_item(kind)]
        self._text += text
        if kind == "reasoning":
            at = {**self._at(), "summary_index": 0}
            events.append(self._event("response.reasoning_summary_text.delta", **at, delta=text))
        else:
            at = {**self._at(), "content_index": 0}
            events.append(self._event("response.output_text.delta", **at, delta=text, logprobs=[]))
        return events

    def _open_item(self, kind: str) -> list[dict[str, Any]]:
        self._open, self._text = kind, ""
        self._item_id = new_id(ITEM_PREFIXES[kind])
        at = self._at()
        if kind == "reasoning":
            item = objects.reasoning_item("", self._item_id, "in_progress")
        else:
            item = objects.message_item(None, self._item_id, "in_progress")
        events = [
            self._event("response.output_item.added", output_index=at["output_index"], item=item)
        ]
        if kind == "reasoning":
            part = {"type": "summary_text", "text": ""}
            events.append(
                self._event(
                    "response.reasoning_summary_part.added", **at, summary_index=0, part=part
                )
            )
        else:
            part = objects.output_text("")
            events.append(
                self._event("response.content_part.added", **at, content_index=0, part=part)
            )
        return events

    def _close(self) -> list[dict[str, Any]]:
        """Close the open item: its `.done` events, and it joins the output."""
        if self._open is None:
            return []
        at, text = self._at(), self._text
        if self._open == "reasoning":
            item = objects.reasoning_item(text, self._item_id)
            part = item["summary"][0]
            events = [
                self._event(
                    "response.reasoning_summary_text.done", **at, summary_index=0, text=text
                ),
                self._event(
                    "response.reasoning_summary_part.done", **at, summary_index=0, part=part
                ),
            ]
        elif self._open == "message":
            item = objects.message_item(text, self._item_id)
            events = [
                self._event(
                    "response.output_text.done", **at, content_index=0, text=text, logprobs=[]
                ),
                self._event(
                    "response.content_part.done", **at, content_index=0, part=item["content"][0]
                ),
            ]
        else:
            call = self._tools[self._open]
            call.closed = True
            item = objects.function_call_item(call.id or "", call.name or "", text, self._item_id)
            events = [
                self._event(
                    "response.function_call_arguments.done", **at, name=call.name, arguments=text
                )
            ]
        events.append(
            self._event("response.output_item.done", output_index=len(self._output), item=item)
        )
        self._output.append(item)
        self._open = None
        return events

    def _tool_call(self, fragment: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool call fragment: its item opens once its name is known, arguments stream."""
        step = tool_calls.advance(self._tools, fragment)
        if step is None:
            return []
        call = step.call
        events: list[dict[str, Any]] = []
        if step.opens:
            call.id = call.id or new_id("call")
            events = self._close()
            self._open, self._text = step.index, ""
            self._item_id = new_id(ITEM_PREFIXES["function_call"])
            item = objects.function_call_item(call.id, call.name, "", self._item_id, "in_progress")
            events.append(
                self._event("response.output_item.added", output_index=len(self._output), item=item)
            )
        if step.args:
            self._text += step.args
            events.append(
                self._event("response.function_call_arguments.delta", **self._at(), delta=step.args)
            )
        return events
