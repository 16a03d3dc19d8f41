"""The real Claude Code CLI, installed once with npm into ~/.cache/cortex-tests, run in print mode.

`claude_binary()` installs `@anthropic-ai/claude-code@VERSION` (the version the fixtures were
captured from) if the cache lacks it; the npm package pulls the native linux-x64 binary through
an optional dependency. `run_claude(...)` runs `claude -p PROMPT --output-format json --model M`
with the environment of fixtures/claude-code/README.md: a fresh HOME, the gateway as
`ANTHROPIC_BASE_URL`, telemetry and non-essential traffic off, stdin closed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.npm_cli import npm_cli

VERSION = "2.1.197"


def claude_binary() -> Path:
    """The `claude` executable, installed into the cache first if needed."""
    return npm_cli("@anthropic-ai/claude-code", VERSION, "claude-code", "claude")


def run_claude(
    binary: Path,
    gateway_url: str,
    model: str,
    prompt: str,
    *args: str,
    home: Path,
    cwd: Path,
    api_key: str,
    timeout: float = 300,
) -> tuple[int, dict[str, Any], str]:
    """Run one print-mode turn; (exit code, the JSON result on stdout, stderr)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": gateway_url,
        "ANTHROPIC_API_KEY": api_key,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    command = [str(binary), "-p", prompt, "--output-format", "json", "--model", model, *args]
    result = subprocess.run(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        output = {"unparsed_stdout": result.stdout}
    return result.returncode, output, result.stderr
