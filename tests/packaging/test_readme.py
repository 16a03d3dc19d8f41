"""The README's examples are real: its TOML blocks load, its Python parses, its commands exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from cortex.commands.deploy import load_inventory
from cortex.config import load_cortex_config, load_models_config, load_neuron_config
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def test_toml_blocks_load_as_written(tmp_path: Path) -> None:
    named = {}
    for block in blocks("toml"):
        name = block.splitlines()[0].removeprefix("# ").strip()
        assert name in ("cortex.toml", "models.toml", "neuron.toml", "fleet.toml"), block[:40]
        (tmp_path / name).write_text(block, encoding="utf-8")
        named[name] = tomllib.loads(block)
    assert set(named) == {"cortex.toml", "models.toml", "neuron.toml", "fleet.toml"}
    cortex = load_cortex_config(tmp_path / "cortex.toml")
    assert [n.name for n in cortex.neurons] == ["beast", "spare"]
    assert cortex.models.resolve("qwen") == "Qwen/Qwen3-8B"
    assert load_models_config(tmp_path / "models.toml").models[0].memory == 18 * 2**30
    assert load_neuron_config(tmp_path / "neuron.toml").neuron.preload == ["Qwen/Qwen3-8B"]
    fleet = load_inventory(tmp_path / "fleet.toml")
    assert [(h.name, h.roles) for h in fleet.hosts] == [
        ("gw.internal", ["gateway"]),
        ("beast.internal", ["neuron"]),
    ]
    assert fleet.probe.expect == "paris" and fleet.probe.timeout == 15 * 60


def test_python_blocks_compile() -> None:
    for block in blocks("python"):
        compile(block, "README.md", "exec")


def test_quickstart_is_two_commands_with_the_ci_test_command() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    first, second = blocks("sh")[:2]
    assert first in quickstart and second in quickstart
    assert len(first.strip().splitlines()) == 1 and len(second.strip().splitlines()) == 1
    assert "cortex fetch-demo --models-dir ./models && cortex serve --models-dir ./models" in first
    assert second.strip().endswith("bash .ci/test-command")


def test_build_scripts_named_in_the_readme_exist() -> None:
    for script in set(re.findall(r"python3? (build/\w+\.py)", README)):
        assert (ROOT / script).is_file(), script
    assert (ROOT / "bench" / "cli_startup.py").is_file()
