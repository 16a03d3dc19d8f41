"""Path arguments as a model writes them, made into absolute local paths.

Models write home-relative paths the way a shell user would: `~`, `~/notes.md`, `$HOME`,
`$HOME/notes.md` (and `${HOME}`). Only these home prefixes are expanded: a `$` elsewhere is
part of a file name, never a variable, so that a tool never reads or writes a path the model
did not spell. A relative path is taken against the session's working directory (the editor's
workspace). `..` is folded lexically; symbolic links are left alone, so the path the editor
sees is the path the model named.
"""

from __future__ import annotations

import os
from pathlib import Path

_HOME_PREFIXES = ("$HOME", "${HOME}")


def home() -> Path:
    """The user's home directory (`$HOME` first, as a shell would)."""
    return Path(os.path.expanduser("~"))


def expand(path: str, cwd: str | Path) -> Path:
    """`path` with `~` / `$HOME` expanded, made absolute against `cwd`, and normalised.

    Raises `ValueError` for an empty path or one holding a NUL byte.
    """
    if not path or "\0" in path:
        raise ValueError(f"not a usable path: {path!r}")
    for prefix in _HOME_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            path = str(home()) + path[len(prefix) :]
            break
    else:
        path = os.path.expanduser(path)
    return Path(os.path.normpath(Path(cwd, path)))


def is_within(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or below it, both compared with symbolic links resolved (a
    link inside `root` that points elsewhere is not within it)."""
    return path.resolve().is_relative_to(root.resolve())
