"""Single-host mode: the gateway starts a `cortex neuron` child on a free loopback port.

The child is this same program: `python -m cortex neuron`, or, inside a PyInstaller one-file
executable (`sys.frozen`, where there is no `-m`), the executable itself with `neuron` as its
first argument. The child inherits stderr (its logs interleave with the gateway's), gets the
`--models-dir` flags of `cortex serve`, and is stopped with SIGTERM (then SIGKILL after its drain
time) when the gateway exits. On Linux the child also gets SIGTERM from the kernel when the
gateway dies without stopping it (SIGKILL, a crash): `PR_SET_PDEATHSIG`, so no neuron is left
listening behind a dead gateway. The gateway does not wait for it to come up: the poller marks it up
once it answers `/health`, and requests meanwhile get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
import sys

log = logging.getLogger("cortex.gateway")
STOP_GRACE_S = 40.0


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def neuron_command() -> list[str]:
    """The argv that runs `cortex neuron` with this interpreter or frozen executable."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "neuron"]
    return [sys.executable, "-m", "cortex", "neuron"]


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class LocalNeuron:
    """A neuron child process on loopback."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, models_dirs: list[str]) -> LocalNeuron:
        """Start `cortex neuron --listen 127.0.0.1:P --models-dir ...` (see `neuron_command`)."""
        port = free_loopback_port()
        args = [*neuron_command(), "--listen", f"127.0.0.1:{port}"]
        for directory in models_dirs:
            args += ["--models-dir", directory]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
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
