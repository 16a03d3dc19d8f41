"""The `cortex acp` command itself: listed, lazily imported, and clear when its extra is missing."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.support.cli_run import run_cli


def test_help_lists_acp_with_its_options():
    assert "acp" in run_cli("--help").stdout
    result = run_cli("acp", "--help")
    assert result.code == 0
    for option in ("--gateway", "--model", "--api-key", "CORTEX_GATEWAY", "CORTEX_API_KEY"):
        assert option in result.stdout


def test_the_cli_does_not_import_the_agent():
    probe = (
        "import sys; from cortex.cli import app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('acp', 'pydantic', 'aiohttp')"
        " or m.startswith('cortex.acp')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_without_the_acp_package_the_command_says_how_to_get_it():
    # `None` in sys.modules makes `import acp` fail as if the package were not installed.
    script = (
        "import sys; sys.modules['acp'] = None; sys.argv = ['cortex', 'acp']; "
        "from cortex.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'cortex[acp]'" in done.stderr
