"""The SQLite store of responses (cortex.gateway.response_store): owners, conversations,
deletion, retention, and no file until it is used."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cortex.config import gateway_state_dir, load_cortex_config
from cortex.gateway.response_store import FILENAME, ResponseStore, owner_of


def response(rid: str, previous: str | None = None, created: float | None = None) -> dict:
    return {
        "id": rid,
        "created_at": created or time.time(),
        "previous_response_id": previous,
        "output": [{"type": "message", "id": f"msg_{rid}"}],
    }


def run(coro):
    return asyncio.run(coro)


def test_conversation_owner_and_delete(tmp_path):
    store = ResponseStore(tmp_path / "state", retention_s=3600)
    alice, bob = owner_of("sk-a"), owner_of("sk-b")

    async def scenario():
        await store.put(alice, response("r1"), [{"id": "i1"}])
        await store.put(alice, response("r2", "r1"), [{"id": "i2"}])
        await store.put(alice, response("r3", "r2"), [{"id": "i3"}])
        chain = await store.conversation(alice, "r3")
        assert [s.id for s in chain] == ["r1", "r2", "r3"]
        assert chain[0].previous_id is None and chain[2].input == [{"id": "i3"}]
        assert (await store.get(alice, "r2")).response["id"] == "r2"
        assert await store.get(bob, "r2") is None
        assert await store.conversation(bob, "r3") == []
        assert not await store.delete(bob, "r2")
        assert await store.delete(alice, "r2")
        # The conversation lost a link: it now starts with r3, whose previous is gone.
        assert [s.id for s in await store.conversation(alice, "r3")] == ["r3"]
        await store.close()

    run(scenario())
    assert (tmp_path / "state" / FILENAME).is_file()
    assert owner_of("sk-a") != "sk-a" and len(owner_of("sk-a")) == 64


def test_retention(tmp_path):
    store = ResponseStore(tmp_path, retention_s=60)

    async def scenario():
        await store.put("o", response("old", created=time.time() - 120), [])
        await store.put("o", response("new", "old"), [])
        assert await store.get("o", "old") is None
        assert [s.id for s in await store.conversation("o", "new")] == ["new"]
        await store.close()
        reopened = ResponseStore(tmp_path, retention_s=60)
        assert await reopened.get("o", "new") is not None
        count = await reopened._run(
            lambda: reopened._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        )
        assert count == 1  # the old row was purged when the store opened
        await reopened.close()

    run(scenario())


def test_nothing_on_disk_until_used(tmp_path):
    store = ResponseStore(tmp_path / "state", retention_s=0)
    run(store.close())
    assert not (tmp_path / "state").exists()


def test_state_dir_and_retention_keys(tmp_path, monkeypatch):
    (tmp_path / "cortex.toml").write_text(
        '[gateway]\nstate_dir = "state"\nresponse_retention = "7d"\n', encoding="utf-8"
    )
    section = load_cortex_config(tmp_path / "cortex.toml").gateway
    assert gateway_state_dir(section) == tmp_path / "state"
    assert section.response_retention == 7 * 86400
    defaults = load_cortex_config(None).gateway
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/cortex")
    assert gateway_state_dir(defaults) == Path("/var/lib/cortex")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert gateway_state_dir(defaults) == tmp_path / "xdg" / "cortex"
