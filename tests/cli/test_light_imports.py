"""The client side of the program (the CLI and its config) never imports torch (nor numpy,
tokenizers, jinja2). The gateway process is checked in tests/gateway/test_serve.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "tokenizers", "jinja2")


@pytest.mark.parametrize("module", ["cortex.cli", "cortex.config"])
def test_module_does_not_import_heavy_packages(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    code = f"import sys, {module}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "", f"{module} imports {run.stdout.strip()}"
