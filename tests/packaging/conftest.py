"""Fixtures for the packaging tests: one cortex.pyz built per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def built_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python build/pyz.py --output TMP/cortex.pyz`, once; the archive's path."""
    output = tmp_path_factory.mktemp("pyz") / "cortex.pyz"
    done = subprocess.run(
        [sys.executable, str(ROOT / "build" / "pyz.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"built {output} ")
    return output
