"""The kernels compile for the GPU the project targets (sm_90) with no GPU at hand."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("triton")


def test_kernels_compile_for_sm90() -> None:
    # Outside the interpreter (which `triton.jit` consults when it decorates): a fresh process.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, without its warning
    run = subprocess.run(
        [sys.executable, "-m", "tests.kernels.compile_cuda", "90"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("compiled") == 13
