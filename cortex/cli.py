"""The `cortex` command line (DESIGN.md section 7).

Each command imports what it needs lazily, so `cortex --help` and the client commands never
import torch or the servers.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cortex import __version__
from cortex.errors import EXIT_USAGE, CortexError

app = typer.Typer(
    name="cortex",
    help="Self-hosted LLM serving: a gateway (serve) over a fleet of GPU hosts (neuron).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
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
    print(f"cortex: error: {error.message}", file=sys.stderr)
    return typer.Exit(error.exit_code)


@app.command()
def serve(
    config: Annotated[str | None, typer.Option("-c", "--config", help="cortex.toml")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port for the API")] = None,
    metrics_listen: Annotated[str | None, typer.Option(help="host:port for /metrics")] = None,
    neuron: Annotated[list[str] | None, typer.Option(help="Add a neuron by URL")] = None,
    local: Annotated[
        bool | None, typer.Option("--local/--no-local", help="Start a local neuron child")
    ] = None,
    models_dir: Annotated[
        list[str] | None, typer.Option(help="Models directory for the local neuron")
    ] = None,
) -> None:
    """Run the gateway: one OpenAI + Anthropic API over the whole fleet."""
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
    config: Annotated[str | None, typer.Option("-c", "--config", help="neuron.toml")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port to listen on")] = None,
    models_dir: Annotated[list[str] | None, typer.Option(help="Where models are found")] = None,
    device: Annotated[list[str] | None, typer.Option(help="Device to use (cuda:0, cpu)")] = None,
    preload: Annotated[list[str] | None, typer.Option(help="Model id to load at start")] = None,
) -> None:
    """Run the node daemon on a GPU host: model lifecycle and the OpenAI API."""
    from cortex.neuron.main import run_neuron

    try:
        code = run_neuron(
            config_path=config,
            listen=listen,
            models_dirs=models_dir or [],
            devices=device or [],
            preload=preload or [],
        )
    except CortexError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except CortexError as exc:
        print(f"cortex: error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit as exc:
        # click reports usage errors as exit 2 already; keep every other code.
        raise exc
    except Exception as exc:  # last resort: never a traceback for a user
        print(f"cortex: unexpected error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE if isinstance(exc, ValueError) else 1)
