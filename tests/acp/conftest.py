"""The stack under the agent tests: a real `cortex serve` in front of the scripted neuron of
the Anthropic tests (tests/anthropic/fake_neuron.py: it streams the assistant turns a test
queues, tool calls included), which can also be told to stall a stream; shared by a module.
And a home of its own for every test."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from aiohttp import web

from cortex.api import openai, sse
from tests.anthropic.fake_neuron import MODEL, FakeNeuron
from tests.anthropic.servers import LoopThread
from tests.support.gateway_proc import start_gateway

KEY = "sk-acp-test"
STALLED_TEXT = "Let me think"


class StallingNeuron(FakeNeuron):
    """The scripted neuron; with `stall` set, a chat streams `STALLED_TEXT` and then nothing
    more until the client goes away (a model stream for a cancel to stop)."""

    stall = False

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self.stall:
            return await super()._chat(request)
        self.chats.append(await request.json())
        response = web.StreamResponse(headers=sse.HEADERS)
        await response.prepare(request)
        delta = {"role": "assistant", "content": STALLED_TEXT}
        await response.write(
            sse.data(openai.chat_chunk("chatcmpl-stall", 0, MODEL, 0, delta, None))
        )
        await asyncio.sleep(3600)
        return response


@dataclass
class Fleet:
    """The scripted neuron and the URL of the real gateway in front of it."""

    neuron: StallingNeuron
    url: str


@pytest.fixture(scope="module")
def fleet_once():
    neuron = StallingNeuron()
    with LoopThread() as loop:
        neuron.url = loop.serve(neuron.app())
        config = (
            f'[gateway]\napi_keys = ["{KEY}"]\npoll_interval = 0.2\n\n'
            f'[[neurons]]\nname = "n1"\nendpoint = "{neuron.url}"\n'
        )
        gateway = start_gateway(config)
        try:
            _wait_for_model(gateway.url)
            yield Fleet(neuron, gateway.url)
        finally:
            gateway.stop()


@pytest.fixture
def fleet(fleet_once: Fleet) -> Fleet:
    """The shared stack, with the neuron's script and records emptied."""
    fleet_once.neuron.replies.clear()
    fleet_once.neuron.chats.clear()
    fleet_once.neuron.stall = False
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
