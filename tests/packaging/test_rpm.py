"""The RPM specs parse (`rpmspec -P`) and build (`rpmbuild -bb`, through build/rpms.py).

Debian/Ubuntu get rpmspec and rpmbuild from the `rpm` package (`apt-get install rpm`); the tests
skip where they are missing. The RPM build packages build/pyz.py's cortex.pyz as both
executables: the specs do not care what the executable is, and the real ones (PyInstaller, with
torch for the neuron) take minutes to build.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

SPECS = ["cortex.spec", "helexa-neuron.spec"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

needs_rpmspec = pytest.mark.skipif(shutil.which("rpmspec") is None, reason="rpmspec missing")
needs_rpmbuild = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild missing")


@needs_rpmspec
@pytest.mark.parametrize("spec", SPECS)
def test_spec_parses_with_the_project_version(spec: str) -> None:
    done = subprocess.run(
        ["rpmspec", "-P", "--define", f"version {VERSION}", str(ROOT / "packaging" / spec)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"Version:        {VERSION}" in done.stdout
    assert "%config(noreplace)" in done.stdout


@needs_rpmspec
def test_spec_refuses_a_missing_version() -> None:
    done = subprocess.run(
        ["rpmspec", "-P", str(ROOT / "packaging" / "cortex.spec")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "version" in done.stderr


def rpm_query(rpm: Path, *args: str) -> str:
    done = subprocess.run(
        ["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_rpmbuild
def test_rpmbuild_builds_both_packages(tmp_path: Path, built_pyz: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "build" / "rpms.py"),
        "--cortex-exe",
        str(built_pyz),
        "--neuron-exe",
        str(built_pyz),
        "--topdir",
        str(tmp_path / "rpm"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rpms = [Path(line.removeprefix("built ")) for line in done.stdout.splitlines()]
    assert len(rpms) == 2, done.stdout
    cortex = next(p for p in rpms if p.name.startswith(f"cortex-{VERSION}-"))
    neuron = next(p for p in rpms if p.name.startswith(f"helexa-neuron-{VERSION}-"))
    assert rpm_query(cortex, "--qf", "%{VERSION}") == VERSION
    configs = rpm_query(cortex, "--configfiles").split()
    assert configs == ["/etc/cortex/cortex.toml", "/etc/cortex/models.toml"]
    listing = rpm_query(cortex, "-lv")
    assert "/usr/bin/cortex" in listing and "/usr/lib/systemd/system/cortex.service" in listing
    secret = next(line for line in listing.splitlines() if line.endswith("/etc/cortex/cortex.toml"))
    assert secret.split()[:4] == ["-rw-r-----", "1", "root", "cortex"]
    neuron_listing = rpm_query(neuron, "-lv")
    for path in ("/etc/cortex/neuron.toml", "/etc/cortex/helexa-neuron.env"):
        line = next(x for x in neuron_listing.splitlines() if x.endswith(path))
        assert line.split()[0] == "-rw-r-----" and line.split()[3].startswith("helexa-n")
    assert "/usr/lib/sysusers.d/helexa-neuron.conf" in neuron_listing
