"""What the RPM, version and deploy tests share: build/common.py, and build/rpms.py runs.

Debian/Ubuntu get rpm, rpmbuild and rpmspec from the `rpm` package, dnf from `dnf` and
createrepo_c from `createrepo-c` (.ci/install-tools installs them); `needs(tool, ...)` skips a
test where one is missing, saying which.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT


def needs(*tools: str) -> pytest.MarkDecorator:
    """Skip unless every tool is on PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"{', '.join(missing)} missing (bash .ci/install-tools installs it)"
    )


@cache
def build_common() -> ModuleType:
    """build/common.py, imported from its path (build/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "cortex_build_common", ROOT / "build" / "common.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_rpms(
    topdir: Path,
    cortex_exe: Path,
    neuron_exe: Path,
    *,
    version: str | None = None,
    source: bool = False,
) -> list[Path]:
    """Run build/rpms.py (stamped with `version` when given, else git's); the RPMs it built."""
    env = dict(os.environ)
    env.pop("SETUPTOOLS_SCM_PRETEND_VERSION", None)
    if version is not None:
        env["SETUPTOOLS_SCM_PRETEND_VERSION"] = version
    command = [sys.executable, str(ROOT / "build" / "rpms.py"), "--topdir", str(topdir)]
    command += ["--cortex-exe", str(cortex_exe), "--neuron-exe", str(neuron_exe)]
    command += ["--source"] if source else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return [Path(line.removeprefix("built ")) for line in done.stdout.splitlines()]


def rpm_query(rpm: Path, *args: str) -> str:
    """`rpm -qp ARGS rpm`'s output."""
    done = subprocess.run(
        ["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
