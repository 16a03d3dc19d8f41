"""Continuous batching: which sequences run in the next step, and with how many tokens.

Every step runs under a token budget (`max_num_batched_tokens`), Sarathi-style: first one token
for every running sequence that decodes, then prompt chunks fill what is left of the budget,
for sequences part-way through their prompt before newly admitted ones. A long prompt thus
prefills over several steps, each of which also advances every generating sequence, instead of
freezing them for its whole length. A step with no prompt chunk is a pure decode step (the
CUDA-graph path); any chunk makes it a mixed step, which the model runs as one packed batch.
Requests join at any step with budget left and leave as soon as they finish or are aborted.
When the cache runs out of blocks, the most recently admitted sequence is preempted: its
blocks are freed and it is recomputed later (cheaply, since its full blocks usually stay in
the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cortex.neuron.engine.block_manager import BlockManager
from cortex.neuron.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work. Each sequence's `num_scheduled` says how many of its tokens run."""

    #: Running sequences computing their one new token (each samples), oldest first.
    decodes: list[Sequence] = field(default_factory=list)
    #: Prompt chunks (a recomputation after a preemption included); only a chunk that ends
    #: its sequence's tokens samples.
    chunks: list[Sequence] = field(default_factory=list)
    #: The sequences whose last scheduled token yields a sampled token, in `seqs` order.
    sampling: list[Sequence] = field(default_factory=list)

    @property
    def seqs(self) -> list[Sequence]:
        """Every scheduled sequence in the order of the packed token batch: decodes first."""
        return self.decodes + self.chunks

    @property
    def is_decode(self) -> bool:
        """Whether every row is one token that samples (the decode fast path applies)."""
        return not self.chunks

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + self.num_prefill_tokens

    @property
    def num_prefill_tokens(self) -> int:
        """Tokens of the step's prompt chunks."""
        return sum(s.num_scheduled for s in self.chunks)


class Scheduler:
    """Waiting and running queues over one `BlockManager`."""

    def __init__(self, blocks: BlockManager, max_batch: int, max_num_batched_tokens: int) -> None:
        if max_batch < 1 or max_num_batched_tokens < max_batch:
            # A smaller budget could not run every running sequence's decode in one step.
            raise ValueError("max_batch must be positive and max_num_batched_tokens >= it")
        self.blocks = blocks
        self.max_batch = max_batch
        self.max_num_batched_tokens = max_num_batched_tokens
        # Admissions leave a few blocks spare so running sequences rarely get preempted.
        self.watermark = max(1, blocks.num_blocks // 100)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; it joins the batch at the next step with budget left."""
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Remove `seq` wherever it is and free its blocks (no-op once finished)."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = seq.finish_reason or "abort"

    def schedule(self) -> ScheduledBatch | None:
        """Pick the next step's batch, or None when there is nothing to run."""
        batch = ScheduledBatch()
        # Decodes first, whatever prompts wait: their latency is what chunking protects.
        for seq in list(self.running):
            if self._is_running(seq) and seq.num_uncomputed == 1 and self._grow(seq, len(seq)):
                seq.num_scheduled = 1
                batch.decodes.append(seq)
        budget = self.max_num_batched_tokens - len(batch.decodes)
        # Chunked prompts already hold blocks: continue them before admitting new ones.
        for seq in list(self.running):
            if budget > 0 and self._is_running(seq) and seq.num_uncomputed > 1:
                chunk = min(seq.num_uncomputed, budget)
                if self._grow(seq, seq.num_computed + chunk):
                    budget -= self._add_chunk(batch, seq, chunk)
        while self.waiting and budget > 0 and len(self.running) < self.max_batch:
            if not (chunk := self._admit(self.waiting[0], budget)):
                break
            budget -= self._add_chunk(batch, self.waiting.popleft(), chunk)
        if not batch.decodes and not batch.chunks:
            return None
        batch.sampling = [s for s in batch.seqs if s.samples_this_step]
        return batch

    def finish_step(self, batch: ScheduledBatch, token_ids: list[int]) -> None:
        """Record a step's results: `token_ids` holds one sampled id per `batch.sampling`."""
        for seq in batch.seqs:
            seq.num_computed += seq.num_scheduled
            seq.num_scheduled = 0
            self.blocks.commit(seq)
        for seq, token_id in zip(batch.sampling, token_ids, strict=True):
            seq.append_token(token_id)
            if seq.finish_reason is not None:
                self.running.remove(seq)
                self.blocks.free(seq)
                seq.status = SequenceStatus.FINISHED

    def _admit(self, seq: Sequence, budget: int) -> int:
        """Give waiting `seq` its cached prefix and blocks for a first chunk of at most
        `budget` tokens; returns that chunk's length, or 0 when the blocks are not free."""
        matched = self.blocks.match_prefix(seq)
        start = len(matched) * self.blocks.block_size
        chunk = min(len(seq) - start, budget)
        reserve = self.watermark if self.running else 0
        if not self.blocks.can_admit(matched, start + chunk, reserve):
            return 0
        self.blocks.admit(seq, matched, start + chunk)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return chunk

    @staticmethod
    def _add_chunk(batch: ScheduledBatch, seq: Sequence, chunk: int) -> int:
        seq.num_scheduled = chunk
        batch.chunks.append(seq)
        return chunk

    @staticmethod
    def _is_running(seq: Sequence) -> bool:
        # A sequence preempted earlier in this pass is WAITING again, though still listed.
        return seq.status is SequenceStatus.RUNNING

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for `seq`, preempting the newest sequences; False if `seq` itself went.

        A victim is never already in the step: decodes are taken oldest first, and a prompt
        still part-way through is the newest running sequence (a step admits nobody once a
        chunk has used up its budget)."""
        while not self.blocks.grow(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
