"""How single-host mode starts its neuron child, from a Python install and from a one-file
executable (PyInstaller sets `sys.frozen`; its `sys.executable` is the program itself)."""

from __future__ import annotations

import sys

import pytest

from cortex.gateway.local_neuron import neuron_command


def test_from_python_it_runs_the_cortex_module() -> None:
    assert neuron_command() == [sys.executable, "-m", "cortex", "neuron"]


def test_from_a_frozen_executable_it_runs_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/usr/bin/helexa-neuron")
    assert neuron_command() == ["/usr/bin/helexa-neuron", "neuron"]
