"""Run the `cortex` CLI as a subprocess in tests (owned by the cli helper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from tests.conftest import ROOT


@dataclass
class CliResult:
    """A finished CLI run."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as exactly one JSON document."""
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
    """Run `python -m cortex ARGS` in a fresh process (stdin closed, no terminal)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "cortex", *args],
        cwd=ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)
