"""The `bash` tool's runner: a command in an editor terminal when the editor offers one (the user
sees it run), else a local `bash -c` subprocess.

Both keep the last `OUTPUT_LIMIT` bytes of output (a command's end is where its errors are, and
ACP terminals truncate from the beginning too), stop the command at its timeout, and stop it
when the turn is cancelled: the local runner kills the command's whole process group (it runs
in its own session), the terminal runner asks the editor to kill the terminal. Cancellation
reaches them as `asyncio.CancelledError` from the agent's turn task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cortex.acp.editor import Editor

OUTPUT_LIMIT = 64 * 1024


@dataclass
class ShellResult:
    """What a command left: its output's tail, exit code (None if killed) and why it stopped."""

    output: str
    exit_code: int | None
    signal: str | None = None
    timed_out: bool = False
    truncated: bool = False

    def text(self, timeout: float) -> str:
        """The result as the model reads it."""
        notes = []
        if self.truncated:
            notes.append(f"[output truncated to its last {OUTPUT_LIMIT} bytes]")
        if self.timed_out:
            notes.append(f"[timed out after {timeout:g}s and was killed]")
        elif self.signal:
            notes.append(f"[killed by {self.signal}]")
        else:
            notes.append(f"[exit code {self.exit_code}]")
        return "\n".join([self.output.rstrip("\n"), *notes]).lstrip("\n")


Show = Callable[[str], Awaitable[None]]


async def run_command(
    editor: Editor, command: str, cwd: Path, timeout: float, show_terminal: Show
) -> ShellResult:
    """Run `command` with bash in `cwd`; `show_terminal` gets the id of an editor terminal."""
    if editor.has_terminal:
        return await _in_terminal(editor, command, cwd, timeout, show_terminal)
    return await _locally(command, cwd, timeout)


async def _in_terminal(
    editor: Editor, command: str, cwd: Path, timeout: float, show_terminal: Show
) -> ShellResult:
    ids = {"session_id": editor.session_id}
    created = await editor.client.create_terminal(
        command="bash",
        args=["-c", command],
        cwd=str(cwd),
        output_byte_limit=OUTPUT_LIMIT,
        **ids,
    )
    ids["terminal_id"] = created.terminal_id
    try:
        await show_terminal(created.terminal_id)
        timed_out = False
        try:
            await asyncio.wait_for(editor.client.wait_for_terminal_exit(**ids), timeout)
        except TimeoutError:
            timed_out = True
            await editor.client.kill_terminal(**ids)
        out = await editor.client.terminal_output(**ids)
        status = out.exit_status
        return ShellResult(
            out.output,
            status.exit_code if status else None,
            status.signal if status else None,
            timed_out,
            out.truncated,
        )
    except asyncio.CancelledError:
        await asyncio.shield(editor.client.kill_terminal(**ids))
        raise
    finally:
        await asyncio.shield(editor.client.release_terminal(**ids))


async def _locally(command: str, cwd: Path, timeout: float) -> ShellResult:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: a kill reaches its children too
    )
    tail = bytearray()
    truncated = False

    async def collect() -> None:
        nonlocal truncated
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            tail.extend(chunk)
            if len(tail) > OUTPUT_LIMIT:
                truncated = True
                del tail[: len(tail) - OUTPUT_LIMIT]
        await process.wait()

    timed_out = False
    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        # Timed out or cancelled: the command goes, and whatever it started with it.
        if process.returncode is None or timed_out:
            _kill_group(process.pid)
            await asyncio.shield(process.wait())
    code = process.returncode
    killed = signal.Signals(-code).name if code is not None and code < 0 else None
    return ShellResult(
        tail.decode("utf-8", errors="replace"),
        None if killed else code,
        killed,
        timed_out,
        truncated,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
