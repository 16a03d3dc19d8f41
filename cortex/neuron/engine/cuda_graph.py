"""Decode steps replayed as captured CUDA graphs, one per batch-size bucket.

Every bucket's graph reads the same static input buffers (ids, positions, slots, block tables
padded to the longest context, context lengths) and the graphs share one memory pool. A step
copies its inputs into the first `n` rows, pads the rest of the bucket with rows that write
to the runner's scratch block, replays, and returns the first `n` rows of the output. Sampling
runs after the graph on the same stream, so nothing here syncs with the host.

Captures run on one side stream per device, shared by every capture in the process: cuBLAS
keeps a workspace for each stream it has run on, which `torch.cuda.empty_cache` does not
free, so a new stream per capture would grow device memory with every model load.
"""

from __future__ import annotations

import functools
import logging

import torch

from cortex.neuron.models.architectures import CausalLM
from cortex.neuron.models.attention import AttentionMetadata

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 32 and of 16 beyond, below `max_batch`, then
    `max_batch` itself: 1, 2, 4, 8, 16, 24, 32, 48, 64, ... (a batch pads to the next one)."""
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + (8 if sizes[-1] < 32 else 16))
    return sorted({s for s in sizes if s < max_batch} | {max_batch})


@functools.cache
def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream every decode graph on `device` is warmed up and captured on."""
    return torch.cuda.Stream(device)


class DecodeGraphs:
    """Captures `model` for every decode bucket at construction. `width` is the block-table
    width of the longest context; padded rows write to `scratch_block`."""

    def __init__(
        self, model: CausalLM, max_batch: int, width: int, block_size: int, scratch_block: int
    ) -> None:
        self.model = model
        self.width = width
        self.buckets = batch_buckets(max_batch)
        device = model.device
        size = self.buckets[-1]
        scratch = scratch_block
        self.block_size = block_size
        self.pad_slot = scratch * block_size
        self.pad_block = scratch
        self.input_ids = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.long, device=device)
        self.slots = torch.full((size,), self.pad_slot, dtype=torch.long, device=device)
        self.tables = torch.full((size, self.width), scratch, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.query_start = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):  # largest first: the smaller ones reuse its pool
            self.graphs[b] = self._capture(b, pool)
        log.info("captured decode graphs for batch sizes %s", self.buckets)

    def _metadata(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:b],
            block_tables=self.tables[:b],
            context_lens=self.context_lens[:b],
            query_start_loc=self.query_start[: b + 1],
            is_decode=True,
            max_context_len=self.width * self.block_size,
        )

    @torch.inference_mode()
    def _capture(self, b: int, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        attn = self._metadata(b)
        stream = capture_stream(self.input_ids.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and workspaces outside the capture
                self.model(self.input_ids[:b], self.positions[:b], attn)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self.model(self.input_ids[:b], self.positions[:b], attn)
        return graph, out

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states [n, H] of a decode batch; eager when no bucket fits."""
        n = input_ids.shape[0]
        b = next((s for s in self.buckets if s >= n), None)
        if b is None or attn.block_tables.shape[1] > self.width:
            return self.model(input_ids, positions, attn)
        w = attn.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(attn.slot_mapping)
        self.tables[:n, :w].copy_(attn.block_tables)
        self.tables[:n, w:].fill_(self.pad_block)
        self.context_lens[:n].copy_(attn.context_lens)
        if b > n:
            self.input_ids[n:b].zero_()
            self.positions[n:b].zero_()
            self.slots[n:b].fill_(self.pad_slot)
            self.tables[n:b].fill_(self.pad_block)
            self.context_lens[n:b].fill_(1)
        graph, out = self.graphs[b]
        graph.replay()
        return out[:n]
