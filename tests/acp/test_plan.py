"""Plan checklists as the editor is shown them (cortex/acp/plan.py)."""

from __future__ import annotations

from cortex.acp.plan import PlanItem, parse_plan


def test_list_items_become_entries_with_their_status():
    markdown = """# Plan

Some prose that is not a step.

- [x] read the code
- [~] write the test
* [-] run it
- [ ] ship it
1. a numbered step
2) another one
+ a plain bullet
"""
    assert parse_plan(markdown) == [
        PlanItem("read the code", "completed"),
        PlanItem("write the test", "in_progress"),
        PlanItem("run it", "in_progress"),
        PlanItem("ship it", "pending"),
        PlanItem("a numbered step", "pending"),
        PlanItem("another one", "pending"),
        PlanItem("a plain bullet", "pending"),
    ]


def test_no_list_no_entries():
    assert parse_plan("just words\n\n---\n") == []
