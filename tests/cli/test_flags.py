"""Every command has exactly the flags of the README's CLI section (plus --help)."""

from __future__ import annotations

import typer.main

from cortex.cli import app

FLAGS = {
    "serve": {
        "-c",
        "--config",
        "--listen",
        "--metrics-listen",
        "--neuron",
        "--local",
        "--no-local",
        "--models-dir",
    },
    "neuron": {"-c", "--config", "--listen", "--models-dir", "--device", "--preload"},
    "status": {"--gateway", "--json"},
    "load": {"MODEL", "--neuron", "--gateway", "--json"},
    "unload": {"MODEL", "--neuron", "--gateway", "--json"},
    "pin": {"MODEL", "--neuron", "--off", "--gateway", "--json"},
    "probe": {"--url", "--model", "--prompt", "--expect", "--timeout", "--json"},
    "acp": {"--gateway", "--model", "--api-key"},
    # Beyond the fleet commands: the quickstart's model download.
    "fetch-demo": {"--models-dir", "--wheel", "--json"},
    # And the fleet deploy (README, "Releases and deploys").
    "deploy": {"INVENTORY", "--channel", "--host", "--probe", "--no-probe", "--dry-run"},
}


def flags(command) -> set[str]:
    found = set()
    for param in command.params:
        if param.param_type_name == "argument":
            found.add(param.metavar or param.name.upper())
        else:
            found.update(param.opts + param.secondary_opts)
    return found - {"--help"}


def test_flags_match_the_design() -> None:
    root = typer.main.get_command(app)
    assert flags(root) == {"--version"}
    assert {name: flags(cmd) for name, cmd in root.commands.items()} == FLAGS


def test_repeatable_flags() -> None:
    root = typer.main.get_command(app)
    multiple = {
        (name, opt)
        for name, cmd in root.commands.items()
        for param in cmd.params
        if getattr(param, "multiple", False)
        for opt in param.opts
    }
    assert multiple == {
        ("serve", "--neuron"),
        ("serve", "--models-dir"),
        ("neuron", "--models-dir"),
        ("neuron", "--device"),
        ("deploy", "--host"),
        ("neuron", "--preload"),
    }
