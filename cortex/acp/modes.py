"""The session modes an editor can switch between, and what each lets the agent do unasked.

- `default`: the agent asks (`session/request_permission`) before it writes a file or runs a
  command; the user can allow a tool for the rest of the session.
- `auto`: writes and commands run without asking (the editor's "allow everything").
- `plan`: the agent investigates and writes a plan, nothing else: it may write only its plan
  files (under `plan.plans_dir()`), and runs no commands, since a command could write anywhere.

Writing the agent's own plan files never asks, in any mode: they are outside the user's work.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT = "default"
AUTO = "auto"
PLAN = "plan"


@dataclass(frozen=True)
class Mode:
    """One mode as the editor lists it."""

    id: str
    name: str
    description: str


MODES: dict[str, Mode] = {
    mode.id: mode
    for mode in (
        Mode(DEFAULT, "Default", "Asks before changing files or running commands"),
        Mode(AUTO, "Auto", "Changes files and runs commands without asking"),
        Mode(PLAN, "Plan", "Reads and plans; writes only its plan files, runs no commands"),
    )
}


def asks_permission(mode: str) -> bool:
    """Whether writes and commands need the user's permission in `mode`."""
    return mode != AUTO
