"""Stored responses of the Responses API (`store: true`): an embedded SQLite database.

The database is `responses.sqlite3` in the gateway's state dir (`cortex.config.gateway_state_dir`:
`[gateway] state_dir`, systemd's `$STATE_DIRECTORY` = /var/lib/cortex in the packaged unit,
else the platformdirs user state dir). It is opened on first use, so a gateway that never
stores a response never touches the disk.

One row per response: its id, its owner, when it was made, the response it continued
(`previous_response_id`), the Response object as the client got it, and this request's own
input items (what `GET /v1/responses/{id}/input_items` lists). A conversation is rebuilt by
walking `previous_id` links back to its first response (one recursive query).

Decisions:
- Owner: the SHA-256 of the API key the request presented (never the key itself). A response
  is visible only to that same key; another key gets 404, as for an id that does not exist.
  On an open gateway (no `api_keys`) the presented key, even a made-up one, still separates
  clients; requests without any key share the owner of the empty key.
- Retention: rows older than `[gateway] response_retention` (default 30 days, as OpenAI keeps
  them; "0" keeps them forever) are deleted when the store opens and then at most once a
  minute, on a write.
- SQLite runs on one worker thread of its own (one connection, no cross-thread use); the event
  loop only awaits it. WAL mode: readers never wait for the writer.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cortex.errors import CortexError

FILENAME = "responses.sqlite3"
PURGE_EVERY_S = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    previous_id TEXT,
    response BLOB NOT NULL,
    input BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""
# The chain of a response back to its conversation's first response, newest first; rows past
# retention that were not purged yet count as gone.
_CHAIN = """
WITH RECURSIVE chain(id, previous_id, input, response, depth) AS (
    SELECT id, previous_id, input, response, 0 FROM responses
    WHERE id = :id AND owner = :owner AND created_at >= :cutoff
    UNION ALL
    SELECT r.id, r.previous_id, r.input, r.response, chain.depth + 1
    FROM responses r JOIN chain ON r.id = chain.previous_id
    WHERE r.owner = :owner AND r.created_at >= :cutoff AND (:depth = 0 OR chain.depth + 1 < :depth)
)
SELECT id, previous_id, input, response FROM chain ORDER BY depth
"""


def owner_of(api_key: str) -> str:
    """The owner recorded for responses made with `api_key` (its SHA-256, hex)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass
class Stored:
    """One stored response: the Response object and its own input items."""

    id: str
    previous_id: str | None
    response: dict[str, Any]
    input: list[dict[str, Any]]


class ResponseStore:
    """The stored responses (see the module docstring); every method runs on the store's thread."""

    def __init__(self, state_dir: Path, retention_s: float) -> None:
        self.path = Path(state_dir) / FILENAME
        self.retention_s = retention_s
        self._db: sqlite3.Connection | None = None
        self._purged_at = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="response-store")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the store's thread; a database failure is a `CortexError` (500)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise CortexError(f"the response store {self.path} failed: {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                # Conversations are private: a new state dir is the service user's only.
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise CortexError(f"cannot open the response store {self.path}: {exc}") from None
            self._db = db
            self._purge()
        return self._db

    def _purge(self) -> None:
        self._purged_at = time.time()
        if self.retention_s > 0 and self._db is not None:
            cutoff = self._purged_at - self.retention_s
            self._db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))

    async def put(
        self, owner: str, response: dict[str, Any], input_items: list[dict[str, Any]]
    ) -> None:
        """Store a finished response with this request's input items."""
        row = (
            response["id"],
            owner,
            float(response.get("created_at") or time.time()),
            response.get("previous_response_id"),
            orjson.dumps(response),
            orjson.dumps(input_items),
        )
        await self._run(self._put, row)

    def _put(self, row: tuple) -> None:
        db = self._connection()
        db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", row)
        if time.time() - self._purged_at > PURGE_EVERY_S:
            self._purge()

    async def get(self, owner: str, response_id: str) -> Stored | None:
        """The response `response_id` if `owner` made it (and it has not expired)."""
        chain = await self.conversation(owner, response_id, depth=1)
        return chain[0] if chain else None

    async def conversation(self, owner: str, response_id: str, depth: int = 0) -> list[Stored]:
        """`response_id` and the responses it continued, oldest first (empty: not found). A
        link that was deleted or expired ends the chain early: the caller checks that the
        first one has no `previous_id`. `depth` > 0 reads only that many."""
        rows = await self._run(self._chain, owner, response_id, depth)
        return [
            Stored(rid, previous, orjson.loads(response), orjson.loads(items))
            for rid, previous, items, response in reversed(rows)
        ]

    def _chain(self, owner: str, response_id: str, depth: int) -> list[tuple]:
        cutoff = time.time() - self.retention_s if self.retention_s > 0 else 0.0
        args = {"id": response_id, "owner": owner, "cutoff": cutoff, "depth": depth}
        return self._connection().execute(_CHAIN, args).fetchall()

    async def delete(self, owner: str, response_id: str) -> bool:
        """Delete `response_id` if `owner` made it; whether it existed."""
        return await self._run(self._delete, owner, response_id)

    def _delete(self, owner: str, response_id: str) -> bool:
        cursor = self._connection().execute(
            "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
        )
        return cursor.rowcount > 0

    async def close(self) -> None:
        """Close the database and stop the store's thread."""
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
