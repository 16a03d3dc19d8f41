"""What the build scripts share: where things are, and the one version (from git).

The version of every artifact comes from git through setuptools-scm, as `pip install` computes
it: a tag `v0.2.0` gives `0.2.0`, the third commit after it `0.2.1.dev3+g<sha>`, a repository
without tags `0.1.devN+g<sha>`. `SETUPTOOLS_SCM_PRETEND_VERSION` overrides it: CI resolves the
stamp once and exports it, so the wheel, the executables and the RPMs of one run agree.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "out"
PACKAGING = ROOT / "packaging"


def project_version() -> str:
    """The PEP 440 version of this checkout (setuptools-scm; the pretend variable wins)."""
    try:
        from setuptools_scm import get_version
    except ImportError:
        raise SystemExit(
            "setuptools-scm is not installed: pip install -e '.[test]' (or setuptools-scm)"
        ) from None
    return get_version(root=str(ROOT))


def rpm_version(version: str) -> str:
    """`version` (PEP 440) as an RPM Version that sorts as PEP 440 does under rpm's comparison.

    Pre-release and development parts get a tilde, which sorts before anything (rpm >= 4.10):
    0.2.0 < 0.2.1~dev3+g<sha> < 0.2.1~rc1 < 0.2.1; a post-release is a plain dotted part,
    which sorts after the release it follows. The local part (+g<sha>) stays as written.
    """
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise SystemExit(f"version {version!r} is not a PEP 440 version") from None
    if parsed.epoch:
        raise SystemExit(f"version {version!r}: an epoch has no RPM Version form")
    text = parsed.base_version
    if parsed.pre is not None:
        text += f"~{parsed.pre[0]}{parsed.pre[1]}"
    if parsed.post is not None:
        text += f".post{parsed.post}"
    if parsed.dev is not None:
        text += f"~dev{parsed.dev}"
    if parsed.local is not None:
        text += f"+{parsed.local}"
    return text


def project_dependencies() -> list[str]:
    """The gateway/CLI requirements (`[project] dependencies`, no extras: never torch)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def write_version_file(package_dir: Path, version: str) -> Path:
    """Write `cortex/_version.py` as setuptools-scm does: `cortex.__version__` reads it."""
    path = package_dir / "_version.py"
    path.write_text(
        f'"""Written by the build: the version of this build."""\n\n'
        f"__version__ = version = {version!r}\n",
        encoding="utf-8",
    )
    return path
