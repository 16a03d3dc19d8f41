"""`cortex deploy` against install roots, with the real package tools.

The project's RPMs are built from the real specs (build/rpms.py) around a stand-in executable,
published with createrepo_c, and installed and upgraded by the real dnf and rpm into one
install root per host (`installroot` in the inventory). The "ssh" of the inventory is a local
script that runs the host's commands here, with a `systemctl` stand-in that logs its calls; the
probe goes to a real neuron serving stories260k. A stand-in base package gives each root what
the specs require (systemd, shadow-utils) and a /bin/sh (busybox) for their scriptlets, which
rpm runs chrooted into the root.

The tests run in file order on one fleet: first install, already current, an upgrade after a
newer prerelease lands in the repository, then a broken repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.packaging.rpmtools import build_rpms, needs
from tests.support.cli_run import CliResult, run_cli
from tests.support.neuron_proc import start_neuron

# busybox: Debian's busybox-static (a static /bin/sh for the roots).
pytestmark = needs("rpmbuild", "createrepo_c", "dnf", "busybox")

FIRST, SECOND = "0.2.1.dev1+gaaaaaaa", "0.2.1.dev2+gbbbbbbb"
FIRST_RPM, SECOND_RPM = "0.2.1~dev1+gaaaaaaa-1", "0.2.1~dev2+gbbbbbbb-1"

BASE_SPEC = """\
Name: host-base
Version: 1
Release: 1
Summary: stand-in base system for the deploy tests
License: MIT
Provides: systemd shadow-utils
AutoReqProv: no
%description
What the cortex specs need from a host: systemd and shadow-utils (names only), /bin/sh.
%install
install -D -m 0755 {busybox} %{{buildroot}}/bin/sh
%files
/bin/sh
"""

SSH = """\
#!/bin/sh
# "ssh HOST sh -s": run here, with the stand-ins first on PATH; log each script.
host=$1; shift
script=$(cat)
printf '%s\\n' "--- $host" "$script" >> {log}
export DEPLOY_HOST=$host PATH={standins}:$PATH
printf '%s\\n' "$script" | "$@"
"""

SYSTEMCTL = """\
#!/bin/sh
echo "$DEPLOY_HOST systemctl $*" >> {log}
"""


@dataclass
class Fleet:
    """Two hosts (gateway gw1, neuron gpu1) in install roots, the repositories, the logs."""

    root: Path
    inventory: Path
    unstable: Path
    stub: Path

    def deploy(self, *args: str) -> CliResult:
        return run_cli("deploy", str(self.inventory), *args, timeout=600)

    def installed(self, host: str, package: str) -> str:
        done = subprocess.run(
            ["rpm", f"--root={self.root / host}", "-q", "--qf", "%{VERSION}-%{RELEASE}", package],
            capture_output=True,
            text=True,
        )
        return done.stdout if done.returncode == 0 else ""

    def scripts(self) -> str:
        return (self.root / "ssh.log").read_text() if (self.root / "ssh.log").exists() else ""

    def systemctl(self) -> list[str]:
        log = self.root / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def publish(self, version: str) -> None:
        """Build both packages at `version` and put them into the unstable repository."""
        topdir = self.root / f"rpmbuild-{version}"
        for rpm in build_rpms(topdir, self.stub, self.stub, version=version):
            shutil.copy2(rpm, self.unstable)
        createrepo(self.unstable)


def createrepo(folder: Path) -> None:
    subprocess.run(["createrepo_c", "-q", "--update", str(folder)], check=True, timeout=120)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    stable, unstable = root / "stable", root / "unstable"
    stable.mkdir()
    unstable.mkdir()
    stub = root / "stub"
    stub.write_text("#!/bin/sh\necho stand-in\n")
    stub.chmod(0o755)
    topdir = root / "rpmbuild-base"
    (root / "host-base.spec").write_text(BASE_SPEC.format(busybox=shutil.which("busybox")))
    subprocess.run(
        ["rpmbuild", "-bb", "--define", f"_topdir {topdir}", str(root / "host-base.spec")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for rpm in (topdir / "RPMS").rglob("*.rpm"):
        shutil.copy2(rpm, unstable)
    createrepo(stable)  # stable: a valid repository with nothing newer in it
    standins = root / "standins"
    standins.mkdir()
    (standins / "systemctl").write_text(SYSTEMCTL.format(log=root / "systemctl.log"))
    ssh = root / "ssh"
    ssh.write_text(SSH.format(log=root / "ssh.log", standins=standins))
    for script in (ssh, standins / "systemctl"):
        script.chmod(0o755)
    with start_neuron(FIXTURES) as neuron:
        inventory = root / "fleet.toml"
        inventory.write_text(
            f"""\
channel = "unstable"
ssh = ["{ssh}"]

[repository]
stable = "file://{stable}"
unstable = "file://{unstable}"

[probe]
model = "stories260k"
prompt = "Once upon a time"
expect = "Lily"

[[hosts]]
name = "gw1"
roles = ["gateway"]
installroot = "{root / "gw1"}"
probe_url = "{neuron.url}"

[[hosts]]
name = "gpu1"
roles = ["neuron"]
installroot = "{root / "gpu1"}"
probe_url = "{neuron.url}"
"""
        )
        fleet = Fleet(root, inventory, unstable, stub)
        fleet.publish(FIRST)
        yield fleet


def test_dry_run_contacts_no_host(fleet: Fleet) -> None:
    result = fleet.deploy("--dry-run")
    assert result.code == 0, result.stderr
    assert fleet.scripts() == "" and not (fleet.root / "gw1").exists()
    gw1 = [line for line in result.stdout.splitlines() if line.startswith("[gw1] ")]
    text = "\n".join(gw1)
    assert f"rpm --root={fleet.root / 'gw1'} -q" in text
    assert f"dnf --installroot={fleet.root / 'gw1'} check-update --refresh cortex" in text
    assert "systemctl enable --now cortex.service" in text
    assert "cortex probe --url" in text and "--expect Lily" in text
    assert any(
        line.startswith("[gpu1] ") and "helexa-neuron" in line
        for line in result.stdout.splitlines()
    )


def test_first_install(fleet: Fleet) -> None:
    result = fleet.deploy()
    assert result.code == 0, result.stdout + result.stderr
    # Quiet on success: one line per host.
    gpu1, gw1 = sorted(result.stdout.splitlines())
    assert re.fullmatch(
        rf"\[gw1\] ok: cortex not installed -> {re.escape(FIRST_RPM)}; probe ok \(\S+s\)", gw1
    )
    assert gpu1.startswith(f"[gpu1] ok: helexa-neuron not installed -> {FIRST_RPM}; probe ok")
    assert fleet.installed("gw1", "cortex") == FIRST_RPM
    assert fleet.installed("gpu1", "helexa-neuron") == FIRST_RPM
    assert fleet.installed("gw1", "helexa-neuron") == ""
    repo = (fleet.root / "gw1" / "etc/yum.repos.d/cortex.repo").read_text()
    assert "[cortex-unstable]" in repo and repo.count("enabled=1") == 2
    # No unit file before the first install: nothing to stop, then the unit is started.
    assert sorted(fleet.systemctl()) == [
        "gpu1 systemctl enable --now helexa-neuron.service",
        "gw1 systemctl enable --now cortex.service",
    ]


def test_already_current(fleet: Fleet) -> None:
    scripts_before, systemctl_before = len(fleet.scripts()), fleet.systemctl()
    result = fleet.deploy()
    assert result.code == 0, result.stdout + result.stderr
    assert f"[gw1] ok: cortex {FIRST_RPM} already current; probe ok" in result.stdout
    sent = fleet.scripts()[scripts_before:]
    assert "check-update --refresh cortex" in sent
    assert " install " not in sent and " upgrade " not in sent
    assert fleet.systemctl() == systemctl_before


def test_upgrade_when_a_newer_prerelease_lands(fleet: Fleet) -> None:
    fleet.publish(SECOND)
    before = len(fleet.systemctl())
    result = fleet.deploy("--host", "gw1")
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"[gw1] ok: cortex {FIRST_RPM} -> {SECOND_RPM}; probe ok")
    assert "[gpu1]" not in result.stdout
    assert fleet.installed("gw1", "cortex") == SECOND_RPM
    assert fleet.installed("gpu1", "helexa-neuron") == FIRST_RPM
    # The unit file exists now: stopped before the upgrade, started after it.
    assert fleet.systemctl()[before:] == [
        "gw1 systemctl stop cortex.service",
        "gw1 systemctl enable --now cortex.service",
    ]


def test_broken_repository_shows_the_real_error(fleet: Fleet) -> None:
    repomd = fleet.unstable / "repodata" / "repomd.xml"
    good = repomd.read_bytes()
    repomd.write_text("this is not a repository\n")
    try:
        result = fleet.deploy("--no-probe")
    finally:
        repomd.write_bytes(good)
    assert result.code == 2, result.stdout + result.stderr  # both hosts failed
    for host in ("gw1", "gpu1"):
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"[{host}] ")]
        assert lines[0] == f"[{host}] FAILED: install failed (exit 1)", lines
        # dnf's own words, each line under the host's prefix.
        assert any("repomd.xml" in line or "metadata" in line for line in lines[1:]), lines
    assert "deploy failed on 2 of 2 hosts" in result.stderr


def test_inventory_errors_name_the_key(tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(
        '[repository]\nstable = "file:///x"\n[[hosts]]\nname = "a"\nroles = ["db"]\n'
    )
    result = run_cli("deploy", str(inventory))
    assert result.code == 2
    assert "hosts[0].roles" in result.stderr and "'db' is not one of" in result.stderr
    unstable = run_cli("deploy", str(inventory).replace("fleet", "none"))
    assert unstable.code == 2 and "file not found" in unstable.stderr
