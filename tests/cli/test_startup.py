"""The CLI stays light: `--help` and the client commands import no server, torch or aiohttp.

Start-up time itself is measured by `bench/cli_startup.py` (numbers, no assertions); this test
guards its cause: the heavy modules that would blow the 300 ms budget.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port

HEAVY = ("torch", "numpy", "aiohttp", "pydantic", "rich", "tokenizers", "jinja2", "safetensors")
LIGHT_COMMANDS = [
    ["--help"],
    ["--version"],
    ["status", "--json"],
    ["load", "m", "--json"],
    ["probe", "--json"],
]


def imported_modules(args: list[str]) -> set[str]:
    """Top-level module names `python -m cortex ARGS` imported (from -X importtime)."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    env["CORTEX_GATEWAY"] = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "cortex", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return {name for name in names if name and name != "package"}


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_client_commands_import_nothing_heavy(args: list[str]) -> None:
    modules = imported_modules(args)
    assert "cortex.cli" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
    servers = sorted(m for m in modules if m.startswith(("cortex.gateway", "cortex.neuron")))
    assert servers == []
