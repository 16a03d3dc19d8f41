"""A test-local driver for the decoder: contiguous block tables, packed prefill, batched decode.

Not the engine (that is cortex.neuron.engine): each sequence slot owns a fixed run of blocks, so
the tests can exercise the model and the paged attention without a scheduler.
"""

from __future__ import annotations

import torch

from cortex.neuron.models.architectures import CausalLM
from cortex.neuron.models.attention import AttentionMetadata, KVCache


class PagedRunner:
    """Runs up to `max_seqs` sequences of up to `max_len` tokens through a paged KV cache."""

    def __init__(
        self, model: CausalLM, max_seqs: int = 4, max_len: int = 128, block_size: int = 16
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.blocks_per_seq = -(-max_len // block_size)
        self.cache = KVCache.allocate(
            model.config, max_seqs * self.blocks_per_seq, block_size, model.device, model.dtype
        )
        model.bind_kv_cache(self.cache)
        self.lengths = [0] * max_seqs  # tokens cached per slot

    def table(self, slot: int) -> list[int]:
        return list(range(slot * self.blocks_per_seq, (slot + 1) * self.blocks_per_seq))

    @torch.inference_mode()
    def step(self, batch: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Feed new tokens [(slot, ids)]; returns logits [sum(len(ids)), V] of every new token."""
        device = self.model.device
        ids, positions, slots, starts, ctx = [], [], [], [0], []
        for slot, new in batch:
            start = self.lengths[slot]
            pos = list(range(start, start + len(new)))
            base = slot * self.blocks_per_seq * self.block_size  # blocks are contiguous
            ids += new
            positions += pos
            slots += [base + p for p in pos]
            starts.append(starts[-1] + len(new))
            ctx.append(start + len(new))
            self.lengths[slot] = start + len(new)
        attn = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            block_tables=torch.tensor(
                [self.table(s) for s, _ in batch], dtype=torch.int32, device=device
            ),
            context_lens=torch.tensor(ctx, dtype=torch.int32, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            is_decode=all(len(new) == 1 for _, new in batch),
            max_context_len=max(ctx),
        )
        hidden = self.model(
            torch.tensor(ids, device=device), torch.tensor(positions, device=device), attn
        )
        return self.model.compute_logits(hidden)

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    def greedy(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        """Greedy continuations of all prompts, prefilled packed and decoded as one batch."""
        self.reset()
        batch = list(enumerate(prompts))
        logits = self.step(batch)
        ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
        nxt = logits[ends].argmax(-1).tolist()
        out = [[t] for t in nxt]
        for _ in range(max_new - 1):
            logits = self.step([(i, [t]) for i, t in enumerate(nxt)])
            nxt = logits.argmax(-1).tolist()
            for seq, t in zip(out, nxt, strict=True):
                seq.append(t)
        return out
