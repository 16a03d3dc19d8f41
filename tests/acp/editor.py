"""A scripted ACP editor (the client side, as Zed plays it) and `cortex acp` started under it.

`ScriptedEditor` implements `acp.Client`: it records every `session/update`, answers permission
requests with a chosen option, serves `fs/read_text_file` / `fs/write_text_file` only inside
its workspace (Zed scopes file access to the project and refuses other paths, which is what the
agent's local fallback is for), and runs terminals as real subprocesses when asked to offer
them. `start_agent` runs the real `python -m cortex acp` as a subprocess over stdio, connected
with the ACP package's own client-side connection, and initializes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acp import PROTOCOL_VERSION, RequestError, spawn_agent_process
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    CreateTerminalResponse,
    FileSystemCapabilities,
    KillTerminalResponse,
    ReadTextFileResponse,
    ReleaseTerminalResponse,
    RequestPermissionResponse,
    TerminalExitStatus,
    TerminalOutputResponse,
    WaitForTerminalExitResponse,
    WriteTextFileResponse,
)

from tests.conftest import ROOT


@dataclass
class ScriptedEditor:
    """The client side of the protocol, with a workspace and chosen answers."""

    workspace: Path
    fs: bool = True
    terminal: bool = False
    permission: str = "allow_once"  # the option id picked for every permission request
    updates: list[Any] = field(default_factory=list)
    permissions: list[Any] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    terminals: dict[str, tuple[asyncio.subprocess.Process, str | None]] = field(
        default_factory=dict
    )

    def capabilities(self) -> ClientCapabilities:
        fs = FileSystemCapabilities(read_text_file=self.fs, write_text_file=self.fs)
        return ClientCapabilities(fs=fs, terminal=self.terminal)

    def of_kind(self, kind: str) -> list[Any]:
        """The recorded updates of one `sessionUpdate` kind."""
        return [u for u in self.updates if u.session_update == kind]

    def text(self, kind: str = "agent_message_chunk") -> str:
        """The streamed text of message (or thought) chunks, joined."""
        return "".join(u.content.text for u in self.of_kind(kind))

    def tool_statuses(self) -> list[str]:
        """Final status of each tool call, in the order they started."""
        status: dict[str, str] = {}
        for u in self.updates:
            if u.session_update in ("tool_call", "tool_call_update") and u.status:
                status[u.tool_call_id] = u.status
        return list(status.values())

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> RequestPermissionResponse:
        self.permissions.append(tool_call)
        outcome = AllowedOutcome(outcome="selected", option_id=self.permission)
        return RequestPermissionResponse(outcome=outcome)

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **_: Any,
    ) -> ReadTextFileResponse:
        self.reads.append(path)
        lines = self._scoped(path).read_text(encoding="utf-8").splitlines(keepends=True)
        start = (line or 1) - 1
        return ReadTextFileResponse(
            content="".join(lines[start : start + limit if limit else None])
        )

    async def write_text_file(
        self, session_id: str, path: str, content: str, **_: Any
    ) -> WriteTextFileResponse:
        self.writes.append(path)
        self._scoped(path).write_text(content, encoding="utf-8")
        return WriteTextFileResponse()

    def _scoped(self, path: str) -> Path:
        if not Path(path).is_relative_to(self.workspace):
            raise RequestError.invalid_params({"details": f"{path} is outside the project"})
        return Path(path)

    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        env: Any = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **_: Any,
    ) -> CreateTerminalResponse:
        process = await asyncio.create_subprocess_exec(
            command,
            *(args or []),
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        terminal_id = f"term-{len(self.terminals)}"
        self.terminals[terminal_id] = (process, cwd)
        return CreateTerminalResponse(terminal_id=terminal_id)

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> WaitForTerminalExitResponse:
        code = await self.terminals[terminal_id][0].wait()
        return WaitForTerminalExitResponse(exit_code=code if code >= 0 else None)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> TerminalOutputResponse:
        process = self.terminals[terminal_id][0]
        assert process.stdout is not None
        output = (await process.stdout.read()).decode()
        code = process.returncode
        status = TerminalExitStatus(exit_code=code) if code is not None and code >= 0 else None
        return TerminalOutputResponse(output=output, truncated=False, exit_status=status)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> KillTerminalResponse:
        with contextlib.suppress(ProcessLookupError):
            self.terminals[terminal_id][0].kill()
        return KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> ReleaseTerminalResponse:
        return ReleaseTerminalResponse()


def agent_env(home: Path, api_key: str) -> dict[str, str]:
    """The agent's environment: this one without CORTEX_* and XDG_* (so that its state and
    data dirs fall under `home`), with `HOME` and the API key set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORTEX_", "XDG_"))}
    env.update({"HOME": str(home), "CORTEX_API_KEY": api_key, "PYTHONUNBUFFERED": "1"})
    return env


@contextlib.asynccontextmanager
async def start_agent(
    editor: ScriptedEditor, env: dict[str, str], *args: str, log: Path
) -> AsyncIterator[ClientSideConnection]:
    """`python -m cortex acp ARGS` under `editor`, initialized; its stderr goes to `log`."""
    with log.open("a", encoding="utf-8") as log_file:
        async with spawn_agent_process(
            editor,
            sys.executable,
            "-m",
            "cortex",
            "acp",
            *args,
            env=env,
            cwd=ROOT,
            transport_kwargs={"stderr": log_file.fileno()},
        ) as (conn, _process):
            answer = await conn.initialize(
                protocol_version=PROTOCOL_VERSION, client_capabilities=editor.capabilities()
            )
            assert answer.agent_capabilities.load_session
            yield conn
