"""`cortex neuron` refuses a bad configuration with exit code 2 and a message naming the problem
(before it loads anything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cortex", "neuron", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("toml", "args", "message"),
    [
        (None, ["--listen", "nonsense"], "--listen"),
        ("[neuron]\nbogus = 1\n", [], "key 'neuron.bogus': unknown key"),
        ("[engine]\nkv_cache_memory = 2.0\n", [], "engine.kv_cache_memory"),
    ],
)
def test_bad_configuration_exits_2(
    tmp_path: Path, toml: str | None, args: list[str], message: str
) -> None:
    if toml is not None:
        config = tmp_path / "neuron.toml"
        config.write_text(toml)
        args = ["--config", str(config), *args]
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
