"""The tools the model is offered, checked and made ready to run against one session.

    read_file  {path, line?, limit?}   editor's `fs/read_text_file`, else the local file
    write_file {path, content}         editor's `fs/write_text_file`, else the local file
    edit_file  {path, old_text, new_text}   one exact, unique match replaced
    list_dir   {path}                  the local filesystem
    bash       {command, cwd?, timeout?}    an editor terminal, else a local subprocess

Every path argument goes through `paths.expand` (`~`, `$HOME`, relative to the session cwd).
The editor is asked first because it knows unsaved buffers, but editors scope their file
access to the workspace (Zed refuses any path outside it), so a refused read or write falls
back to the local filesystem, and when both fail the model is told both reasons. Plan files are
the agent's own and always local. A tool call that cannot be carried out raises `ToolError`;
its message goes back to the model, which can then correct itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acp import RequestError, helpers

from cortex.acp import modes
from cortex.acp.editor import Editor, ToolContent, text_content
from cortex.acp.paths import expand, is_within
from cortex.acp.plan import PlanItem, parse_plan, plans_dir
from cortex.acp.sessions import Session
from cortex.acp.shell import run_command

READ_LIMIT = 100_000  # characters of a file the model gets at once; line/limit page on
LIST_LIMIT = 1000  # directory entries
BASH_TIMEOUT, BASH_TIMEOUT_MAX = 120.0, 600.0


class ToolError(Exception):
    """A tool call that could not be carried out; the message is for the model."""


@dataclass
class Result:
    """A tool's outcome: `text` for the model, `content` for the editor, and the plan when the
    call wrote a plan file."""

    text: str
    content: list[ToolContent] = field(default_factory=list)
    plan: list[PlanItem] | None = None


@dataclass
class Action:
    """A checked tool call, ready to run: how the editor shows it, and whether it needs the
    user's permission (writes and commands) in modes that ask."""

    tool: str
    title: str
    kind: str
    paths: list[Path]
    arguments: dict[str, Any]
    asks: bool
    run: Callable[[], Awaitable[Result]]


@dataclass(frozen=True)
class _Arg:
    type: type
    description: str
    required: bool = True


_TOOLS: dict[str, tuple[str, dict[str, _Arg]]] = {
    "read_file": (
        "Read a text file. `line` (1-based) and `limit` (a number of lines) read part of it.",
        {
            "path": _Arg(str, "File path: absolute, relative to the workspace, or ~/..."),
            "line": _Arg(int, "First line to read (1-based)", required=False),
            "limit": _Arg(int, "How many lines to read", required=False),
        },
    ),
    "write_file": (
        "Create or overwrite a text file with `content`.",
        {
            "path": _Arg(str, "File path: absolute, relative to the workspace, or ~/..."),
            "content": _Arg(str, "The whole new content of the file"),
        },
    ),
    "edit_file": (
        "Replace `old_text` with `new_text` in a file. `old_text` must match exactly once: "
        "copy it from the file, with enough lines around the change to make it unique.",
        {
            "path": _Arg(str, "File path: absolute, relative to the workspace, or ~/..."),
            "old_text": _Arg(str, "The exact text to replace"),
            "new_text": _Arg(str, "The text to put in its place"),
        },
    ),
    "list_dir": (
        "List a directory (sub-directories end with /).",
        {"path": _Arg(str, "Directory path: absolute, relative to the workspace, or ~/...")},
    ),
    "bash": (
        "Run a bash command and get its output (stdout and stderr) and exit code.",
        {
            "command": _Arg(str, "The command line"),
            "cwd": _Arg(str, "Working directory (default: the workspace)", required=False),
            "timeout": _Arg(
                float, f"Seconds before it is killed (default {BASH_TIMEOUT:g})", False
            ),
        },
    ),
}

_JSON_TYPES = {str: "string", int: "integer", float: "number"}

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    arg: {"type": _JSON_TYPES[spec.type], "description": spec.description}
                    for arg, spec in args.items()
                },
                "required": [arg for arg, spec in args.items() if spec.required],
            },
        },
    }
    for name, (description, args) in _TOOLS.items()
]


class Toolbox:
    """The tools of one session, run through `editor`."""

    def __init__(self, editor: Editor, session: Session) -> None:
        self.editor = editor
        self.session = session
        self.plans = plans_dir()

    def prepare(self, call_id: str, name: str, arguments: str) -> Action:
        """Check one call from the model; `ToolError` for an unknown tool, malformed arguments,
        or a call the session's mode forbids."""
        args = _parse(name, arguments)
        if name == "read_file":
            return self._read_file(args)
        if name == "write_file":
            return self._write_file(args)
        if name == "edit_file":
            return self._edit_file(args)
        if name == "list_dir":
            return self._list_dir(args)
        return self._bash(call_id, args)

    def _read_file(self, args: dict[str, Any]) -> Action:
        path = self._path(args["path"])
        line, limit = args.get("line"), args.get("limit")
        if (line is not None and line < 1) or (limit is not None and limit < 1):
            raise ToolError("line and limit must be at least 1")

        async def run() -> Result:
            text = await self._read(path, line, limit)
            if len(text) > READ_LIMIT:
                more = len(text) - READ_LIMIT
                text = text[:READ_LIMIT] + f"\n[{more} more characters: read on with line/limit]"
            return Result(text)

        span = f" (from line {line or 1}{f', {limit} lines' if limit else ''})"
        title = f"Read {path}" + (span if line or limit else "")
        return Action("read_file", title, "read", [path], args, False, run)

    def _write_file(self, args: dict[str, Any]) -> Action:
        path = self._writable(args["path"])
        content = args["content"]

        async def run() -> Result:
            old = _previous(path)
            await self._write(path, content)
            return self._written(path, content, old, f"wrote {len(content)} characters to {path}")

        return Action("write_file", f"Write {path}", "edit", [path], args, self._asks(path), run)

    def _edit_file(self, args: dict[str, Any]) -> Action:
        path = self._writable(args["path"])
        old_text, new_text = args["old_text"], args["new_text"]
        if not old_text:
            raise ToolError("old_text is empty: use write_file to create or replace a whole file")

        async def run() -> Result:
            current = await self._read(path, None, None)
            count = current.count(old_text)
            if count == 0:
                raise ToolError(
                    f"old_text was not found in {path}: read the file again and copy the text "
                    "exactly, whitespace included"
                )
            if count > 1:
                raise ToolError(
                    f"old_text occurs {count} times in {path}: include more of the surrounding "
                    "lines so that it matches exactly once"
                )
            edited = current.replace(old_text, new_text, 1)
            await self._write(path, edited)
            return self._written(path, edited, current, f"edited {path}")

        return Action("edit_file", f"Edit {path}", "edit", [path], args, self._asks(path), run)

    def _list_dir(self, args: dict[str, Any]) -> Action:
        path = self._path(args["path"])

        async def run() -> Result:
            try:
                entries = sorted(path.iterdir(), key=lambda p: p.name)
            except OSError as exc:
                raise ToolError(f"cannot list {path}: {exc.strerror or exc}") from None
            names = [e.name + "/" if e.is_dir() else e.name for e in entries[:LIST_LIMIT]]
            if len(entries) > LIST_LIMIT:
                names.append(f"[{len(entries) - LIST_LIMIT} more entries]")
            return Result("\n".join(names) if names else "(empty directory)")

        return Action("list_dir", f"List {path}", "read", [path], args, False, run)

    def _bash(self, call_id: str, args: dict[str, Any]) -> Action:
        if self.session.mode == modes.PLAN:
            raise ToolError(
                "plan mode runs no commands: investigate with read_file and list_dir, and write "
                f"the plan to a file under {self.plans}"
            )
        command = args["command"]
        cwd = self._path(args.get("cwd") or ".")
        if not cwd.is_dir():
            raise ToolError(f"cwd {cwd} is not a directory")
        timeout = min(max(float(args.get("timeout") or BASH_TIMEOUT), 1.0), BASH_TIMEOUT_MAX)
        terminals: list[str] = []

        async def show(terminal_id: str) -> None:
            terminals.append(terminal_id)
            await self.editor.tool_progress(
                call_id, "in_progress", [helpers.tool_terminal_ref(terminal_id)]
            )

        async def run() -> Result:
            outcome = await run_command(self.editor, command, cwd, timeout, show)
            text = outcome.text(timeout)
            shown = [helpers.tool_terminal_ref(t) for t in terminals] or [
                text_content(f"```\n{text}\n```")
            ]
            return Result(text, shown)

        return Action("bash", f"`{command}`", "execute", [cwd], args, True, run)

    def _path(self, raw: str) -> Path:
        try:
            return expand(raw, self.session.cwd)
        except ValueError as exc:
            raise ToolError(str(exc)) from None

    def _writable(self, raw: str) -> Path:
        """The expanded path, if the session's mode lets the agent write there."""
        path = self._path(raw)
        if self.session.mode == modes.PLAN and not self._is_plan(path):
            raise ToolError(
                f"plan mode: only plan files under {self.plans} may be written, and {path} is "
                "not one; write the plan there, the user switches modes to carry it out"
            )
        return path

    def _is_plan(self, path: Path) -> bool:
        return is_within(path, self.plans)

    def _asks(self, path: Path) -> bool:
        return not self._is_plan(path)

    def _written(self, path: Path, content: str, old: str | None, text: str) -> Result:
        plan = parse_plan(content) if self._is_plan(path) else None
        return Result(text, [helpers.tool_diff_content(str(path), content, old)], plan)

    async def _read(self, path: Path, line: int | None, limit: int | None) -> str:
        return await self._editor_or_local(
            "read",
            path,
            self.editor.can_read,
            lambda: self.editor.read_text_file(path, line, limit),
            lambda: _read_local(path, line, limit),
        )

    async def _write(self, path: Path, content: str) -> None:
        await self._editor_or_local(
            "write",
            path,
            self.editor.can_write,
            lambda: self.editor.write_text_file(path, content),
            lambda: _write_local(path, content),
        )

    async def _editor_or_local(
        self,
        verb: str,
        path: Path,
        offered: bool,
        through_editor: Callable[[], Awaitable[Any]],
        locally: Callable[[], Any],
    ) -> Any:
        """`through_editor()` when the editor offers it, else (or when it refuses) `locally()`;
        `ToolError` naming both failures when both fail."""
        editor_error = None
        if offered and not self._is_plan(path):
            try:
                return await through_editor()
            except RequestError as exc:
                editor_error = _describe(exc)
        try:
            return locally()
        except (OSError, UnicodeDecodeError) as exc:
            local_error = f"{getattr(exc, 'strerror', None) or exc}"
            if editor_error is None:
                raise ToolError(f"cannot {verb} {path}: {local_error}") from None
            raise ToolError(
                f"cannot {verb} {path}: the editor refused ({editor_error}), "
                f"and the local filesystem too ({local_error})"
            ) from None


def _parse(name: str, arguments: str) -> dict[str, Any]:
    """The call's arguments, checked against the tool's spec (extra keys are ignored)."""
    if name not in _TOOLS:
        raise ToolError(f"there is no tool {name!r}; the tools are {', '.join(_TOOLS)}")
    spec = _TOOLS[name][1]
    usage = f"{name} takes {{{', '.join(a if s.required else a + '?' for a, s in spec.items())}}}"
    try:
        args = json.loads(arguments or "{}")
    except ValueError as exc:
        raise ToolError(f"malformed arguments for {name} (not JSON: {exc}); {usage}") from None
    if not isinstance(args, dict):
        raise ToolError(f"malformed arguments for {name} (not a JSON object); {usage}")
    checked: dict[str, Any] = {}
    for arg, want in spec.items():
        value = args.get(arg)
        if value is None:
            if want.required:
                raise ToolError(f"malformed arguments for {name}: {arg} is missing; {usage}")
            continue
        checked[arg] = _typed(value, want.type, f"{name}: {arg}")
    return checked


def _typed(value: Any, want: type, what: str) -> Any:
    """`value` as `want`; numbers written as strings ("10") are accepted, as models do that."""
    if want is str and isinstance(value, str):
        return value
    if want in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
        else:
            if want is float:
                return number
            if number.is_integer():
                return int(number)
    raise ToolError(f"malformed arguments for {what} must be {_JSON_TYPES[want]}, not {value!r}")


def _read_local(path: Path, line: int | None, limit: int | None) -> str:
    with path.open(encoding="utf-8") as file:
        if line is None and limit is None:
            return file.read()
        start = (line or 1) - 1
        lines = file.read().splitlines(keepends=True)
        return "".join(lines[start : start + limit if limit else None])


def _previous(path: Path) -> str | None:
    """What a file held before a write, for the editor's diff: None for a new file (or one
    that is not text, which the write replaces all the same)."""
    try:
        return _read_local(path, None, None)
    except (OSError, UnicodeDecodeError):
        return None


def _write_local(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")


def _describe(exc: RequestError) -> str:
    details = exc.data.get("details", exc.data) if isinstance(exc.data, dict) else exc.data
    return f"{exc}: {details}" if details else str(exc)
