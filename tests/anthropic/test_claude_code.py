"""The real Claude Code CLI (2.1.197) through the gateway, against a scripted neuron.

The scripted neuron (tests/support/fake_neuron.py) answers with OpenAI tool calls first, then
text, which a tiny random model cannot do; the runs against the real neuron are in
test_end_to_end.py.
"""

from __future__ import annotations

import pytest

from tests.anthropic.claude_cli import run_claude
from tests.support.fake_neuron import GREETING, Reply, fake_qwen
from tests.support.fake_neuron import QWEN_MODEL as MODEL
from tests.support.gateway_app import gateway_thread

KEY = "sk-test-123"


@pytest.fixture
def stack():
    neuron = fake_qwen()
    with gateway_thread([neuron], api_keys=[KEY]) as url:
        yield neuron, url


def test_plain_turn(claude, stack, tmp_path):
    neuron, url = stack
    (tmp_path / "home").mkdir()
    code, result, stderr = run_claude(
        claude, url, MODEL, "say hi", home=tmp_path / "home", cwd=tmp_path, api_key=KEY
    )
    assert code == 0, (result, stderr)
    assert result["is_error"] is False
    assert result["result"] == GREETING
    assert len(neuron.chats) == 1
    sent = neuron.chats[0]
    assert sent["stream"] is True
    assert not sent["messages"][0]["content"].startswith("x-anthropic-billing-header")
    assert [m["role"] for m in sent["messages"][:3]] == ["system", "user", "system"]
    assert "Bash" in [t["function"]["name"] for t in sent["tools"]]


def test_tool_round_trip_runs_bash(claude, stack, tmp_path):
    neuron, url = stack
    command = {"command": "echo hello-from-tool", "description": "echo"}
    neuron.replies += [
        Reply(content="", reasoning="I should run echo.", tool_calls=[("Bash", command)]),
        Reply(content="Done."),
    ]
    (tmp_path / "home").mkdir()
    code, result, stderr = run_claude(
        claude,
        url,
        MODEL,
        "run echo hello-from-tool",
        "--allowedTools",
        "Bash",
        home=tmp_path / "home",
        cwd=tmp_path,
        api_key=KEY,
    )
    assert code == 0, (result, stderr)
    assert result["is_error"] is False
    assert result["result"] == "Done."
    assert result["num_turns"] == 2
    assert len(neuron.chats) == 2
    second = neuron.chats[1]["messages"]
    assistant = next(m for m in second if m.get("tool_calls"))
    assert assistant["tool_calls"][0]["function"]["name"] == "Bash"
    assert assistant["reasoning_content"] == "I should run echo."
    tool = next(m for m in second if m["role"] == "tool")
    assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert "hello-from-tool" in tool["content"]
