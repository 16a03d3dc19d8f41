"""cortex: self-hosted LLM serving for a fleet of GPU hosts."""

from __future__ import annotations


def _version() -> str:
    """The version stamped at install or build time: `cortex/_version.py`.

    setuptools-scm writes that file from git at every `pip install` (editable ones included),
    and build/common.py writes it into the single-file builds (pyz, PyInstaller), so one small
    import answers, without importlib.metadata's scan of every installed distribution. A tree
    that was never installed nor built has no stamp: "0+unknown" says so.
    """
    try:
        from cortex._version import version
    except ImportError:
        return "0+unknown"
    return version


def __getattr__(name: str) -> str:
    """`cortex.__version__`, looked up on first use: only the commands that show it pay."""
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    raise AttributeError(f"module 'cortex' has no attribute {name!r}")
