"""Build the RPMs `cortex` (gateway + CLI) and `helexa-neuron` with rpmbuild.

    python build/executables.py all && python build/rpms.py
    python build/rpms.py --only cortex --cortex-exe build/out/cortex.pyz   # any executable
    python build/rpms.py --source          # also the source RPMs (releases)

Each spec (packaging/*.spec) installs one prebuilt executable, its systemd unit, its sysusers.d
entry and its configs; this script puts those files into a private rpmbuild tree under
build/out/rpm, stamps the version from git (build/common.py: `--define "version X"`, the PEP 440
version in RPM form, e.g. 0.2.1~dev3+g<sha> for 0.2.1.dev3+g<sha>) and runs `rpmbuild -bb`
(`-ba` with `--source`: the source RPM carries the spec and those files, so `rpmbuild --rebuild`
makes the same package). The executables default to build/executables.py's output;
`--cortex-exe` and `--neuron-exe` take any other file (the tests package build/pyz.py's
cortex.pyz, or a stand-in script, which are quicker to build). Needs `rpmbuild` (Fedora/RHEL:
rpm-build; Debian/Ubuntu: rpm). Prints the path of each RPM.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from common import OUT, PACKAGING, ROOT, project_version, rpm_version

PACKAGES = {
    "cortex": {
        "exe": OUT / "dist" / "cortex",
        "sources": ["cortex.service", "cortex.sysusers", "cortex.toml", "models.toml"],
    },
    "helexa-neuron": {
        "exe": OUT / "dist" / "helexa-neuron",
        "sources": [
            "helexa-neuron.service",
            "helexa-neuron.sysusers",
            "neuron.toml",
            "helexa-neuron.env",
        ],
    },
}


def build_rpm(name: str, exe: Path, topdir: Path, version: str, source: bool) -> list[Path]:
    """rpmbuild one package at RPM version `version` (and its source RPM); the RPMs it wrote."""
    if not exe.is_file():
        raise SystemExit(f"{exe}: no such executable; run `python build/executables.py` first")
    sources = topdir / "SOURCES"
    sources.mkdir(parents=True, exist_ok=True)
    shutil.copy2(exe, sources / name)
    for file in PACKAGES[name]["sources"]:
        shutil.copy2(PACKAGING / file, sources / file)
    shutil.copy2(ROOT / "README.md", sources / "README.md")
    command = [
        "rpmbuild",
        "-ba" if source else "-bb",
        "--define",
        f"_topdir {topdir}",
        "--define",
        f"version {version}",
        str(PACKAGING / f"{name}.spec"),
    ]
    subprocess.run(command, check=True, stdout=sys.stderr)
    return sorted(
        p
        for folder in ("RPMS", "SRPMS")
        for p in (topdir / folder).rglob(f"{name}-{version}-*.rpm")
    )


def main() -> None:
    """Build the requested RPMs and print their paths."""
    parser = argparse.ArgumentParser(description="Build the cortex and helexa-neuron RPMs.")
    parser.add_argument("--only", choices=list(PACKAGES))
    parser.add_argument("--cortex-exe", type=Path, default=PACKAGES["cortex"]["exe"])
    parser.add_argument("--neuron-exe", type=Path, default=PACKAGES["helexa-neuron"]["exe"])
    parser.add_argument("--topdir", type=Path, default=OUT / "rpm")
    parser.add_argument("--source", action="store_true", help="also build the source RPMs")
    args = parser.parse_args()
    if shutil.which("rpmbuild") is None:
        raise SystemExit("rpmbuild not found: install rpm-build (Fedora/RHEL) or rpm (Debian)")
    version = rpm_version(project_version())
    exes = {"cortex": args.cortex_exe, "helexa-neuron": args.neuron_exe}
    for name in [args.only] if args.only else list(PACKAGES):
        for rpm in build_rpm(
            name, exes[name].resolve(), args.topdir.resolve(), version, args.source
        ):
            print(f"built {rpm}")


if __name__ == "__main__":
    main()
