"""Streamed OpenAI tool calls put back together, for the live translators (Anthropic, Responses).

A chat stream sends each tool call in fragments keyed by `index`: the first usually carries its
id and name, the rest pieces of its JSON arguments. A translator opens the call's block (or
item) once the name is known, streams the arguments it holds, and closes it when another block
starts; a fragment for a closed call, or a call still without a name at the end, means the
upstream stream is broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortex.errors import UpstreamError


@dataclass
class PendingCall:
    """One tool call being streamed: `args` holds the arguments not yet passed on."""

    id: str | None = None
    name: str | None = None
    args: str = ""
    opened: bool = False
    closed: bool = False


@dataclass
class CallStep:
    """What one fragment asks of a translator: open the call's block now (`opens`, the name just
    became known) and pass on `args`."""

    index: int
    call: PendingCall
    opens: bool
    args: str


def advance(calls: dict[int, PendingCall], fragment: dict[str, Any]) -> CallStep | None:
    """Add one `delta.tool_calls[]` fragment to `calls`; None while its call has no name yet
    (its arguments wait until the block can open)."""
    n, call = _merge(calls, fragment)
    if not call.opened and not call.name:
        return None
    opens, call.opened = not call.opened, True
    args, call.args = call.args, ""
    return CallStep(n, call, opens, args)


def _merge(calls: dict[int, PendingCall], fragment: dict[str, Any]) -> tuple[int, PendingCall]:
    n = int(fragment.get("index") or 0)
    call = calls.setdefault(n, PendingCall())
    if call.closed:
        raise UpstreamError(f"tool call {n} went on after another block started")
    function = fragment.get("function") or {}
    call.id = call.id or fragment.get("id")
    call.name = call.name or function.get("name")
    call.args += function.get("arguments") or ""
    return n, call


def check_named(calls: dict[int, PendingCall]) -> None:
    """At the end of a stream: every call got a name (`UpstreamError` otherwise)."""
    if any(not call.opened for call in calls.values()):
        raise UpstreamError("the model's stream has a tool call without a name")
