"""Fixtures shared by every test area. Area-specific helpers live in tests/support/."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The project's copy of the test data (tests/fixtures, see its PROVENANCE.md)."""
    return FIXTURES
