"""Server-sent events framing shared by the neuron and the gateway (pure bytes, no aiohttp).

An event is `data: <json>\\n\\n`; a comment (`: text\\n\\n`) keeps a connection alive while a
prompt prefills or a model cold-loads; an OpenAI stream ends with `data: [DONE]\\n\\n`.
`SSEParser` splits a byte stream back into events (for relays and tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
CONTENT_TYPE = "text/event-stream"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def data(obj: Any) -> bytes:
    """One `data:` event holding `obj` as compact JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def event(name: str, obj: Any) -> bytes:
    """A named event (`event: name` then `data: json`), as the Anthropic stream uses."""
    return b"event: " + name.encode() + b"\n" + data(obj)


def comment(text: str = "keep-alive") -> bytes:
    """An SSE comment line: ignored by clients, keeps proxies and readers from timing out."""
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


@dataclass
class SSEEvent:
    """One parsed event: `data` is the joined data lines, `event` the event name if any."""

    data: str | None
    event: str | None = None
    comment: str | None = None

    @property
    def done(self) -> bool:
        """True for the OpenAI end marker `[DONE]`."""
        return self.data == "[DONE]"

    def json(self) -> Any:
        """The data payload as JSON."""
        return orjson.loads(self.data or "null")


class SSEParser:
    """Incremental parser: `feed(bytes)` yields complete events (comments included)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        """Add bytes; yield each event completed by them."""
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            if parsed := _parse_block(block.decode("utf-8", errors="replace")):
                yield parsed


def _parse_block(block: str) -> SSEEvent | None:
    data_lines: list[str] = []
    name = None
    comments: list[str] = []
    for line in block.split("\n"):
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "":
            comments.append(value)
        elif field == "data":
            data_lines.append(value)
        elif field == "event":
            name = value
    if data_lines:
        return SSEEvent(data="\n".join(data_lines), event=name)
    if comments:
        return SSEEvent(data=None, comment="\n".join(comments))
    return None
