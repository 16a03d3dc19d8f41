"""Fixtures of the Responses API tests: the scripted fake neuron behind an in-process gateway,
and the real Codex CLI.

The fake neuron is used only here (`fake_stack`, `fake_served`, `FakeNeuron`, `Reply`,
`FAKE_MODEL`), so that moving it to tests/support changes one import.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.anthropic.fake_neuron import MODEL as FAKE_MODEL
from tests.anthropic.fake_neuron import FakeNeuron, Reply
from tests.anthropic.servers import LoopThread, gateway_config
from tests.responses.codex_cli import codex_binary
from tests.support.gateway_proc import GatewayProc, start_gateway
from tests.support.npm_cli import NpmUnavailable

__all__ = ["FAKE_MODEL", "KEY", "OTHER_KEY", "FakeNeuron", "FakeStack", "Reply"]
KEY = "sk-resp-1"
OTHER_KEY = "sk-resp-2"


@dataclass
class FakeStack:
    """A scripted neuron, the gateway in front of it (two API keys) and its state dir."""

    neuron: FakeNeuron
    url: str
    state_dir: Path
    loop: LoopThread


@pytest.fixture
def fake_stack(tmp_path: Path) -> Iterator[FakeStack]:
    neuron = FakeNeuron()
    with LoopThread() as loop:
        neuron.url = loop.serve(neuron.app())
        config = gateway_config([neuron.url], api_keys=[KEY, OTHER_KEY])
        config.gateway.state_dir = str(tmp_path / "state")
        yield FakeStack(neuron, loop.gateway(config), tmp_path / "state", loop)


@pytest.fixture
def fake_served(tmp_path: Path) -> Iterator[tuple[FakeNeuron, GatewayProc]]:
    """The fake neuron on a loop thread, a real `cortex serve` subprocess in front of it."""
    neuron = FakeNeuron()
    with LoopThread() as loop:
        neuron.url = loop.serve(neuron.app())
        config = (
            f'[gateway]\napi_keys = ["{KEY}"]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[[neurons]]\nname = "fake"\nendpoint = "{neuron.url}"\n'
        )
        gateway = start_gateway(config)
        try:
            yield neuron, gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="session")
def codex() -> Path:
    """The real Codex CLI (installed into ~/.cache/cortex-tests on first use)."""
    try:
        return codex_binary()
    except NpmUnavailable as exc:
        pytest.skip(str(exc))
