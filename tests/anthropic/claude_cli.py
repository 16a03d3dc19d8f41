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
import shutil
import subprocess
from pathlib import Path
from typing import Any

VERSION = "2.1.197"
CACHE = Path.home() / ".cache" / "cortex-tests" / f"claude-code-{VERSION}"
INSTALL_TIMEOUT_S = 600


class Unavailable(Exception):
    """npm or the network is missing: the CLI cannot be installed here."""


def _works(binary: Path) -> bool:
    if not binary.exists():
        return False
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and VERSION in result.stdout


def claude_binary() -> Path:
    """The `claude` executable, installed into the cache first if needed."""
    binary = CACHE / "node_modules" / ".bin" / "claude"
    if _works(binary):
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed, so the Claude Code CLI cannot be installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund"]
    try:
        result = subprocess.run(
            [*command, f"@anthropic-ai/claude-code@{VERSION}"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"npm install of Claude Code {VERSION} timed out (no network?)") from exc
    if result.returncode != 0 or not _works(binary):
        tail = (result.stderr or result.stdout)[-800:]
        raise Unavailable(f"npm install of Claude Code {VERSION} failed (no network?): {tail}")
    return binary


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
