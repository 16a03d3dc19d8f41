"""Build `cortex.pyz`: the gateway and CLI as one file that runs with a system Python.

    python build/pyz.py [--output PATH]

Run it with the Python (and virtual environment) the archive is for: it bundles cortex and its
gateway/CLI dependencies (pyproject `[project] dependencies`, never torch) as installed in that
environment, compiled extensions included, so the archive runs with the same Python version on
the same platform (`python3 cortex.pyz ...` or `./cortex.pyz ...`), with no other package
installed. `cortex/_version.py` and a minimal `cortex` dist-info inside carry the version from
git (build/common.py).
The first run unpacks the libraries into a cache directory (see build/pyz_main.py). The
neuron's code is inside too; `cortex.pyz neuron` works where torch and the neuron extra are
installed for that Python, but the neuron's executable is build/executables.py's.
Prints the archive's path.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import zipapp
from importlib import metadata
from pathlib import Path

from common import OUT, ROOT, project_dependencies, project_version, write_version_file
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def distributions(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that `requirements` need, transitively (markers honoured)."""
    found: dict[str, metadata.Distribution] = {}
    queue = [Requirement(r) for r in requirements]
    while queue:
        req = queue.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            found[name] = dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is not installed here: pip install -e . first") from None
        queue.extend(Requirement(r) for r in dist.requires or [])
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def copy_distribution(dist: metadata.Distribution, lib: Path) -> int:
    """Copy a distribution's installed files (no scripts, no bytecode) into `lib`."""
    count = 0
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc":
            continue
        source = Path(dist.locate_file(file))
        if source.is_file():
            target = lib / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            count += 1
    return count


def stage_cortex(lib: Path, version: str) -> None:
    """Copy the cortex package, its version stamp and a minimal dist-info into `lib`."""
    shutil.copytree(
        ROOT / "cortex", lib / "cortex", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    write_version_file(lib / "cortex", version)
    info = lib / f"cortex-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: cortex\nVersion: {version}\n", encoding="utf-8"
    )


def build_id(lib: Path) -> str:
    """A digest of every staged file's path and content: the unpack cache's key."""
    digest = hashlib.sha256()
    for path in sorted(p for p in lib.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(lib)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build(output: Path, version: str) -> Path:
    """Stage and write the archive stamped with `version`; its path."""
    with tempfile.TemporaryDirectory(prefix="cortex-pyz-") as tmp:
        stage = Path(tmp)
        lib = stage / "lib"
        lib.mkdir()
        for dist in distributions(project_dependencies()):
            copy_distribution(dist, lib)
        stage_cortex(lib, version)
        shutil.copy2(ROOT / "build" / "pyz_main.py", stage / "__main__.py")
        (stage / "_pyz_build.py").write_text(
            f'"""Written by build/pyz.py."""\n\nBUILD_ID = "{version}-{build_id(lib)}"\n'
            f"PYTHON = {tuple(sys.version_info[:2])!r}\n",
            encoding="utf-8",
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(stage, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


def main() -> None:
    """Build the archive and print where it is."""
    parser = argparse.ArgumentParser(description="Build cortex.pyz (gateway and CLI).")
    parser.add_argument("--output", type=Path, default=OUT / "cortex.pyz")
    version = project_version()
    path = build(parser.parse_args().output.resolve(), version)
    size = path.stat().st_size / 2**20
    print(f"built {path} ({size:.1f} MiB, cortex {version}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
