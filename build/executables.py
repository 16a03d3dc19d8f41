"""Build one-file executables with PyInstaller: the gateway/CLI and the neuron.

    python build/executables.py gateway    # build/out/dist/cortex: no torch inside
    python build/executables.py neuron     # build/out/dist/helexa-neuron: torch inside
    python build/executables.py all

Run it in the project's virtual environment (`pip install -e '.[neuron]'` for the neuron);
PyInstaller is installed from PyPI into it when missing. Both executables are the whole `cortex`
CLI (entry: cortex.py); they differ in what is bundled. The gateway's build excludes torch and
the other neuron-only packages, so `cortex neuron` is not available from it. The version from
git (build/common.py) is stamped into `cortex/_version.py` first, so `--version` reports it.
Prints the path of each executable. The RPMs (build/rpms.py) package these files.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from common import OUT, ROOT, project_version, write_version_file

# Neuron-only packages: never inside the gateway's executable. pydantic is reachable only
# through yarl's optional integration, setuptools only through PyInstaller's own runtime hook.
NEURON_ONLY = ["torch", "numpy", "safetensors", "tokenizers", "jinja2", "gguf", "transformers"]
GATEWAY_UNUSED = ["pydantic", "pydantic_core", "setuptools", "pkg_resources"]
TARGETS = {
    "gateway": {
        "name": "cortex",
        "args": [f"--exclude-module={m}" for m in NEURON_ONLY + GATEWAY_UNUSED]
        + ["--exclude-module=cortex.neuron", "--collect-submodules=cortex.gateway"],
    },
    "neuron": {
        "name": "helexa-neuron",
        "args": ["--collect-submodules=cortex.neuron", "--collect-data=cortex"],
    },
}


def ensure_pyinstaller() -> None:
    """Install PyInstaller from PyPI into this environment if it is not there."""
    if importlib.util.find_spec("PyInstaller") is None:
        print("installing PyInstaller from PyPI...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyinstaller"], check=True)


def build(target: str, version: str) -> Path:
    """Build one executable stamped with `version`; its path."""
    spec = TARGETS[target]
    dist, work = OUT / "dist", OUT / "pyinstaller" / target
    # The same file setuptools-scm writes at install time (gitignored): bundled as a module.
    write_version_file(ROOT / "cortex", version)
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--onefile",
        "--noconfirm",
        "--log-level=WARN",
        f"--name={spec['name']}",
        f"--distpath={dist}",
        f"--workpath={work}",
        f"--specpath={work}",
        f"--paths={ROOT}",
        "--collect-submodules=cortex.commands",
        *spec["args"],
        str(ROOT / "cortex.py"),
    ]
    subprocess.run(command, check=True, cwd=ROOT)
    return dist / spec["name"]


def main() -> None:
    """Build the requested executables and print where they are."""
    parser = argparse.ArgumentParser(description="Build one-file executables with PyInstaller.")
    parser.add_argument("target", choices=[*TARGETS, "all"])
    target = parser.parse_args().target
    ensure_pyinstaller()
    version = project_version()
    for name in TARGETS if target == "all" else [target]:
        path = build(name, version)
        size = path.stat().st_size / 2**20
        print(f"built {path} ({size:.1f} MiB, cortex {version})")


if __name__ == "__main__":
    main()
