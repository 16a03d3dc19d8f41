"""Golden inputs for the Anthropic tests: the captured Claude Code requests and answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cortex.api.sse import SSEParser
from tests.conftest import FIXTURES

CLAUDE_CODE = FIXTURES / "claude-code"
# 15 is the bodiless HEAD / probe; 16 and 17 are what LiteLLM sent its upstream (OpenAI bodies).
NOT_ANTHROPIC = ("15-", "16-", "17-")


def request_files() -> list[Path]:
    """Every captured Anthropic request body (Messages and count_tokens)."""
    files = sorted((CLAUDE_CODE / "requests").glob("*.json"))
    return [
        f
        for f in files
        if not f.name.endswith(".meta.json") and not f.name.startswith(NOT_ANTHROPIC)
    ]


def load_request(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def is_count_tokens(path: Path) -> bool:
    meta = json.loads(path.with_name(path.name.replace(".json", ".meta.json")).read_text())
    return meta["path"].endswith("/count_tokens")


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Anthropic SSE bytes -> event dicts (the `event:` name checked against `type`)."""
    events = []
    for parsed in SSEParser().feed(raw):
        if parsed.data is None:
            continue
        event = parsed.json()
        assert parsed.event == event["type"], parsed
        events.append(event)
    return events


def response_events(name: str) -> list[dict[str, Any]]:
    """The events of one captured answer that Claude Code accepted."""
    return sse_events((CLAUDE_CODE / "responses" / name).read_bytes())
