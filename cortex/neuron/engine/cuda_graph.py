"""Decode steps replayed as captured CUDA graphs, per batch-size bucket, at the cost of the live
context.

Every graph reads the same static input buffers (ids, positions, slots, block tables, context
lengths) and the graphs share one memory pool. A step copies its inputs into the first `n` rows,
pads the rest of the bucket with rows that write to the runner's scratch block, replays, and
returns the first `n` rows of the output. Sampling runs after the graph on the same stream, so
nothing here syncs with the host.

What a replay costs follows the live context, never max_context:
- With the Triton kernels (`attention.reads_block_tables`), the block tables and context lengths
  are inputs the captured kernel reads at every replay, and it reads K/V only up to each
  sequence's length: one graph per batch bucket serves every context, captured at load. The
  table buffer is as wide as the longest context (a few KiB of ints); a step writes only its
  live entries and the kernel reads no others.
- On the SDPA path (no Triton, or `CORTEX_ATTENTION=sdpa`) decode gathers every position the
  tables span, so graphs are bucketed by table width as well (`width_buckets`: powers of two of
  blocks, then the longest context) and each is captured the first time a step needs it: a step
  at context 300 with 16-token blocks replays a 32-block (512-position) graph.
Table entries past a sequence's own blocks keep what an earlier step left there: always a real
block or the scratch block, and masked (SDPA) or never read (kernels).

Ownership: a model's graphs live on its device's worker thread (engine/worker.py sets the device
there) and are captured on it, on that device's side stream, with
`capture_error_mode="thread_local"`, so another device's thread may allocate and launch while
this one captures. The captures on one device share one side stream for the process: cuBLAS
keeps a workspace for each stream it has run on, which `torch.cuda.empty_cache` does not free, so
a new stream per capture would grow device memory with every model load.

A capture that fails is an error in the log and in the model's `/health` entry (`graphs`:
"failed: <why>", see `state`); the model decodes eagerly from then on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from cortex.errors import printable
from cortex.neuron.models.architectures import CausalLM
from cortex.neuron.models.attention import AttentionMetadata, reads_block_tables

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 32 and of 16 beyond, below `max_batch`, then
    `max_batch` itself: 1, 2, 4, 8, 16, 24, 32, 48, 64, ... (a batch pads to the next one)."""
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + (8 if sizes[-1] < 32 else 16))
    return sorted({s for s in sizes if s < max_batch} | {max_batch})


def width_buckets(max_blocks: int) -> list[int]:
    """Block-table widths of the SDPA path's graphs: 1, 2, 4, ... below `max_blocks`, then
    `max_blocks` (a step's table pads to the next one, so it gathers at most twice its context)."""
    widths = [1]
    while widths[-1] * 2 < max_blocks:
        widths.append(widths[-1] * 2)
    return sorted({w for w in widths if w < max_blocks} | {max_blocks})


def bucket(n: int, buckets: list[int]) -> int | None:
    """The smallest of the (ascending) `buckets` that holds `n`; None when none does."""
    return next((b for b in buckets if b >= n), None)


@functools.cache
def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream every decode graph on `device` is warmed up and captured on."""
    return torch.cuda.Stream(device)


def capture(
    fn: Callable[[], torch.Tensor], device: torch.device, pool: tuple[int, int]
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Run `fn` twice (kernels compile and workspaces are allocated outside the capture), then
    capture it into a graph in `pool`, on `device`'s side stream, errors thread-local. Call it
    on the thread that owns `device`. Returns the graph and the output it writes."""
    stream = capture_stream(device)
    current = torch.cuda.current_stream(device)
    try:
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            out = fn()
    except Exception:
        torch.cuda.synchronize(device)  # settle the device before the model decodes eagerly
        raise
    return graph, out


class DecodeGraphs:
    """A model's decode graphs. `max_blocks` is the block-table width of the longest context;
    padded rows write to `scratch_block`."""

    def __init__(
        self, model: CausalLM, max_batch: int, max_blocks: int, block_size: int, scratch_block: int
    ) -> None:
        self.model = model
        self.device: torch.device = model.device
        self.block_size = block_size
        self.batches = batch_buckets(max_batch)
        by_width = not reads_block_tables(self.device)
        self.widths = width_buckets(max_blocks) if by_width else [max_blocks]
        self.pad_block = scratch_block
        self.pad_slot = scratch_block * block_size
        size, device = self.batches[-1], self.device
        self.input_ids = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.long, device=device)
        self.slots = torch.full((size,), self.pad_slot, dtype=torch.long, device=device)
        self.tables = torch.full(
            (size, max_blocks), scratch_block, dtype=torch.int32, device=device
        )
        self.context_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.query_start = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        #: Why a capture failed (the graphs are gone and decode is eager since); None if none did.
        self.failure: str | None = None
        self.pool = torch.cuda.graph_pool_handle()
        if by_width:
            log.info("decode graphs: captured per context width as steps need them (SDPA)")
            return
        for b in reversed(self.batches):  # largest first: the smaller ones reuse its pool
            if self._graph(b, max_blocks) is None:
                return
        log.info("captured decode graphs for batch sizes %s", self.batches)

    @property
    def state(self) -> str:
        """ "captured", or "failed: <why>" once a capture failed."""
        return "captured" if self.failure is None else f"failed: {self.failure}"

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states [n, H] of a decode batch; eager when no bucket fits or capture failed."""
        n, w = input_ids.shape[0], attn.block_tables.shape[1]
        b, width = bucket(n, self.batches), bucket(w, self.widths)
        entry = None if b is None or width is None else self._graph(b, width)
        if entry is None:
            return self.model(input_ids, positions, attn)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(attn.slot_mapping)
        self.tables[:n, :w].copy_(attn.block_tables)
        self.context_lens[:n].copy_(attn.context_lens)
        self._pad(n, b)
        graph, out = entry
        graph.replay()
        return out[:n]

    def _graph(self, b: int, width: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        """The graph of bucket (b, width), captured now when new; None once a capture failed."""
        if self.failure is not None:
            return None
        entry = self.graphs.get((b, width))
        if entry is not None:
            return entry
        # The capture's warm-up runs really execute: their rows must write to the scratch block
        # only, never to the slots an earlier step left in the buffers.
        self._pad(0, b)
        try:
            entry = self._capture(b, width)
        except Exception as exc:
            self.failure = printable(f"{type(exc).__name__}: {exc}", 300)
            log.exception(
                "CUDA graph capture failed on %s (batch %d, %d blocks); decoding eagerly",
                self.device,
                b,
                width,
            )
            self.graphs.clear()
            return None
        self.graphs[(b, width)] = entry
        return entry

    @torch.inference_mode()
    def _capture(self, b: int, width: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        attn = AttentionMetadata(
            slot_mapping=self.slots[:b],
            block_tables=self.tables[:b, :width],
            context_lens=self.context_lens[:b],
            query_start_loc=self.query_start[: b + 1],
            is_decode=True,
            max_context_len=width * self.block_size,
        )
        return capture(
            lambda: self.model(self.input_ids[:b], self.positions[:b], attn), self.device, self.pool
        )

    def _pad(self, lo: int, hi: int) -> None:
        """Rows lo..hi become padding: token 0 at position 0, written to the scratch block."""
        if hi > lo:
            self.input_ids[lo:hi].zero_()
            self.positions[lo:hi].zero_()
            self.slots[lo:hi].fill_(self.pad_slot)
            self.context_lens[lo:hi].fill_(1)
