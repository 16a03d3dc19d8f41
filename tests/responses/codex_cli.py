"""The real Codex CLI, installed once with npm into ~/.cache/cortex-tests, run as `codex exec`.

`codex_binary()` installs `@openai/codex@VERSION` (the version tests/fixtures/codex was captured
from; the package pulls its native linux-x64 binary through an optional dependency).
`run_codex(...)` runs `codex exec --skip-git-repo-check PROMPT` with the configuration of
tests/fixtures/codex/README.md written into a fresh HOME: the gateway as a `responses`
provider, the key in `CORTEX_API_KEY`, stdin closed. The answer is on stdout; progress and
the transcript on stderr.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.npm_cli import npm_cli

VERSION = "0.169.0"
CONFIG = """model = "{model}"
model_provider = "cortex"
[model_providers.cortex]
name = "cortex"
base_url = "{base_url}/v1"
env_key = "CORTEX_API_KEY"
wire_api = "responses"
"""


def codex_binary() -> Path:
    """The `codex` executable, installed into the cache first if needed."""
    return npm_cli("@openai/codex", VERSION, "codex", "codex")


def run_codex(
    binary: Path,
    gateway_url: str,
    model: str,
    prompt: str,
    *,
    home: Path,
    cwd: Path,
    api_key: str,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run one `codex exec` turn against the gateway; the finished process (text output)."""
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    config = CONFIG.format(model=model, base_url=gateway_url)
    (home / ".codex" / "config.toml").write_text(config, encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "dumb",
        "CORTEX_API_KEY": api_key,
    }
    return subprocess.run(
        [str(binary), "exec", "--skip-git-repo-check", prompt],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
