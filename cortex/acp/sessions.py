"""Agent sessions: one conversation each, kept as JSON files in the user's state dir.

A session holds what a later `session/load` needs to carry on: the editor's working directory,
the mode, the tools the user allowed for the whole session, and the conversation in OpenAI
chat format (the form it is sent to the gateway in; the system prompt is not stored, it is
rebuilt for every request from the mode and cwd). The files live under
`platformdirs.user_state_dir("cortex")/acp-sessions/<id>.json` (`~/.local/state/cortex/...`
on Linux), written after every turn, atomically.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from cortex.errors import NotFound

_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Session:
    """One conversation with the editor; `messages` are OpenAI chat messages."""

    id: str
    cwd: str
    mode: str = "default"
    messages: list[dict[str, Any]] = field(default_factory=list)
    always_allowed: list[str] = field(default_factory=list)
    mcp_servers: list[dict[str, Any]] = field(default_factory=list)


def sessions_dir() -> Path:
    """Where sessions are kept: the user's state dir for cortex."""
    return Path(platformdirs.user_state_dir("cortex")) / "acp-sessions"


class SessionStore:
    """Sessions by id, on disk under `root` (default: `sessions_dir()`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or sessions_dir()

    def create(self, cwd: str, mcp_servers: list[dict[str, Any]]) -> Session:
        """A new session, saved at once so that an id handed to the editor can be loaded."""
        session = Session(id=uuid.uuid4().hex, cwd=cwd, mcp_servers=mcp_servers)
        self.save(session)
        return session

    def save(self, session: Session) -> None:
        """Write `session` (to a temporary file first: a crash never leaves half a file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(session.id)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(session), ensure_ascii=False), encoding="utf-8")
        os.replace(partial, path)

    def load(self, session_id: str) -> Session:
        """The saved session `session_id`; `NotFound` when there is none."""
        path = self._path(session_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(f"no saved session {session_id!r} in {self.root}") from None
        return Session(**data)

    def _path(self, session_id: str) -> Path:
        # Ids come from the editor: only our own shape is accepted, never a path.
        if not _ID.fullmatch(session_id):
            raise NotFound(f"no session {session_id!r}: not a cortex session id")
        return self.root / f"{session_id}.json"
