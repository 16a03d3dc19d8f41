"""Fixtures of the Responses API tests: the scripted fake neuron (tests/support/fake_neuron.py)
behind an in-process gateway or a real `cortex serve`, and the real Codex CLI.

The tests import the fake neuron's names from here (`FakeNeuron`, `Reply`, `FAKE_MODEL`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.responses.codex_cli import codex_binary
from tests.support.fake_neuron import QWEN_MODEL as FAKE_MODEL
from tests.support.fake_neuron import FakeNeuron, Reply, fake_qwen
from tests.support.gateway_app import gateway_thread
from tests.support.gateway_proc import GatewayProc, gateway_proc_for
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


@pytest.fixture
def fake_stack(tmp_path: Path) -> Iterator[FakeStack]:
    neuron, state_dir = fake_qwen(), tmp_path / "state"
    with gateway_thread([neuron], api_keys=[KEY, OTHER_KEY], state_dir=str(state_dir)) as url:
        yield FakeStack(neuron, url, state_dir)


@pytest.fixture
def fake_served(tmp_path: Path) -> Iterator[tuple[FakeNeuron, GatewayProc]]:
    """The fake neuron on a loop thread, a real `cortex serve` subprocess in front of it."""
    neuron = fake_qwen()
    config = f'[gateway]\napi_keys = ["{KEY}"]\nstate_dir = "{tmp_path / "state"}"\n'
    with gateway_proc_for(neuron, config) as gateway:
        yield neuron, gateway


@pytest.fixture(scope="session")
def codex() -> Path:
    """The real Codex CLI (installed into ~/.cache/cortex-tests on first use)."""
    try:
        return codex_binary()
    except NpmUnavailable as exc:
        pytest.skip(str(exc))
