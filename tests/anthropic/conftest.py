"""Fixtures shared by the Anthropic tests."""

from __future__ import annotations

import pytest

from tests.anthropic.claude_cli import claude_binary
from tests.support.npm_cli import NpmUnavailable


@pytest.fixture(scope="session")
def claude():
    """The real Claude Code CLI (installed into ~/.cache/cortex-tests on first use)."""
    try:
        return claude_binary()
    except NpmUnavailable as exc:
        pytest.skip(str(exc))
