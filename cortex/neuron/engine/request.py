"""RequestHandle: the asyncio side of one generation request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cortex.neuron.engine.outputs import StepOutput

_END = object()


class RequestHandle:
    """`async for out in handle` yields StepOutputs until one has a finish_reason.

    An error in the engine (a failed step, an unload, a shutdown) is raised from the iterator.
    `cancel()` ends the iteration at once and frees the request's KV blocks at the worker's
    next step. Use a handle only from the event loop that created it.
    """

    def __init__(
        self, model_id: str, prompt_tokens: int, on_cancel: Callable[[RequestHandle], None]
    ) -> None:
        self.model_id = model_id
        self.prompt_tokens = prompt_tokens
        self._on_cancel = on_cancel  # tells the owning worker to drop the request
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False  # no more items will be queued
        self._ended = False  # the consumer has seen the end
        #: The engine's Sequence; read and written on the worker thread only.
        self._seq = None

    @property
    def done(self) -> bool:
        return self._closed

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> StepOutput:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        assert isinstance(item, StepOutput)
        if item.finish_reason is not None:
            self._ended = True
        return item

    def cancel(self) -> None:
        """Stop generating: the iterator ends now, the worker drops the request next step."""
        if self._closed:
            return
        self._closed = True
        while not self._queue.empty():  # outputs not yet read are dropped
            self._queue.get_nowait()
        self._queue.put_nowait(_END)
        self._on_cancel(self)

    def deliver(self, item: StepOutput | BaseException) -> None:
        """Queue an output or error (called on the event loop by the worker)."""
        if self._closed:
            return
        if isinstance(item, BaseException) or item.finish_reason is not None:
            self._closed = True
        self._queue.put_nowait(item)
