"""One prompt turn: the model and its tools, in a loop, until the model answers in words.

Each step sends the conversation (a system prompt rebuilt from the session's mode and cwd, then
the stored messages) to the gateway, streams the answer's text and reasoning to the editor,
and runs the tool calls it ends with, one after the other: announced (`tool_call`), allowed
(`session/request_permission` where the mode asks), run, and reported (`tool_call_update`). The
results go back to the model for the next step. The turn ends when the model answers without
a tool call, or after `MAX_STEPS` requests.

Failures are told to the editor as part of the answer, never raised to the protocol: a gateway
that is down or a missing model ends the turn with a message; a tool's failure, malformed
arguments included, becomes that call's result, so the model can correct itself. When the turn
is cancelled the history is left well formed: the text shown so far is kept, and each tool
call left unanswered gets a "cancelled" result.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cortex.acp import modes
from cortex.acp.chat import Answer, ChatClient, DeltaKind, ToolCall
from cortex.acp.editor import Editor, text_content
from cortex.acp.paths import home
from cortex.acp.plan import plans_dir
from cortex.acp.sessions import Session
from cortex.acp.tools import SCHEMAS, Toolbox, ToolError
from cortex.errors import CortexError

MAX_STEPS = 50
CANCELLED = "cancelled by the user"
ERROR_PREFIX = "error: "  # starts the result of a failed tool call

log = logging.getLogger("cortex.acp")


class AgentLoop:
    """Runs prompt turns against the gateway behind `chat`."""

    def __init__(self, chat: ChatClient) -> None:
        self.chat = chat

    async def run(self, session: Session, editor: Editor, prompt: str) -> str:
        """Answer `prompt` in `session`; the ACP stop reason."""
        session.messages.append({"role": "user", "content": prompt})
        try:
            return await self._steps(session, editor)
        except CortexError as exc:
            await editor.message(f"\n\ncortex: {exc.message}")
        except Exception as exc:  # a bug here must reach the user, not end the agent
            log.exception("prompt turn failed")
            await editor.message(f"\n\ncortex acp failed: {type(exc).__name__}: {exc}")
        return "end_turn"

    async def _steps(self, session: Session, editor: Editor) -> str:
        toolbox = Toolbox(editor, session)
        for _ in range(MAX_STEPS):
            answer = await self._ask(session, editor)
            session.messages.append(answer.message())
            if not answer.tool_calls:
                return "max_tokens" if answer.finish_reason == "length" else "end_turn"
            for index, call in enumerate(answer.tool_calls):
                try:
                    result = await self._call(toolbox, editor, session, call)
                except asyncio.CancelledError:
                    for unanswered in answer.tool_calls[index:]:
                        session.messages.append(_tool_message(unanswered, CANCELLED))
                    raise
                session.messages.append(_tool_message(call, result))
        await editor.message(f"\n\ncortex: stopped after {MAX_STEPS} model requests in one turn")
        return "max_turn_requests"

    async def _ask(self, session: Session, editor: Editor) -> Answer:
        """One model request; the text shown so far is kept if the turn is cancelled."""
        shown: list[str] = []

        async def forward(kind: DeltaKind, text: str) -> None:
            if kind == "text":
                shown.append(text)
                await editor.message(text)
            else:
                await editor.thought(text)

        messages = [{"role": "system", "content": _system_prompt(session)}, *session.messages]
        try:
            return await self.chat.complete(messages, SCHEMAS, forward)
        except asyncio.CancelledError:
            if shown:
                session.messages.append({"role": "assistant", "content": "".join(shown)})
            raise

    async def _call(
        self, toolbox: Toolbox, editor: Editor, session: Session, call: ToolCall
    ) -> str:
        """Run one tool call; its result for the model (an error's text when it failed)."""
        try:
            action = toolbox.prepare(call.id, call.name, call.arguments)
        except ToolError as exc:
            await editor.tool_started(call.id, call.name or "tool", "other", [], call.arguments)
            return await _failed(editor, call, str(exc))
        await editor.tool_started(
            call.id, action.title, action.kind, action.paths, action.arguments
        )
        try:
            if (
                action.asks
                and modes.asks_permission(session.mode)
                and action.tool not in session.always_allowed
            ):
                verdict = await editor.permission(call.id, action.title, action.kind, action.tool)
                if verdict == "no":
                    raise ToolError("the user rejected this call")
                if verdict == "always":
                    session.always_allowed.append(action.tool)
            await editor.tool_progress(call.id, "in_progress")
            result = await action.run()
        except ToolError as exc:
            return await _failed(editor, call, str(exc))
        except Exception as exc:  # a tool's bug or an editor's odd answer: the model is told
            log.exception("tool %s failed", call.name)
            return await _failed(editor, call, f"{type(exc).__name__}: {exc}")
        await editor.tool_progress(call.id, "completed", result.content)
        if result.plan is not None:
            await editor.plan([(item.text, item.status) for item in result.plan])
        return result.text


async def _failed(editor: Editor, call: ToolCall, why: str) -> str:
    await editor.tool_progress(call.id, "failed", [text_content(ERROR_PREFIX + why)])
    return ERROR_PREFIX + why


def _tool_message(call: ToolCall, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": content}


def _system_prompt(session: Session) -> str:
    lines = [
        "You are cortex, a coding agent working in the user's editor.",
        f"The workspace is {session.cwd}; relative paths are taken against it, and ~ or $HOME "
        f"name the user's home directory ({home()}).",
        "Use the tools to look at files and run commands rather than guessing. Change files "
        "with edit_file (exact text replacement) or write_file. Keep answers short.",
    ]
    if session.mode == modes.PLAN:
        plans = plans_dir()
        lines.append(
            "You are in plan mode: change nothing and run no commands. Investigate with "
            "read_file and list_dir, then write your plan as a Markdown checklist (- [ ] step) "
            f"to {plans / (session.id + '.md')}; files under {plans} are the only ones you may "
            "write."
        )
    return "\n".join(lines)
