"""`cortex acp` end to end: the real agent process over stdio, driven by the ACP package's client
side (tests/acp/editor.py), against a real `cortex serve` and a scripted model
(tests/acp/conftest.py). Each test queues the model's answers, sends one prompt or a few, and
checks what the editor was shown, what the model was sent back, and what happened on disk.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from acp import text_block
from acp.client.connection import ClientSideConnection

from tests.acp.conftest import KEY, STALLED_TEXT, Fleet, Home
from tests.acp.editor import ScriptedEditor, agent_env, start_agent
from tests.conftest import free_port
from tests.support.fake_neuron import QWEN_MODEL as MODEL
from tests.support.fake_neuron import Reply

pytestmark = pytest.mark.timeout(60)

Script = Callable[[ClientSideConnection, str], Awaitable[Any]]


def drive(fleet_url: str, home: Home, editor: ScriptedEditor, script: Script, *args: str) -> Any:
    """Start the agent under `editor`, open a session in the workspace, run `script`."""

    async def main() -> Any:
        env = agent_env(home.path, KEY)
        async with start_agent(editor, env, "--gateway", fleet_url, *args, log=home.log) as conn:
            session = await conn.new_session(cwd=str(home.workspace), mcp_servers=[])
            return await script(conn, session.session_id)

    return asyncio.run(asyncio.wait_for(main(), 45))


async def prompt(conn: ClientSideConnection, session_id: str, text: str) -> str:
    """Send one prompt; its stop reason."""
    answer = await conn.prompt(session_id=session_id, prompt=[text_block(text)])
    return answer.stop_reason


def tool_results(fleet: Fleet, request: int = -1) -> list[str]:
    """The tool results the agent sent the model in one of its requests."""
    return [m["content"] for m in fleet.neuron.chats[request]["messages"] if m["role"] == "tool"]


def test_plain_answer_streams(fleet, home):
    fleet.neuron.replies.append(
        Reply(content="Hello from the fleet, in pieces.", reasoning="The user says hi.")
    )
    editor = ScriptedEditor(home.workspace)
    stop = drive(fleet.url, home, editor, lambda c, s: prompt(c, s, "hi"))
    assert stop == "end_turn"
    assert len(editor.of_kind("agent_message_chunk")) > 1  # streamed, not one block
    assert editor.text() == "Hello from the fleet, in pieces."
    assert editor.text("agent_thought_chunk") == "The user says hi."
    sent = fleet.neuron.chats[0]
    assert sent["stream"] is True and sent["model"] == MODEL
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "bash",
    ]
    system, user = sent["messages"]
    assert str(home.workspace) in system["content"] and user == {"role": "user", "content": "hi"}


def test_read_outside_workspace_falls_back_to_local_file(fleet, home):
    (home.path / "x.txt").write_text("one\ntwo\nthree\n")
    (home.workspace / "in.txt").write_text("inside\n")
    fleet.neuron.replies += [
        Reply(
            content="",
            tool_calls=[
                ("read_file", {"path": "~/x.txt", "line": 2, "limit": 1}),
                ("read_file", {"path": "in.txt"}),
                ("list_dir", {"path": "$HOME"}),
            ],
        ),
        Reply(content="Read them."),
    ]
    editor = ScriptedEditor(home.workspace)
    stop = drive(fleet.url, home, editor, lambda c, s: prompt(c, s, "read ~/x.txt"))
    assert stop == "end_turn"
    # The editor was asked first both times; it refused the path outside its workspace.
    assert editor.reads == [str(home.path / "x.txt"), str(home.workspace / "in.txt")]
    assert tool_results(fleet) == ["two\n", "inside\n", ".local/\nproject/\nx.txt"]
    assert editor.tool_statuses() == ["completed"] * 3


def test_read_reports_both_errors_when_both_fail(fleet, home):
    fleet.neuron.replies += [
        Reply(content="", tool_calls=[("read_file", {"path": "$HOME/missing.txt"})]),
        Reply(content="It is not there."),
    ]
    editor = ScriptedEditor(home.workspace)
    drive(fleet.url, home, editor, lambda c, s: prompt(c, s, "read it"))
    (result,) = tool_results(fleet)
    assert result.startswith(f"error: cannot read {home.path / 'missing.txt'}")
    assert "is outside the project" in result  # the editor's reason
    assert "No such file or directory" in result  # the local one
    assert editor.tool_statuses() == ["failed"]
    assert editor.text() == "It is not there."


def test_edit_file_replaces_one_exact_match(fleet, home):
    source = home.workspace / "main.py"
    source.write_text("a = 1\na = 1\nb = 2\n")
    fleet.neuron.replies += [
        Reply(
            content="",
            tool_calls=[
                ("edit_file", {"path": "main.py", "old_text": "a = 1", "new_text": "a = 3"}),
                ("edit_file", {"path": "main.py", "old_text": "c = 3", "new_text": "c = 4"}),
                ("edit_file", {"path": "main.py", "old_text": "b = 2", "new_text": "b = 5"}),
            ],
        ),
        Reply(content="Edited."),
    ]
    editor = ScriptedEditor(home.workspace)
    drive(fleet.url, home, editor, lambda c, s: prompt(c, s, "set b to 5"))
    assert source.read_text() == "a = 1\na = 1\nb = 5\n"
    not_unique, missing, done = tool_results(fleet)
    assert "occurs 2 times" in not_unique
    assert "was not found" in missing
    assert done == f"edited {source}"
    assert editor.writes == [str(source)]  # through the editor, which asked the user first
    assert [p.kind for p in editor.permissions] == ["edit"] * 3
    assert editor.tool_statuses() == ["failed", "failed", "completed"]
    (diff,) = [u for u in editor.of_kind("tool_call_update") if u.status == "completed"]
    assert diff.content[0].type == "diff" and diff.content[0].new_text.endswith("b = 5\n")


@pytest.mark.parametrize("terminal", [False, True], ids=["subprocess", "terminal"])
def test_bash_runs_in_the_expanded_cwd(fleet, home, terminal):
    (home.path / "proj2").mkdir()
    fleet.neuron.replies += [
        Reply(content="", tool_calls=[("bash", {"command": "pwd; exit 3", "cwd": "~/proj2"})]),
        Reply(content="Ran it."),
    ]
    editor = ScriptedEditor(home.workspace, terminal=terminal)
    drive(fleet.url, home, editor, lambda c, s: prompt(c, s, "where am I"))
    (result,) = tool_results(fleet)
    assert result == f"{home.path / 'proj2'}\n[exit code 3]"
    assert [p.kind for p in editor.permissions] == ["execute"]
    assert [cwd for _, cwd in editor.terminals.values()] == (
        [str(home.path / "proj2")] if terminal else []
    )


@pytest.mark.parametrize(
    ("mode", "answer", "asked", "written"),
    [
        ("default", "reject_once", 2, False),  # asked for each call, refused each time
        ("default", "allow_always", 1, True),  # asked once for the tool, for the session
        ("auto", "reject_once", 0, True),  # the mode allows writes without asking
    ],
)
def test_permissions_follow_the_answer_and_the_mode(fleet, home, mode, answer, asked, written):
    write = {"path": "~/out.txt", "content": "hello"}
    fleet.neuron.replies += [
        Reply(content="", tool_calls=[("write_file", write), ("write_file", write)]),
        Reply(content="Done."),
    ]
    editor = ScriptedEditor(home.workspace, permission=answer)

    async def script(conn: ClientSideConnection, session_id: str) -> None:
        await conn.set_session_mode(session_id=session_id, mode_id=mode)
        await prompt(conn, session_id, "write it twice")

    drive(fleet.url, home, editor, script)
    assert len(editor.permissions) == asked
    assert (home.path / "out.txt").exists() == written
    expected = "wrote 5 characters" if written else "error: the user rejected this call"
    assert [r[: len(expected)] for r in tool_results(fleet)] == [expected] * 2


def test_plan_mode_writes_only_plan_files(fleet, home):
    plan = "- [x] read the code\n- [ ] change it\n"
    fleet.neuron.replies += [
        Reply(
            content="",
            tool_calls=[
                ("write_file", {"path": "~/notes.txt", "content": "no"}),
                ("bash", {"command": "touch ~/ran"}),
                ("write_file", {"path": "~/.local/share/cortex/plans/p.md", "content": plan}),
            ],
        ),
        Reply(content="Planned."),
    ]
    editor = ScriptedEditor(home.workspace)

    async def script(conn: ClientSideConnection, session_id: str) -> None:
        await conn.set_session_mode(session_id=session_id, mode_id="plan")
        await prompt(conn, session_id, "plan it")

    drive(fleet.url, home, editor, script)
    refused_write, refused_bash, written = tool_results(fleet)
    assert refused_write.startswith("error: plan mode: only plan files")
    assert refused_bash.startswith("error: plan mode runs no commands")
    assert written.startswith("wrote")
    assert not (home.path / "notes.txt").exists() and not (home.path / "ran").exists()
    assert (home.path / ".local/share/cortex/plans/p.md").read_text() == plan
    assert editor.permissions == []  # plan files never ask
    (update,) = editor.of_kind("plan")
    assert [(e.content, e.status) for e in update.entries] == [
        ("read the code", "completed"),
        ("change it", "pending"),
    ]
    assert "plan mode" in fleet.neuron.chats[0]["messages"][0]["content"]


def test_cancel_stops_a_long_command(fleet, home):
    pid_file = home.path / "pid"
    fleet.neuron.replies += [
        Reply(
            content="", tool_calls=[("bash", {"command": f"echo $$ > {pid_file}; exec sleep 60"})]
        ),
        Reply(content="Still here."),
    ]
    editor = ScriptedEditor(home.workspace)

    async def script(conn: ClientSideConnection, session_id: str) -> tuple[str, float, str]:
        turn = asyncio.create_task(prompt(conn, session_id, "sleep"))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await conn.cancel(session_id=session_id)
        stop = await turn
        took = time.monotonic() - started
        return stop, took, await prompt(conn, session_id, "are you there?")

    stop, took, after = drive(fleet.url, home, editor, script)
    assert stop == "cancelled" and took < 10
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    # The agent carries on, with the cancelled call answered in its history.
    assert after == "end_turn" and editor.text().endswith("Still here.")
    assert tool_results(fleet) == ["cancelled by the user"]


def test_cancel_stops_the_model_stream(fleet, home):
    fleet.neuron.replies.append(Reply(content=STALLED_TEXT, stall=True))
    editor = ScriptedEditor(home.workspace)

    async def script(conn: ClientSideConnection, session_id: str) -> tuple[str, float, str]:
        turn = asyncio.create_task(prompt(conn, session_id, "think hard"))
        while editor.text() != STALLED_TEXT:
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await conn.cancel(session_id=session_id)
        stop = await turn
        took = time.monotonic() - started
        fleet.neuron.replies.append(Reply(content="Back."))
        return stop, took, await prompt(conn, session_id, "again")

    stop, took, after = drive(fleet.url, home, editor, script)
    assert stop == "cancelled" and took < 5
    assert after == "end_turn" and editor.text() == STALLED_TEXT + "Back."
    # What the user saw of the cut answer stays in the history.
    history = [(m["role"], m["content"]) for m in fleet.neuron.chats[-1]["messages"][1:]]
    assert history == [("user", "think hard"), ("assistant", STALLED_TEXT), ("user", "again")]


def test_errors_reach_the_editor_as_messages(fleet, home):
    fleet.neuron.replies += [
        Reply(
            content="",
            tool_calls=[
                ("read_file", "not an object"),
                ("read_file", {"line": 2}),
                ("launch_rockets", {}),
                ("list_dir", {"path": "~/nowhere"}),
            ],
        ),
        Reply(content="Sorry."),
    ]
    editor = ScriptedEditor(home.workspace)
    stop = drive(fleet.url, home, editor, lambda c, s: prompt(c, s, "go"))
    assert stop == "end_turn" and editor.text() == "Sorry."
    not_object, missing, unknown, nowhere = tool_results(fleet)
    assert not_object.startswith("error: malformed arguments for read_file (not a JSON object)")
    assert "path is missing" in missing
    assert "there is no tool 'launch_rockets'" in unknown
    assert nowhere.startswith(f"error: cannot list {home.path / 'nowhere'}")
    assert editor.tool_statuses() == ["failed"] * 4


def test_gateway_down_is_a_message(home):
    editor = ScriptedEditor(home.workspace)
    down = f"http://127.0.0.1:{free_port()}"
    stop = drive(down, home, editor, lambda c, s: prompt(c, s, "hi"))
    assert stop == "end_turn"
    assert "cortex: could not reach" in editor.text() and down in editor.text()


def test_missing_model_is_a_message(fleet, home):
    editor = ScriptedEditor(home.workspace)

    async def twice(conn: ClientSideConnection, session_id: str) -> list[str]:
        return [await prompt(conn, session_id, "hi"), await prompt(conn, session_id, "again")]

    stops = drive(fleet.url, home, editor, twice, "--model", "no-such-model")
    assert stops == ["end_turn", "end_turn"]  # the agent lives on
    assert editor.text().count("no-such-model") == 2


def test_a_saved_session_loads_and_carries_on(fleet, home):
    fleet.neuron.replies += [
        Reply(content="", tool_calls=[("list_dir", {"path": "."})]),
        Reply(content="First answer."),
        Reply(content="Second answer."),
    ]
    first = ScriptedEditor(home.workspace)

    async def start(conn: ClientSideConnection, session_id: str) -> str:
        await prompt(conn, session_id, "one")
        return session_id

    session_id = drive(fleet.url, home, first, start)
    assert (home.path / f".local/state/cortex/acp-sessions/{session_id}.json").is_file()

    second = ScriptedEditor(home.workspace)

    async def resume(conn: ClientSideConnection, _new_session: str) -> str:
        answer = await conn.load_session(cwd=str(home.workspace), session_id=session_id)
        assert answer.modes.current_mode_id == "default"
        return await prompt(conn, session_id, "two")

    assert drive(fleet.url, home, second, resume) == "end_turn"
    assert second.text("user_message_chunk") == "one"
    assert second.text() == "First answer.Second answer."
    assert [u.status for u in second.of_kind("tool_call")] == ["completed"]
    history = fleet.neuron.chats[-1]["messages"]
    assert [m["role"] for m in history] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
