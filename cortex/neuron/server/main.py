"""`cortex neuron`: configuration, logging, the server loop and the SIGTERM drain.

Configuration: neuron.toml (`--config`, `$CORTEX_NEURON_CONFIG`, `/etc/cortex/neuron.toml`, the
user config dir), then command-line flags; a list flag given on the command line replaces the
file's list. Logs go to stderr (`$CORTEX_LOG_LEVEL`, default INFO), one line per request.

SIGTERM (or SIGINT): the neuron starts draining. The socket stays open and new requests get 503
`shutting_down` with Retry-After (`/health` says `draining`); requests in flight may finish for
`drain_timeout` seconds, then the models are unloaded (which ends the rest with 503 /
an error event), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from cortex.config import find_config, load_neuron_config, parse_listen, split_listen
from cortex.errors import ConfigError
from cortex.process import run, setup_logging
from cortex.web import ServerLimits, listen, make_runner

log = logging.getLogger("cortex.neuron")
CANCEL_GRACE_SECONDS = 5.0


def _public_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_neuron(
    config_path: str | None,
    listen: str | None,
    models_dirs: list[str],
    devices: list[str],
    preload: list[str],
) -> int:
    """Run the neuron until SIGTERM/SIGINT; returns the exit code."""
    config = load_neuron_config(find_config(config_path, "neuron.toml", "CORTEX_NEURON_CONFIG"))
    section = config.neuron
    try:
        if listen:
            section.listen = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    if models_dirs:
        section.models_dirs = [os.path.abspath(os.path.expanduser(d)) for d in models_dirs]
    if devices:
        section.devices = list(devices)
    if preload:
        section.preload = list(preload)
    setup_logging()
    return run(_serve(config))


async def _serve(config) -> int:
    from cortex.neuron.server.app import create_app
    from cortex.neuron.server.state import STATE

    host, port = split_listen(config.neuron.listen)
    app = create_app(config, public_url=_public_url(host, port))
    state = app[STATE]
    limits = ServerLimits.of(config.neuron)
    runner = make_runner(app, limits, shutdown_timeout=CANCEL_GRACE_SECONDS)
    await runner.setup()
    try:
        await listen(runner, config.neuron.listen)
    except ConfigError:
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "neuron %s listening on %s (devices: %s; models dirs: %s)",
        state.node,
        config.neuron.listen,
        ", ".join(state.devices),
        ", ".join(config.neuron.models_dirs) or "none",
    )
    await stop.wait()
    state.draining = True
    log.info("draining: %d requests in flight", state.in_flight.count)
    if not await state.in_flight.wait_idle(float(config.neuron.drain_timeout)):
        # Unloading fails the remaining requests with 503 (an error event in a stream), so
        # every client gets a clean answer before the server closes.
        log.warning("drain timeout: ending %d requests", state.in_flight.count)
        await state.manager.unload_all()
        await state.in_flight.wait_idle(CANCEL_GRACE_SECONDS)
    await runner.cleanup()
    log.info("stopped")
    return 0
