"""The RPM specs parse (`rpmspec -P`) and build (`rpmbuild -ba`, through build/rpms.py).

The tests skip where rpmspec or rpmbuild are missing (tests/packaging/rpmtools.py). The RPM
build packages build/pyz.py's cortex.pyz as both executables: the specs do not care what the
executable is, and the real ones (PyInstaller, with torch for the neuron) take minutes to build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.packaging.rpmtools import build_common, build_rpms, needs, rpm_query

SPECS = ["cortex.spec", "helexa-neuron.spec"]
# The version of this checkout, as the RPMs carry it (0.2.1.dev3+g<sha>: 0.2.1~dev3+g<sha>).
VERSION = build_common().rpm_version(build_common().project_version())

needs_rpmspec = needs("rpmspec")
needs_rpmbuild = needs("rpmbuild")


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


@needs_rpmbuild
def test_rpmbuild_builds_both_packages(tmp_path: Path, built_pyz: Path) -> None:
    rpms = build_rpms(tmp_path / "rpm", built_pyz, built_pyz, source=True)
    assert sorted(p.name.endswith(".src.rpm") for p in rpms) == [False, False, True, True], rpms
    cortex = next(p for p in rpms if p.name.startswith(f"cortex-{VERSION}-1"))
    neuron = next(p for p in rpms if p.name.startswith(f"helexa-neuron-{VERSION}-1"))
    assert not cortex.name.endswith(".src.rpm") and not neuron.name.endswith(".src.rpm")
    assert rpm_query(cortex, "--qf", "%{VERSION}-%{RELEASE}").startswith(f"{VERSION}-1")
    source = next(p for p in rpms if p.name.startswith("cortex-") and p.name.endswith(".src.rpm"))
    assert "cortex.spec" in rpm_query(source, "-l").split()
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
