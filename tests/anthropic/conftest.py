"""Fixtures shared by the Anthropic tests."""

from __future__ import annotations

import pytest

from tests.anthropic.claude_cli import Unavailable, claude_binary


@pytest.fixture(scope="session")
def claude():
    """The real Claude Code CLI (installed into ~/.cache/cortex-tests on first use)."""
    try:
        return claude_binary()
    except Unavailable as exc:
        pytest.skip(str(exc))
