"""What the build scripts share: where things are, and the one version (pyproject.toml)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "out"
PACKAGING = ROOT / "packaging"


def _project() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def project_version() -> str:
    """`[project] version` from pyproject.toml: the version of every artifact."""
    version = _project()["version"]
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version):
        raise SystemExit(f"pyproject.toml: version {version!r} cannot be an RPM version")
    return version


def project_dependencies() -> list[str]:
    """The gateway/CLI requirements (`[project] dependencies`, no extras: never torch)."""
    return list(_project()["dependencies"])


def write_version_file(package_dir: Path, version: str) -> Path:
    """Write `cortex/VERSION`, which `cortex.__version__` reads when no metadata is installed."""
    path = package_dir / "VERSION"
    path.write_text(version + "\n", encoding="utf-8")
    return path
