"""Shared fixtures of the reliability suite (issue 16): a tiny random Qwen3 that writes long
answers (random weights rarely reach EOS) under a models dir, a neuron serving it with short
server limits, and helpers that measure what the issue measured (in-flight, RSS, timings)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import FIXTURES
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.neuron_proc import NeuronProc, start_neuron

MODEL = "rambler"
LIMITS = """
[neuron]
idle_timeout = "1s"
body_timeout = "1s"
max_connections = 40
"""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability-models")
    make_tiny_checkpoint(
        "qwen3", root / MODEL, tokenizer_from=FIXTURES / "qwen3", max_position_embeddings=8192
    )
    return root


@pytest.fixture(scope="module")
def neuron(models_dir, tmp_path_factory) -> Iterator[NeuronProc]:
    config = tmp_path_factory.mktemp("neuron-config") / "neuron.toml"
    config.write_text(LIMITS, encoding="utf-8")
    with start_neuron(models_dir, ["-c", str(config), "--preload", MODEL]) as proc:
        wait_until(lambda: in_flight(proc.url) is not None, 60)
        yield proc


def health(url: str) -> dict:
    return requests.get(url + "/health", timeout=5).json()


def in_flight(url: str, model: str = MODEL) -> int | None:
    """Requests running or waiting on the neuron for `model` (None until it is loaded)."""
    for entry in health(url)["models"]:
        if entry["id"] == model and entry["state"] == "loaded":
            return int(entry["in_flight"]) + int(entry["waiting"])
    return None


def wait_until(check: Callable[[], object], timeout: float, step: float = 0.05) -> float:
    """Seconds until `check()` is truthy; fails past `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"not true within {timeout}s")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def chat(content: str = "Tell me a long story.", **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
