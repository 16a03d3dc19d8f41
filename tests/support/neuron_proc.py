"""Start a real `cortex neuron` subprocess on a free loopback port (for any test area).

    proc = start_neuron(models_dir, extra_args=["--preload", "stories260k"])
    ... HTTP against proc.url ...
    proc.stop()          # or: with start_neuron(models_dir) as proc: ...

The child's stderr (its log) goes to a file; `proc.log()` reads it, and a neuron that dies
before answering `/health` raises with the log's tail. `Session(proc.url, token)` is a requests
session with paths relative to the neuron (`.sse(path, body)` collects a stream up to
`[DONE]`, `.metric(name, model)` reads one `/metrics` sample); `sse_events(response)` parses a
streaming response as it arrives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from cortex.api.sse import SSEEvent, SSEParser
from tests.conftest import ROOT, free_port

START_TIMEOUT = 120.0


def stop_process(proc: subprocess.Popen, log_file: Any, timeout: float) -> int:
    """SIGTERM a server process and wait; SIGKILL it past `timeout` seconds; close its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    if log_file is not None:
        log_file.close()
    return code


@dataclass
class NeuronProc:
    """A running neuron: base URL, port, process, and its log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    def log(self) -> str:
        """Everything the neuron logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM (the neuron drains, then exits 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; returns its exit code."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in `timeout` seconds."""
        return stop_process(self.proc, self._log_file, timeout)

    def __enter__(self) -> NeuronProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Session(requests.Session):
    """A requests session whose paths are relative to one base URL (default timeout 120 s)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return super().request(method, self.base_url + url, *args, **kwargs)

    def sse(self, path: str, body: dict) -> list[SSEEvent]:
        """POST a streaming request; every event (comments included) up to `[DONE]`."""
        with self.post(path, json={**body, "stream": True}, stream=True) as response:
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"].startswith("text/event-stream")
            collected = []
            for event in sse_events(response):
                collected.append(event)
                if event.done:
                    return collected
        raise AssertionError("the stream ended without [DONE]")

    def metric(self, name: str, model: str) -> float:
        """The value of one `/metrics` sample for `model` (0 when absent)."""
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and sample.labels.get("model") == model:
                    return sample.value
        return 0.0


def sse_events(response: requests.Response) -> Iterator[SSEEvent]:
    """Parsed SSE events of a streaming `requests` response, as they arrive."""
    parser = SSEParser()
    for chunk in response.iter_content(chunk_size=None):
        yield from parser.feed(chunk)


def healthy(url: str) -> bool:
    """Whether a cortex server at `url` answers `GET /health` with 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_neuron(
    models_dir: Path | str,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> NeuronProc:
    """Run `python -m cortex neuron --listen 127.0.0.1:PORT --models-dir DIR [extra_args]` and
    wait until `/health` answers. `env` entries are added to the current environment."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fd, name = tempfile.mkstemp(prefix="neuron-", suffix=".log")
    log_path = Path(name)
    log_file = os.fdopen(fd, "w", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "cortex",
        "neuron",
        "--listen",
        f"127.0.0.1:{port}",
        "--models-dir",
        str(models_dir),
        *(extra_args or []),
    ]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    neuron = NeuronProc(url, port, proc, log_path, log_file)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"neuron exited with {proc.returncode}:\n{neuron.log()[-4000:]}")
        if healthy(url):
            return neuron
        time.sleep(0.1)
    neuron.stop(5)
    raise RuntimeError(
        f"neuron did not answer /health in {START_TIMEOUT}s:\n{neuron.log()[-4000:]}"
    )
