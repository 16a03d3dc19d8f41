"""The editor as one session's agent sees it: updates, permission prompts, files, terminals.

A thin layer over the ACP connection's client side (`acp.Client`), bound to one session id and
to what the client said it can do at `initialize` (`fs.readTextFile`, `fs.writeTextFile`,
`terminal`), so that the tools ask "can the editor do this?" in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acp import Client, helpers
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    PermissionOption,
    ToolCallLocation,
    ToolCallUpdate,
)

ToolContent = Any  # one of acp.helpers' tool content variants (text, diff, terminal)

_ALLOW_ONCE, _ALLOW_ALWAYS, _REJECT = "allow_once", "allow_always", "reject_once"


class Editor:
    """Requests and notifications to the editor for session `session_id`."""

    def __init__(self, client: Client, session_id: str, capabilities: ClientCapabilities) -> None:
        self.client = client
        self.session_id = session_id
        fs = capabilities.fs
        self.can_read = bool(fs and fs.read_text_file)
        self.can_write = bool(fs and fs.write_text_file)
        self.has_terminal = bool(capabilities.terminal)

    async def send(self, update: Any) -> None:
        """One `session/update` notification."""
        await self.client.session_update(session_id=self.session_id, update=update)

    async def message(self, text: str) -> None:
        """A piece of the agent's answer."""
        await self.send(helpers.update_agent_message_text(text))

    async def thought(self, text: str) -> None:
        """A piece of the model's reasoning."""
        await self.send(helpers.update_agent_thought_text(text))

    async def tool_started(
        self, call_id: str, title: str, kind: str, paths: list[Path], raw_input: Any
    ) -> None:
        """Announce a tool call (`tool_call`, status pending)."""
        await self.send(
            helpers.start_tool_call(
                call_id,
                title,
                kind=kind,
                status="pending",
                locations=_locations(paths),
                raw_input=raw_input,
            )
        )

    async def tool_progress(
        self, call_id: str, status: str, content: list[ToolContent] | None = None
    ) -> None:
        """A `tool_call_update`: the call's new status and, if given, its content."""
        await self.send(helpers.update_tool_call(call_id, status=status, content=content))

    async def plan(self, items: list[tuple[str, str]]) -> None:
        """Show the plan: `(text, status)` per entry."""
        entries = [helpers.plan_entry(text, status=status) for text, status in items]
        await self.send(helpers.update_plan(entries))

    async def permission(self, call_id: str, title: str, kind: str, tool: str) -> str:
        """Ask the user about one tool call: `"once"`, `"always"` (for the session) or `"no"`."""
        options = [
            PermissionOption(option_id=_ALLOW_ONCE, name="Allow", kind="allow_once"),
            PermissionOption(
                option_id=_ALLOW_ALWAYS, name=f"Always allow {tool}", kind="allow_always"
            ),
            PermissionOption(option_id=_REJECT, name="Reject", kind="reject_once"),
        ]
        call = ToolCallUpdate(tool_call_id=call_id, title=title, kind=kind)
        answer = await self.client.request_permission(
            session_id=self.session_id, tool_call=call, options=options
        )
        outcome = answer.outcome
        if isinstance(outcome, AllowedOutcome) and outcome.option_id in (
            _ALLOW_ONCE,
            _ALLOW_ALWAYS,
        ):
            return "always" if outcome.option_id == _ALLOW_ALWAYS else "once"
        return "no"

    async def read_text_file(self, path: Path, line: int | None, limit: int | None) -> str:
        """`fs/read_text_file`: the editor's view of a file (unsaved changes included)."""
        answer = await self.client.read_text_file(
            session_id=self.session_id, path=str(path), line=line, limit=limit
        )
        return answer.content

    async def write_text_file(self, path: Path, content: str) -> None:
        """`fs/write_text_file`: the editor writes the file (and updates open buffers)."""
        await self.client.write_text_file(
            session_id=self.session_id, path=str(path), content=content
        )


def text_content(text: str) -> ToolContent:
    """Text shown in a tool call's body."""
    return helpers.tool_content(helpers.text_block(text))


def _locations(paths: list[Path]) -> list[ToolCallLocation]:
    return [ToolCallLocation(path=str(path)) for path in paths]
