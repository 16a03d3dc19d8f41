"""`cortex acp`: an Agent Client Protocol agent over stdio, on the fleet's models.

An editor (Zed, or any ACP client) starts `cortex acp` and speaks JSON-RPC on its stdin and
stdout (so nothing else may ever be printed there: logs go to stderr). The handlers:

- `initialize`: the protocol version both sides speak, and what this agent can do
  (`loadSession`, embedded context in prompts); the client's capabilities (`fs`, `terminal`)
  decide how the tools reach files and commands;
- `session/new`: a session for the editor's cwd (its MCP servers are accepted and kept with the
  session; the agent's own tools are the ones offered to the model);
- `session/load`: a session saved in the user's state dir, replayed to the editor as
  `session/update`s, then carried on;
- `session/set_mode`: `default`, `auto` or `plan` (see `modes`);
- `session/prompt`: one turn of `loop.AgentLoop`, run as a task so that
- `session/cancel` can stop it: the model stream is closed and a running command killed, and
  the prompt answers with the stop reason `cancelled`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import acp
from acp import PROTOCOL_VERSION, RequestError, helpers
from acp.schema import (
    AgentCapabilities,
    ClientCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptCapabilities,
    PromptResponse,
    SessionMode,
    SessionModeState,
    SetSessionModeResponse,
)

from cortex import __version__
from cortex.acp import modes
from cortex.acp.chat import ChatClient
from cortex.acp.editor import Editor, text_content
from cortex.acp.loop import ERROR_PREFIX, AgentLoop
from cortex.acp.sessions import Session, SessionStore
from cortex.errors import NotFound

log = logging.getLogger("cortex.acp")


class CortexAgent:
    """The ACP agent: sessions, their turns, and the protocol's handlers (`acp.Agent`)."""

    def __init__(self, chat: ChatClient, store: SessionStore) -> None:
        self.loop = AgentLoop(chat)
        self.store = store
        self.sessions: dict[str, Session] = {}
        self.turns: dict[str, asyncio.Task[str]] = {}
        self.capabilities = ClientCapabilities()
        self.client: acp.Client | None = None

    def on_connect(self, conn: acp.Client) -> None:
        """Keep the connection's client side: the editor this agent talks back to."""
        self.client = conn

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: ClientCapabilities | None = None,
        client_info: Implementation | None = None,
        **_: Any,
    ) -> InitializeResponse:
        """Agree on the protocol version; note what the editor offers."""
        self.capabilities = client_capabilities or ClientCapabilities()
        return InitializeResponse(
            protocol_version=min(protocol_version, PROTOCOL_VERSION),
            agent_capabilities=AgentCapabilities(
                load_session=True,
                prompt_capabilities=PromptCapabilities(embedded_context=True),
            ),
            agent_info=Implementation(name="cortex", title="cortex", version=__version__),
            auth_methods=[],
        )

    async def new_session(
        self, cwd: str, mcp_servers: list[Any] | None = None, **_: Any
    ) -> NewSessionResponse:
        """A new session working in `cwd`."""
        session = self.store.create(cwd, _plain(mcp_servers))
        self.sessions[session.id] = session
        return NewSessionResponse(session_id=session.id, modes=_modes(session))

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None, **_: Any
    ) -> LoadSessionResponse:
        """Carry on a saved session: its history is replayed to the editor first."""
        try:
            session = self.store.load(session_id)
        except NotFound as exc:
            raise RequestError.resource_not_found(exc.message) from None
        session.cwd = cwd
        session.mcp_servers = _plain(mcp_servers)
        self.sessions[session.id] = session
        await _replay(self._editor(session.id), session)
        return LoadSessionResponse(modes=_modes(session))

    async def set_session_mode(
        self, session_id: str, mode_id: str, **_: Any
    ) -> SetSessionModeResponse:
        """Switch the session's mode (takes effect at the next model request)."""
        if mode_id not in modes.MODES:
            raise RequestError.invalid_params({"details": f"unknown mode {mode_id!r}"})
        session = self._session(session_id)
        session.mode = mode_id
        self.store.save(session)
        return SetSessionModeResponse()

    async def prompt(self, session_id: str, prompt: list[Any], **_: Any) -> PromptResponse:
        """Run one turn; it ends with the model's answer, a limit, or `session/cancel`."""
        session = self._session(session_id)
        if session_id in self.turns:
            raise RequestError.invalid_request({"details": "a prompt is already running"})
        turn = asyncio.create_task(
            self.loop.run(session, self._editor(session_id), _prompt_text(prompt))
        )
        self.turns[session_id] = turn
        try:
            stop = await turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                turn.cancel()  # the connection is closing: the turn goes with it
                raise
            stop = "cancelled"
        finally:
            del self.turns[session_id]
            self.store.save(session)
        return PromptResponse(stop_reason=stop)

    async def cancel(self, session_id: str, **_: Any) -> None:
        """Stop the session's running turn, if any."""
        if turn := self.turns.get(session_id):
            turn.cancel()

    def _session(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise RequestError.resource_not_found(f"session {session_id}") from None

    def _editor(self, session_id: str) -> Editor:
        if self.client is None:
            raise RuntimeError("the agent has no connection yet")
        return Editor(self.client, session_id, self.capabilities)


def run_acp(gateway: str, model: str | None, api_key: str | None) -> int:
    """Serve the agent on stdin/stdout until the editor closes them; the exit code."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="cortex acp: %(message)s")
    asyncio.run(_serve(ChatClient(gateway, api_key, model)))
    return 0


async def _serve(chat: ChatClient) -> None:
    try:
        await acp.run_agent(CortexAgent(chat, SessionStore()))
    finally:
        await chat.close()


def _modes(session: Session) -> SessionModeState:
    return SessionModeState(
        current_mode_id=session.mode,
        available_modes=[
            SessionMode(id=m.id, name=m.name, description=m.description)
            for m in modes.MODES.values()
        ],
    )


def _plain(mcp_servers: list[Any] | None) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in mcp_servers or []]


def _prompt_text(blocks: list[Any]) -> str:
    """The prompt as the model reads it: text as is, files the user attached (embedded
    resources) with their path and content, links by their URI."""
    parts = []
    for block in blocks:
        if block.type == "text":
            parts.append(block.text)
        elif block.type == "resource" and hasattr(block.resource, "text"):
            parts.append(f"\n<file uri={block.resource.uri!r}>\n{block.resource.text}\n</file>")
        elif block.type == "resource_link":
            parts.append(f"[{block.name}]({block.uri})")
    return "\n".join(parts)


async def _replay(editor: Editor, session: Session) -> None:
    """Send a saved conversation to the editor as it was shown the first time."""
    results = {m["tool_call_id"]: m["content"] for m in session.messages if m["role"] == "tool"}
    for message in session.messages:
        if message["role"] == "user":
            await editor.send(helpers.update_user_message_text(message["content"]))
        elif message["role"] == "assistant":
            if message.get("reasoning_content"):
                await editor.thought(message["reasoning_content"])
            if message.get("content"):
                await editor.message(message["content"])
            for call in message.get("tool_calls") or []:
                result = results.get(call["id"], "")
                failed = result.startswith(ERROR_PREFIX)
                await editor.send(
                    helpers.start_tool_call(
                        call["id"],
                        call["function"]["name"],
                        status="failed" if failed else "completed",
                        content=[text_content(result)] if result else None,
                        raw_input=call["function"]["arguments"],
                    )
                )
