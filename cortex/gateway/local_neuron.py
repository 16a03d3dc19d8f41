"""Single-host mode: the gateway starts a `cortex neuron` child on a free loopback port.

The child inherits stderr (its logs interleave with the gateway's), gets the `--models-dir`
flags of `cortex serve`, and is stopped with SIGTERM (then SIGKILL after its drain time) when
the gateway exits. The gateway does not wait for it to come up: the poller marks it up once it
answers `/health`, and requests meanwhile get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys

log = logging.getLogger("cortex.gateway")
STOP_GRACE_S = 40.0


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalNeuron:
    """A neuron child process on loopback."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, models_dirs: list[str]) -> LocalNeuron:
        """Start `python -m cortex neuron --listen 127.0.0.1:P --models-dir ...`."""
        port = free_loopback_port()
        args = [sys.executable, "-m", "cortex", "neuron", "--listen", f"127.0.0.1:{port}"]
        for directory in models_dirs:
            args += ["--models-dir", directory]
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL)
        log.info("started local neuron (pid %d) on 127.0.0.1:%d", proc.pid, port)
        return cls(proc, port)

    async def stop(self) -> None:
        """SIGTERM, wait for its drain, then SIGKILL."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
