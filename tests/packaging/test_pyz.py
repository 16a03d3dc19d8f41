"""build/pyz.py's cortex.pyz: runs on a bare Python (`-S`: no site-packages) from its own libs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, free_port
from tests.packaging.rpmtools import build_common
from tests.support.neuron_proc import NeuronProc, start_neuron

VERSION = build_common().project_version()


def pyz_env(tmp_path: Path) -> dict[str, str]:
    """No CORTEX_* settings from outside; a private unpack cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.pop("PYTHONPATH", None)
    env["CORTEX_PYZ_CACHE"] = str(tmp_path / "cache")
    return env


def run_pyz(pyz: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-S", str(pyz), *args],
        env=pyz_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version_inside_the_archive(built_pyz: Path) -> None:
    import zipfile

    with zipfile.ZipFile(built_pyz) as archive:
        assert f"version = {VERSION!r}" in archive.read("lib/cortex/_version.py").decode()
        names = set(archive.namelist())
    assert "__main__.py" in names and "lib/aiohttp/__init__.py" in names
    assert not any(n.startswith("lib/torch/") for n in names)


def test_pyz_version_and_exit_codes(built_pyz: Path, tmp_path: Path) -> None:
    assert os.access(built_pyz, os.X_OK)
    version = run_pyz(built_pyz, tmp_path, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"cortex {VERSION}\n"
    unreachable = run_pyz(
        built_pyz, tmp_path, "status", "--json", "--gateway", f"http://127.0.0.1:{free_port()}"
    )
    assert unreachable.returncode == 3
    assert json.loads(unreachable.stdout)["error"]["code"] == "unreachable"
    assert run_pyz(built_pyz, tmp_path, "load").returncode == 2
    # No torch on a bare Python: `neuron` says what is missing instead of a traceback.
    neuron = run_pyz(built_pyz, tmp_path, "neuron", "--listen", f"127.0.0.1:{free_port()}")
    assert neuron.returncode == 2
    assert "cannot run a neuron" in neuron.stderr and "Traceback" not in neuron.stderr


@pytest.fixture(scope="module")
def neuron() -> Iterator[NeuronProc]:
    with start_neuron(FIXTURES) as proc:
        yield proc


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_pyz_serve_against_a_neuron(built_pyz: Path, tmp_path: Path, neuron: NeuronProc) -> None:
    port, metrics = free_port(), free_port()
    command = [sys.executable, "-S", str(built_pyz), "serve", "--neuron", neuron.url]
    command += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}"]
    log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen(command, env=pyz_env(tmp_path), cwd=tmp_path, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        health: dict = {}
        while time.monotonic() < deadline and gateway.poll() is None:
            try:
                health = get_json(f"{url}/health")
                if health.get("neurons", {}).get("up") == 1:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert health == {"status": "ok", "neurons": {"up": 1, "total": 1}}, (
            tmp_path / "gateway.log"
        ).read_text()
        models = [m["id"] for m in get_json(f"{url}/v1/models")["data"]]
        assert "stories260k" in models
        fleet = get_json(f"{url}/fleet")
        assert fleet["neurons"][0]["endpoint"] == neuron.url
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        log.close()
