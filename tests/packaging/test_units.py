"""The systemd units: hardened as promised, and clean under `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGING = ROOT / "packaging"
UNITS = {"cortex.service": "/usr/bin/cortex", "helexa-neuron.service": "/usr/bin/helexa-neuron"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "Restart": "on-failure",
}


def service_section(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in unit files
    parser.read(PACKAGING / name)
    return parser["Service"]


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_hardened(name: str) -> None:
    service = service_section(name)
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    user = name.removesuffix(".service")
    assert service["User"] == user and service["StateDirectory"] == user
    assert service["ExecStart"].startswith(UNITS[name] + " ")
    assert "TimeoutStopSec" in service and "TimeoutStartSec" in service


def test_neuron_start_timeout_allows_preloading() -> None:
    assert service_section("helexa-neuron.service")["TimeoutStartSec"] == "30min"


@pytest.mark.parametrize("name", UNITS)
def test_sysusers_entry_matches_the_unit(name: str) -> None:
    user = name.removesuffix(".service")
    lines = (PACKAGING / f"{user}.sysusers").read_text().splitlines()
    entries = [line.split()[:2] for line in lines if line and not line.startswith("#")]
    assert entries == [["u", user]]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at a stand-in executable.
    units = []
    for name, program in UNITS.items():
        stand_in = tmp_path / Path(program).name
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
        unit = tmp_path / name
        unit.write_text((PACKAGING / name).read_text().replace(program, str(stand_in)))
        units.append(str(unit))
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in done.stderr.splitlines() if str(tmp_path) in line]
    assert done.returncode == 0, done.stderr
    assert problems == []
