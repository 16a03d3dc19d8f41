"""The real Codex CLI (0.169.0) through a real `cortex serve`, against the scripted fake neuron,
which answers with an `exec_command` tool call first and then text (a tiny random model cannot
call tools; the plain turn on a real neuron is in test_end_to_end.py)."""

from __future__ import annotations

import pytest

from tests.responses.codex_cli import run_codex
from tests.responses.conftest import FAKE_MODEL, KEY, Reply

pytestmark = pytest.mark.slow


def test_exec_command_round_trip(codex, fake_served, tmp_path):
    neuron, gateway = fake_served
    neuron.replies += [
        Reply(
            content="",
            reasoning="I should run echo.",
            tool_calls=[("exec_command", {"cmd": "echo hello-from-tool"})],
        ),
        Reply(content="Done: the command printed hello-from-tool."),
    ]
    work = tmp_path / "work"
    work.mkdir()
    result = run_codex(
        codex,
        gateway.url,
        FAKE_MODEL,
        "Run echo hello-from-tool",
        home=tmp_path / "home",
        cwd=work,
        api_key=KEY,
    )
    assert result.returncode == 0, (result.stdout, result.stderr[-3000:], gateway.log()[-3000:])
    assert "Done: the command printed hello-from-tool." in result.stdout
    assert len(neuron.chats) == 2
    first, second = (chat["messages"] for chat in neuron.chats)
    assert first[0]["role"] == "system" and [m["role"] for m in first[1:]] == ["user", "user"]
    assert "exec_command" in [t["function"]["name"] for t in neuron.chats[0]["tools"]]
    assistant = next(m for m in second if m.get("tool_calls"))
    call = assistant["tool_calls"][0]
    assert call["function"]["name"] == "exec_command"
    tool = next(m for m in second if m["role"] == "tool")
    assert tool["tool_call_id"] == call["id"]
    assert "hello-from-tool" in tool["content"]
