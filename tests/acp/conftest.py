"""The stack under the agent tests: a real `cortex serve` in front of the scripted neuron
(tests/support/fake_neuron.py: it streams the assistant turns a test queues, tool calls
included, and a `Reply(stall=True)` stalls after its text), shared by a module. And a home of
its own for every test."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.fake_neuron import QWEN_MODEL as MODEL
from tests.support.fake_neuron import FakeNeuron, fake_qwen
from tests.support.gateway_proc import gateway_proc_for

KEY = "sk-acp-test"
STALLED_TEXT = "Let me think"


@dataclass
class Fleet:
    """The scripted neuron and the URL of the real gateway in front of it."""

    neuron: FakeNeuron
    url: str


@pytest.fixture(scope="module")
def fleet_once():
    neuron = fake_qwen()
    config = f'[gateway]\napi_keys = ["{KEY}"]\npoll_interval = 0.2\n'
    with gateway_proc_for(neuron, config) as gateway:
        _wait_for_model(gateway.url)
        yield Fleet(neuron, gateway.url)


@pytest.fixture
def fleet(fleet_once: Fleet) -> Fleet:
    """The shared stack, with the neuron's script and records emptied."""
    fleet_once.neuron.replies.clear()
    fleet_once.neuron.requests.clear()
    return fleet_once


@dataclass
class Home:
    """A test's own home dir, with the editor's workspace inside it."""

    path: Path
    workspace: Path
    log: Path


@pytest.fixture
def home(tmp_path: Path) -> Home:
    path = tmp_path / "home"
    workspace = path / "project"
    workspace.mkdir(parents=True)
    return Home(path, workspace, tmp_path / "agent.log")


def _wait_for_model(url: str) -> None:
    """Until the gateway has polled the neuron and lists its model."""
    deadline = time.monotonic() + 30
    headers = {"Authorization": f"Bearer {KEY}"}
    while time.monotonic() < deadline:
        models = requests.get(f"{url}/v1/models", headers=headers, timeout=5).json()
        if any(m["id"] == MODEL for m in models.get("data", [])):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway at {url} never listed {MODEL}")
