"""The agent's plans: Markdown checklists it writes under the user's data dir.

In plan mode the model writes its plan to a file under `plans_dir()`
(`~/.local/share/cortex/plans` on Linux); every write there is also shown to the editor as an
ACP `plan` update, one entry per list item: `- [x] done`, `- [~] doing` (or `- [-]`),
`- [ ] to do`, and plain `- item` / `1. item` lines (pending).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?:\[(?P<mark>[ xX~-])\]\s*)?(?P<text>\S.*?)\s*$")
_STATUS = {"x": "completed", "X": "completed", "~": "in_progress", "-": "in_progress"}


@dataclass(frozen=True)
class PlanItem:
    """One step of a plan and its ACP status (`pending`, `in_progress`, `completed`)."""

    text: str
    status: str


def plans_dir() -> Path:
    """Where plan files go: the user's data dir for cortex."""
    return Path(platformdirs.user_data_dir("cortex")) / "plans"


def parse_plan(markdown: str) -> list[PlanItem]:
    """The list items of a Markdown plan, in order."""
    items = []
    for line in markdown.splitlines():
        if match := _ITEM.match(line):
            status = _STATUS.get(match["mark"] or " ", "pending")
            items.append(PlanItem(match["text"], status))
    return items
