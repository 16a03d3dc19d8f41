"""cortex: self-hosted LLM serving for a fleet of GPU hosts."""

from __future__ import annotations


def _version() -> str:
    """The version from pyproject.toml, its one source: installed metadata, else the file."""
    from importlib import metadata

    try:
        return metadata.version("cortex")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        for candidate in (
            Path(__file__).with_name("VERSION"),  # written into single-file builds
            Path(__file__).parent.parent / "pyproject.toml",
        ):
            if candidate.is_file():
                text = candidate.read_text(encoding="utf-8")
                match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
                return match.group(1) if match else text.strip()
        return "0+unknown"


def __getattr__(name: str) -> str:
    """`cortex.__version__`, looked up on first use: importlib.metadata scans every installed
    distribution, which would cost `cortex --help` and `cortex status` a large share of their
    start-up budget (bench/cli_startup.py)."""
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    raise AttributeError(f"module 'cortex' has no attribute {name!r}")
