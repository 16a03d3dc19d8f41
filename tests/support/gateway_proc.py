"""Start a real `cortex serve` subprocess on free loopback ports (for any test area).

    proc = start_gateway(f'[[neurons]]\\nname = "n1"\\nendpoint = "{neuron.url}"\\n')
    ... HTTP against proc.url (API) and proc.metrics_url (Prometheus text) ...
    proc.stop()

`config_text` is written as cortex.toml (and `models_text`, if given, as models.toml beside it,
named by `models_config`); `args` are extra `cortex serve` flags (e.g. `["--neuron", url]`);
with neither a config nor `--neuron` the gateway runs single-host and starts its own neuron.
The child's stderr goes to a file (`proc.log()`); a gateway that exits before answering
`/health` raises with the log's tail. `gateway_proc_for(fake_neuron)` runs one in front of a
fake neuron.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.support.fake_neuron import FakeNeuron, fleet
from tests.support.loop_thread import LoopThread
from tests.support.neuron_proc import healthy, stop_process

START_TIMEOUT = 60.0


@dataclass
class GatewayProc:
    """A running gateway: API and metrics URLs, the process, its log and config dir."""

    url: str
    metrics_url: str
    proc: subprocess.Popen
    log_path: Path
    config_dir: Path
    _log_file: object = field(repr=False, default=None)

    def log(self) -> str:
        """Everything the gateway logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in `timeout` seconds."""
        return stop_process(self.proc, self._log_file, timeout)


def start_gateway(
    config_text: str | None = None,
    args: list[str] | None = None,
    *,
    models_text: str | None = None,
    env: dict[str, str] | None = None,
) -> GatewayProc:
    """Run `python -m cortex serve [-c cortex.toml] --listen ... --metrics-listen ... [args]`
    and wait until `/health` answers. `CORTEX_*` variables of this process are not passed on;
    `env` entries are added."""
    port, metrics_port = free_port(), free_port()
    config_dir = Path(tempfile.mkdtemp(prefix="cortex-gw-"))
    command = [sys.executable, "-m", "cortex", "serve"]
    if config_text is not None:
        (config_dir / "cortex.toml").write_text(config_text, encoding="utf-8")
        command += ["--config", str(config_dir / "cortex.toml")]
    if models_text is not None:
        (config_dir / "models.toml").write_text(models_text, encoding="utf-8")
    command += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    command += args or []
    log_path = config_dir / "gateway.log"
    log_file = log_path.open("w", encoding="utf-8")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    # No user config dir leaking in: an empty XDG config home.
    child_env.update({"PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": str(config_dir / "xdg")})
    child_env.update(env or {})
    proc = subprocess.Popen(
        command, cwd=ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    gateway = GatewayProc(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        proc,
        log_path,
        config_dir,
        log_file,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gateway.log()[-4000:]}")
        if healthy(gateway.url):
            return gateway
        time.sleep(0.05)
    gateway.stop(5)
    raise RuntimeError(
        f"gateway did not answer /health in {START_TIMEOUT}s:\n{gateway.log()[-4000:]}"
    )


@contextlib.contextmanager
def gateway_proc_for(neuron: FakeNeuron, gateway_toml: str = "") -> Iterator[GatewayProc]:
    """A fake neuron on a background loop and a real `cortex serve` in front of it, configured
    with `gateway_toml` (e.g. a `[gateway]` table) and the neuron as its only `[[neurons]]`."""
    with LoopThread() as loop:
        loop.enter(fleet(neuron))
        entry = f'\n[[neurons]]\nname = "{neuron.name}"\nendpoint = "{neuron.url}"\n'
        gateway = start_gateway(gateway_toml + entry)
        try:
            yield gateway
        finally:
            gateway.stop()
