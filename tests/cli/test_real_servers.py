"""Every client command as a subprocess against a real gateway over a real neuron.

The neuron serves the shared fixtures directory, whose one model is stories260k (karpathy's
TinyStories 260K, no chat template). Its greedy continuation of "Once upon a time" is fixed in
the fixtures' golden file (`once_upon_a_time_greedy_64`: ", there was a little girl named
Lily. ..."), so `--expect Lily` passes only when the model really runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import FIXTURES
from tests.support.cli_run import run_cli
from tests.support.gateway_proc import GatewayProc, start_gateway
from tests.support.neuron_proc import NeuronProc, start_neuron

MODEL = "stories260k"
PROMPT = "Once upon a time"
EXPECTED_WORD = "Lily"


@pytest.fixture(scope="module")
def neuron() -> Iterator[NeuronProc]:
    with start_neuron(FIXTURES) as proc:
        yield proc


@pytest.fixture(scope="module")
def gateway(neuron: NeuronProc) -> Iterator[GatewayProc]:
    proc = start_gateway(f'[[neurons]]\nname = "n1"\nendpoint = "{neuron.url}"\n')
    try:
        yield proc
    finally:
        proc.stop()


def cli(gateway: GatewayProc, *args: str):
    return run_cli(*args, env={"CORTEX_GATEWAY": gateway.url}, timeout=300)


def test_load_status_pin_unload(gateway: GatewayProc) -> None:
    load = cli(gateway, "load", MODEL, "--json")
    assert load.code == 0, load.stderr
    result = load.json()
    assert (result["model"], result["neuron"], result["state"]) == (MODEL, "n1", "loaded")
    assert result["seconds"] >= 0

    status = cli(gateway, "status", "--json")
    assert status.code == 0
    fleet = status.json()
    (neuron,) = fleet["neurons"]
    assert {"name", "endpoint", "state", "devices", "models", "last_seen"} <= set(neuron)
    assert (neuron["name"], neuron["state"]) == ("n1", "up")
    assert [m["id"] for m in neuron["models"] if m["state"] == "loaded"] == [MODEL]
    assert neuron["devices"][0]["id"] == "cpu"
    assert any(m["id"] == MODEL for m in fleet["models"])

    pin = cli(gateway, "pin", MODEL)
    assert pin.code == 0 and pin.stdout.startswith(f"pinned {MODEL}")
    table = cli(gateway, "status")
    assert table.code == 0
    assert "n1  up" in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.strip().startswith(MODEL))
    assert "loaded" in row and row.rstrip().endswith("pinned")
    assert "cpu  [" in table.stdout

    unpin = cli(gateway, "pin", MODEL, "--off", "--json")
    assert unpin.code == 0, unpin.stderr
    unload = cli(gateway, "unload", MODEL, "--json")
    assert unload.code == 0, unload.stderr
    assert unload.json()["model"] == MODEL
    after = cli(gateway, "status", "--json").json()
    assert all(m["state"] != "loaded" for m in after["neurons"][0]["models"])


def test_load_unknown_model_exits_1(gateway: GatewayProc) -> None:
    result = cli(gateway, "load", "no-such-model", "--json")
    assert result.code == 1
    assert "error" in result.json()
    assert result.stderr.startswith("cortex: error:")


def check_report(report: dict, url: str) -> None:
    assert set(report) == {"ok", "url", "model", "answer", "steps"}
    assert report["url"] == url and report["model"] == MODEL
    assert [s["name"] for s in report["steps"]] == ["health", "load", "completion", "check"]
    for step in report["steps"]:
        assert set(step) == {"name", "ok", "seconds", "detail"}
        assert isinstance(step["seconds"], float) and step["seconds"] >= 0


def test_probe_gateway_finds_the_known_greedy_answer(gateway: GatewayProc) -> None:
    args = ["probe", "--url", gateway.url, "--model", MODEL, "--prompt", PROMPT]
    result = cli(gateway, *args, "--expect", EXPECTED_WORD.upper(), "--json")
    assert result.code == 0, result.stdout + result.stderr
    report = result.json()
    check_report(report, gateway.url)
    assert report["ok"] is True
    assert EXPECTED_WORD in report["answer"]
    assert "plain completion" in report["steps"][2]["detail"]


def test_probe_neuron_directly(neuron: NeuronProc, gateway: GatewayProc) -> None:
    args = ["probe", "--url", neuron.url, "--model", MODEL, "--prompt", PROMPT]
    result = cli(gateway, *args, "--expect", EXPECTED_WORD)
    assert result.code == 0, result.stdout + result.stderr
    assert "neuron" in result.stdout and result.stdout.rstrip().endswith("probe ok")


def test_failed_probe_exits_1(gateway: GatewayProc) -> None:
    args = ["probe", "--model", MODEL, "--prompt", PROMPT, "--expect", "dragon", "--json"]
    result = cli(gateway, *args)
    assert result.code == 1
    report = result.json()
    check_report(report, gateway.url)
    assert report["ok"] is False and report["steps"][-1]["ok"] is False
    assert EXPECTED_WORD in report["answer"]
