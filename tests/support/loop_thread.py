"""Serve aiohttp apps on loopback in tests: on the running event loop, or on a background one.

Async tests (tests/gateway) start apps on their own loop with `start_app`, or for a block with
`served`. Synchronous clients (the `anthropic` SDK, the Claude Code CLI, `cortex` subprocesses)
need the servers to run while the test thread blocks, so they run them on a `LoopThread`:

    with LoopThread() as loop:
        url = loop.serve(app)                      # an aiohttp app
        neurons = loop.enter(fleet(fake))          # or any async context manager
        ... synchronous HTTP against url ...
    # everything entered is closed, in reverse order, on the loop before it stops
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


async def start_app(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start `app` on `host:port` (0: a free port) on the running loop; its runner (call
    `runner.cleanup()` to stop it) and the port it got."""
    # handler_cancellation: a client that disconnects cancels the handler, as on the real
    # servers (fakes count disconnects that way). A short shutdown_timeout keeps a stop that
    # leaves a stalled stream behind from waiting the default minute.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]


@contextlib.asynccontextmanager
async def served(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` on a free port for the block; yield its base URL."""
    runner, port = await start_app(app, host)
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class LoopThread:
    """An event loop on a daemon thread; what is entered on it is closed on exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter an async context manager on the loop (exited with the loop); its value."""
        return self.run(self._stack.enter_async_context(manager))

    def serve(self, app: web.Application) -> str:
        """Serve `app` on a free loopback port until exit; its base URL."""
        return self.enter(served(app))
