"""Entry of cortex.pyz: unpack the bundled libraries once, then run the cortex CLI.

build/pyz.py copies this file into the archive as `__main__.py`, beside `_pyz_build.py`
(the build id and the Python version it was built for) and `lib/` (cortex and its
dependencies). Some dependencies are compiled (aiohttp's and orjson's extensions) and Python
cannot import compiled modules from inside a zip, so the first run unpacks `lib/` into a cache
directory named by the build id: `$CORTEX_PYZ_CACHE`, else `$XDG_CACHE_HOME/cortex/pyz`, else
`~/.cache/cortex/pyz`. Later runs only check that the directory exists.
"""

import os
import sys

import _pyz_build as build


def cache_root() -> str:
    """Where unpacked builds live."""
    if value := os.environ.get("CORTEX_PYZ_CACHE"):
        return value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cortex", "pyz")


def unpack(archive: str, target: str) -> None:
    """Extract the archive's `lib/` into `target`/lib, atomically (a racing run may win)."""
    import shutil
    import tempfile
    import zipfile

    os.makedirs(os.path.dirname(target), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(target))
    with zipfile.ZipFile(archive) as z:
        z.extractall(scratch, [n for n in z.namelist() if n.startswith("lib/")])
    try:
        os.rename(scratch, target)
    except OSError:  # another run unpacked the same build first
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    """Check the Python version, unpack if needed, run `cortex.cli.main`."""
    if sys.version_info[:2] != tuple(build.PYTHON):
        wanted = ".".join(map(str, build.PYTHON))
        sys.stderr.write(
            f"cortex.pyz: built for Python {wanted}, this is {sys.version.split()[0]}; "
            "rebuild it with `python build/pyz.py` under this Python\n"
        )
        sys.exit(2)
    archive = os.path.dirname(os.path.abspath(__file__))
    target = os.path.join(cache_root(), build.BUILD_ID)
    if not os.path.isdir(target):
        unpack(archive, target)
    lib = os.path.join(target, "lib")
    sys.path.insert(0, lib)
    # Child processes (the local neuron of `cortex serve`) import the same cortex.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (lib, os.environ.get("PYTHONPATH")) if p)
    from cortex.cli import main as cli_main

    cli_main()


main()
