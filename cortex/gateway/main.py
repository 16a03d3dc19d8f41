"""`cortex serve`: configuration, the two listeners, single-host mode and shutdown.

Configuration (README: "Configuring a fleet"): `--config`, `$CORTEX_CONFIG`, `/etc/cortex/cortex.toml`,
then the user config dir; flags override the file (`--listen`, `--metrics-listen`), and each
`--neuron URL` adds a neuron named after the URL's host (`host:port` if that name is taken).

Single-host mode (`--local`, and the default when there is no config file and no `--neuron`):
a `cortex neuron` child on a free loopback port, registered as neuron `local` (see
local_neuron.py). Logs go to stderr (`$CORTEX_LOG_LEVEL`, default INFO). SIGTERM/SIGINT/SIGHUP
stop the gateway: listeners close, background tasks stop, the local neuron (if any) is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from yarl import URL

from cortex.config import (
    CortexConfig,
    NeuronEntry,
    config_search_path,
    find_config,
    load_cortex_config,
    parse_listen,
)
from cortex.errors import ConfigError
from cortex.gateway.app import create_app, metrics_app, render_error
from cortex.gateway.local_neuron import LocalNeuron
from cortex.gateway.state import GATEWAY
from cortex.process import run, setup_logging
from cortex.web import ServerLimits, listen, make_runner

log = logging.getLogger("cortex.gateway")


def neuron_name(url: str, taken: set[str]) -> str:
    """A neuron's name from its URL: the host, or `host:port` when the host is taken."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"--neuron {url!r}: expected an http:// or https:// URL")
    name = parsed.host
    if name in taken:
        name = f"{parsed.host}:{parsed.port}"
    if name in taken:
        raise ConfigError(f"--neuron {url!r}: a neuron named {name!r} is already configured")
    return name


def _first_run_message(models_dirs: list[str]) -> str:
    searched = "\n".join(f"    {p}" for p in config_search_path("cortex.toml", "CORTEX_CONFIG"))
    dirs = ", ".join(models_dirs) or "none given (use --models-dir DIR)"
    return (
        "cortex: no cortex.toml found; looked for one in:\n"
        f"{searched}\n"
        "cortex: running single-host: starting a local neuron on loopback.\n"
        f"cortex: models are found in: {dirs}, and the Hugging Face cache "
        "(~/.cache/huggingface/hub).\n"
        + (
            ""
            if _has_models(models_dirs)
            else "cortex: to add a model, put its Hugging Face directory (config.json, "
            "*.safetensors, tokenizer files) or a .gguf file under a models dir, e.g. "
            "`cortex serve --models-dir ./models`;\n"
            "cortex: to get a small demo model (SmolLM2-135M-Instruct) there: "
            "`cortex fetch-demo --models-dir ./models`;\n"
        )
        + "cortex: to serve a fleet, write cortex.toml with [[neurons]] entries (or pass "
        "--neuron URL)."
    )


def _has_models(models_dirs: list[str]) -> bool:
    """Whether a models dir already holds something that looks like a model (then the
    first-run hints about adding one are noise)."""
    for directory in models_dirs:
        root = Path(directory)
        for pattern in ("*.gguf", "*/*.gguf", "*/config.json", "*/*/config.json"):
            if next(root.glob(pattern), None) is not None:
                return True
    return False


def run_serve(
    config_path: str | None,
    listen: str | None,
    metrics_listen: str | None,
    neuron_urls: list[str],
    local: bool | None,
    models_dirs: list[str],
) -> int:
    """Run the gateway until SIGTERM/SIGINT; returns the exit code."""
    path = find_config(config_path, "cortex.toml", "CORTEX_CONFIG")
    config = load_cortex_config(path)
    try:
        if listen:
            config.gateway.listen = parse_listen(listen)
        if metrics_listen:
            config.gateway.metrics_listen = parse_listen(metrics_listen)
    except ValueError as exc:
        raise ConfigError(f"--listen/--metrics-listen: {exc}") from None
    taken = {n.name for n in config.neurons}
    for url in neuron_urls:
        name = neuron_name(url, taken | {"local"})
        config.neurons.append(NeuronEntry(name=name, endpoint=url.rstrip("/")))
        taken.add(name)
    single_host = local if local is not None else (path is None and not neuron_urls)
    if not config.neurons and not single_host:
        raise ConfigError(
            f"{path or 'no cortex.toml'}: no neurons configured: add [[neurons]] or --neuron URL"
        )
    if single_host and path is None:
        print(_first_run_message(models_dirs), file=sys.stderr)
    setup_logging()
    return run(_serve(config, single_host, [os.path.abspath(d) for d in models_dirs]))


async def _serve(config: CortexConfig, single_host: bool, models_dirs: list[str]) -> int:
    child = await LocalNeuron.start(models_dirs) if single_host else None
    if child is not None:
        config.neurons.append(NeuronEntry(name="local", endpoint=child.url))
    app = create_app(config)
    limits = ServerLimits.of(config.gateway)
    runner = make_runner(app, limits, shutdown_timeout=5)
    metrics_runner: web.AppRunner | None = None
    try:
        await runner.setup()
        await listen(runner, config.gateway.listen, render_error)
        metrics_runner = make_runner(metrics_app(config, app[GATEWAY]), limits)
        await metrics_runner.setup()
        await listen(metrics_runner, config.gateway.metrics_listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGHUP too (the terminal closed): stop cleanly so the local neuron goes with us.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        fleet = app[GATEWAY].fleet
        log.info(
            "gateway listening on http://%s (metrics on http://%s/metrics); neurons: %s",
            config.gateway.listen,
            config.gateway.metrics_listen,
            ", ".join(f"{n.name} ({'up' if n.up else 'down'})" for n in fleet),
        )
        await stop.wait()
        log.info("stopping")
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        if child is not None:
            await child.stop()
    return 0
