"""The client commands as subprocesses against protocol fakes: outputs, JSON shapes, exit codes."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from tests.conftest import ROOT
from tests.support.cli_run import run_cli


def test_version_is_the_stamp_from_git() -> None:
    # setuptools-scm writes cortex/_version.py at `pip install -e .` (tests/packaging checks
    # that it is the version git gives).
    from cortex._version import version

    result = run_cli("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"cortex {version}"


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.code == 0
    for command in ("serve", "neuron", "status", "load", "unload", "pin", "probe", "fetch-demo"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_status_json_is_the_fleet_document(fake_gateway) -> None:
    result = run_cli("status", "--json", "--gateway", fake_gateway.url)
    assert result.code == 0, result.stderr
    assert result.json() == fake_gateway.state["fleet"]


def test_status_table(fake_gateway) -> None:
    result = run_cli("status", env={"CORTEX_GATEWAY": fake_gateway.url})
    assert result.code == 0, result.stderr
    text = result.stdout
    assert "neurons: 1/2 up" in text
    assert "beast  up  http://beast.internal:13131" in text
    assert "spare  down" in text
    # 20 GiB used of 80 GiB: a quarter of the bar.
    assert "cuda:0  [#####...............] 20.0 GiB / 80.0 GiB NVIDIA H100" in text
    row = next(
        line for line in text.splitlines() if line.strip().startswith("Qwen/Qwen3-8B  loaded")
    )
    assert row.split()[1:] == ["loaded", "cuda:0", "16.0", "GiB", "2", "0s", "pinned"]
    assert "on disk: Qwen/Qwen3-8B, tiny" in text
    assert "beast (loaded)" in text


def test_api_key_from_environment(fake_gateway) -> None:
    result = run_cli("status", "--gateway", fake_gateway.url, env={"CORTEX_API_KEY": "sekrit"})
    assert result.code == 0
    assert fake_gateway.requests[-1].auth == "Bearer sekrit"


def test_unreachable_gateway_exits_3_naming_the_url(closed_url) -> None:
    result = run_cli("status", "--gateway", closed_url)
    assert result.code == 3
    assert result.stdout == ""
    assert f"could not reach {closed_url}/fleet" in result.stderr
    as_json = run_cli("status", "--json", env={"CORTEX_GATEWAY": closed_url})
    assert as_json.code == 3
    error = as_json.json()["error"]
    assert error["code"] == "unreachable" and error["exit_code"] == 3
    assert error["url"] == f"{closed_url}/fleet"


def test_usage_errors_exit_2() -> None:
    assert run_cli("load").code == 2
    assert run_cli("status", "--no-such-flag").code == 2
    assert run_cli("no-such-command").code == 2
    assert run_cli("probe", "--timeout", "soon").code == 2


def test_load_shows_progress_then_the_result(fake_gateway) -> None:
    fake_gateway.state["load_seconds"] = 2.5
    result = run_cli("load", "tiny", "--gateway", fake_gateway.url, "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert {k: document[k] for k in ("model", "neuron", "state")} == {
        "model": "tiny",
        "neuron": "beast",
        "state": "loaded",
    }
    assert document["seconds"] >= 2.5
    # Not a terminal: one progress line per change of what the gateway reports.
    assert "loading tiny: loading on beast cuda:0" in result.stderr.splitlines()
    assert fake_gateway.bodies("/fleet/load") == [{"model": "tiny"}]


def test_load_human_line_and_neuron_flag(fake_gateway) -> None:
    result = run_cli("load", "tiny", "--neuron", "beast", "--gateway", fake_gateway.url)
    assert result.code == 0
    assert re.fullmatch(r"loaded tiny on beast in \d+\.\ds\n", result.stdout)
    assert fake_gateway.bodies("/fleet/load") == [{"model": "tiny", "neuron": "beast"}]


def test_load_unknown_model_fails_with_exit_1(fake_gateway) -> None:
    result = run_cli("load", "nope", "--gateway", fake_gateway.url, "--json")
    assert result.code == 1
    error = result.json()["error"]
    assert error["code"] == "model_not_found"
    assert "model 'nope' not found" in error["message"]
    assert "model 'nope' not found" in result.stderr


def test_unload_and_pin(fake_gateway) -> None:
    url = fake_gateway.url
    unload = run_cli("unload", "Qwen/Qwen3-8B", "--gateway", url)
    assert unload.code == 0
    assert unload.stdout == "unloaded Qwen/Qwen3-8B from beast\n"
    assert run_cli("pin", "tiny", "--gateway", url).stdout == "pinned tiny\n"
    off = run_cli("pin", "tiny", "--off", "--neuron", "beast", "--gateway", url, "--json")
    assert off.code == 0 and off.json()["pinned"] is False
    assert fake_gateway.bodies("/fleet/pin") == [
        {"model": "tiny", "pinned": True},
        {"model": "tiny", "neuron": "beast", "pinned": False},
    ]
    assert fake_gateway.bodies("/fleet/unload") == [{"model": "Qwen/Qwen3-8B"}]


def _step_names(report: dict) -> list[str]:
    return [s["name"] for s in report["steps"]]


def test_probe_neuron_with_chat_template(fake_neuron) -> None:
    result = run_cli("probe", "--url", fake_neuron.url, "--expect", "PARIS", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert set(report) == {"ok", "url", "model", "answer", "steps"}
    assert report["ok"] is True and report["model"] == "tiny" and report["answer"] == "Paris"
    assert _step_names(report) == ["health", "load", "completion", "check"]
    for step in report["steps"]:
        assert set(step) == {"name", "ok", "seconds", "detail"} and step["ok"] is True
    assert fake_neuron.bodies("/models/load") == [{"model": "tiny"}]
    (chat,) = fake_neuron.bodies("/v1/chat/completions")
    assert chat["temperature"] == 0 and chat["messages"][0]["role"] == "user"


def test_probe_falls_back_to_plain_completion(fake_neuron) -> None:
    tiny = fake_neuron.models["tiny"]
    tiny.chat_template, tiny.state = False, "loaded"
    result = run_cli("probe", "--url", fake_neuron.url, "--model", "tiny", "--prompt", "Capital?")
    assert result.code == 0, result.stderr
    assert "plain completion (no chat template)" in result.stdout
    assert result.stdout.rstrip().endswith("probe ok")
    assert fake_neuron.bodies("/models/load") == []
    (plain,) = fake_neuron.bodies("/v1/completions")
    assert plain["prompt"] == "Capital?" and plain["temperature"] == 0


def test_probe_wrong_answer_exits_1(fake_neuron) -> None:
    result = run_cli("probe", "--url", fake_neuron.url, "--expect", "Berlin", "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False
    assert report["steps"][-1]["name"] == "check" and report["steps"][-1]["ok"] is False
    assert "probe failed at check" in result.stderr


def test_probe_gateway_loads_through_fleet(fake_gateway) -> None:
    result = run_cli("probe", "--url", fake_gateway.url, "--model", "tiny", "--expect", "paris")
    assert result.code == 0, result.stdout + result.stderr
    assert fake_gateway.bodies("/fleet/load") == [{"model": "tiny"}]
    assert "gateway ok, 1/2 neurons up" in result.stdout


def test_probe_unreachable_exits_3(closed_url) -> None:
    result = run_cli("probe", "--url", closed_url, "--json")
    assert result.code == 3
    report = result.json()
    assert report["ok"] is False and _step_names(report) == ["health"]
    assert closed_url in report["steps"][0]["detail"]


def test_load_progress_on_a_terminal_is_redrawn_in_place(fake_gateway) -> None:
    fake_gateway.state["load_seconds"] = 2.5
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    with subprocess.Popen(
        [sys.executable, "-m", "cortex", "load", "tiny", "--gateway", fake_gateway.url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    ) as proc:
        os.close(follower)
        stdout, _ = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    terminal = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert stdout.startswith("loaded tiny on beast in ")
    assert "\r\x1b[2Kloading tiny: loading on beast cuda:0 (" in terminal
    assert terminal.endswith("\r\x1b[2K")  # the line is cleared before the result
