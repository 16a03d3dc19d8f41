"""Path expansion for tool arguments (cortex/acp/paths.py), over the whole prefix matrix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.acp.paths import expand, is_within

CWD = "/work/project"


@pytest.fixture(autouse=True)
def fake_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/dev")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("~", "/home/dev"),
        ("~/", "/home/dev"),
        ("~/notes.md", "/home/dev/notes.md"),
        ("~/a/../b.txt", "/home/dev/b.txt"),
        ("$HOME", "/home/dev"),
        ("$HOME/", "/home/dev"),
        ("$HOME/notes.md", "/home/dev/notes.md"),
        ("${HOME}", "/home/dev"),
        ("${HOME}/notes.md", "/home/dev/notes.md"),
        ("notes.md", "/work/project/notes.md"),
        ("./src/main.py", "/work/project/src/main.py"),
        ("../other/x", "/work/other/x"),
        (".", "/work/project"),
        ("/etc/hosts", "/etc/hosts"),
        ("/tmp/../etc/./hosts", "/etc/hosts"),
        # Not home prefixes: kept as names, relative to the cwd.
        ("$HOMEDIR/x", "/work/project/$HOMEDIR/x"),
        ("$HOME.bak", "/work/project/$HOME.bak"),
        ("a/~/b", "/work/project/a/~/b"),
        ("a/$HOME/b", "/work/project/a/$HOME/b"),
        ("$USER/x", "/work/project/$USER/x"),
        ("~~", "/work/project/~~"),
    ],
)
def test_expand(raw, expected):
    assert expand(raw, CWD) == Path(expected)


def test_a_relative_cwd_is_not_assumed():
    assert expand("x", "/") == Path("/x")


@pytest.mark.parametrize("raw", ["", "a\0b"])
def test_unusable_paths_are_refused(raw):
    with pytest.raises(ValueError, match="not a usable path"):
        expand(raw, CWD)


def test_is_within_compares_resolved_paths(tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "link").symlink_to(tmp_path)
    assert is_within(plans / "p.md", plans)
    assert is_within(plans / "sub" / ".." / "p.md", plans)
    assert not is_within(plans / ".." / "p.md", plans)
    assert not is_within(plans / "link" / "p.md", plans)  # escapes through the link
    assert not is_within(tmp_path / "plans-other" / "p.md", plans)
