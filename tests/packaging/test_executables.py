"""build/executables.py: the gateway's PyInstaller one-file executable.

A PyInstaller build takes minutes on a small machine, so this runs only when asked:
`CORTEX_TEST_PYINSTALLER=1 pytest -q tests/packaging/test_executables.py` (PyInstaller must be
installed: `pip install pyinstaller`). The neuron's executable (torch inside) is not built here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port
from tests.packaging.rpmtools import build_common

VERSION = build_common().project_version()

pytestmark = pytest.mark.skipif(
    os.environ.get("CORTEX_TEST_PYINSTALLER") != "1"
    or importlib.util.find_spec("PyInstaller") is None,
    reason="set CORTEX_TEST_PYINSTALLER=1 (and install pyinstaller) to build executables",
)


def test_gateway_executable() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "build" / "executables.py"), "gateway"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    exe = ROOT / "build" / "out" / "dist" / "cortex"
    assert done.stdout.startswith(f"built {exe} ")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)

    assert run("--version").stdout == f"cortex {VERSION}\n"
    status = run("status", "--json", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert status.returncode == 3 and json.loads(status.stdout)["error"]["code"] == "unreachable"
    neuron = run("neuron")
    assert neuron.returncode == 2 and "cannot run a neuron" in neuron.stderr
