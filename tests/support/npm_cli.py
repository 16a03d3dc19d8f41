"""A command-line tool from npm, installed once into ~/.cache/cortex-tests (for any test area).

    binary = npm_cli("@openai/codex", "0.169.0", "codex", "codex")

installs `PACKAGE@VERSION` with `npm install --prefix ~/.cache/cortex-tests/NAME-VERSION` unless
that directory already holds a working copy (`BIN --version` prints VERSION), and returns the
path of `node_modules/.bin/BIN`. Tests skip on `NpmUnavailable` (npm itself is missing); a
failed install (`NpmInstallFailed`: no network, a broken package) is a test error, not a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CACHE_ROOT = Path.home() / ".cache" / "cortex-tests"
INSTALL_TIMEOUT_S = 600


class NpmUnavailable(Exception):
    """npm is missing: the CLI cannot be installed here."""


class NpmInstallFailed(RuntimeError):
    """npm is there but the install failed."""


def _works(binary: Path, version: str) -> bool:
    if not binary.exists():
        return False
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and version in result.stdout


def npm_cli(package: str, version: str, name: str, bin_name: str) -> Path:
    """The executable `bin_name` of `package@version`, installed into the cache if needed."""
    cache = CACHE_ROOT / f"{name}-{version}"
    binary = cache / "node_modules" / ".bin" / bin_name
    if _works(binary, version):
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise NpmUnavailable(f"npm is not installed, so {package} cannot be installed")
    cache.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund"]
    try:
        result = subprocess.run(
            [*command, f"{package}@{version}"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise NpmInstallFailed(f"npm install of {package}@{version} timed out") from exc
    if result.returncode != 0 or not _works(binary, version):
        tail = (result.stderr or result.stdout)[-800:]
        raise NpmInstallFailed(f"npm install of {package}@{version} failed: {tail}")
    return binary
