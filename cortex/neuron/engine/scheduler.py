"""Continuous batching: which sequences run in the next step, and with how many tokens.

Each step is either a prefill step (prompt chunks, up to `max_prefill_tokens` tokens in all) or
a decode step (one token for every running sequence whose prompt is done). When both kinds
of work wait, the two alternate, so a long prompt prefilling in chunks never stalls the
sequences already generating for more than one step. Requests join at any prefill step and
leave as soon as they finish or are aborted. When the cache runs out of blocks, the most
recently admitted sequence is preempted: its blocks are freed and it is recomputed later
(cheaply, since its full blocks usually stay in the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cortex.neuron.engine.block_manager import BlockManager
from cortex.neuron.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One step's work. Each sequence's `num_scheduled` says how many of its tokens run."""

    seqs: list[Sequence]
    is_decode: bool
    #: The sequences whose last scheduled token yields a sampled token, in `seqs` order.
    sampling: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_scheduled for s in self.seqs)


class Scheduler:
    """Waiting and running queues over one `BlockManager`."""

    def __init__(self, blocks: BlockManager, max_batch: int, max_prefill_tokens: int) -> None:
        if max_batch < 1 or max_prefill_tokens < 1:
            raise ValueError("max_batch and max_prefill_tokens must be positive")
        self.blocks = blocks
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        # Admissions leave a few blocks spare so running sequences rarely get preempted.
        self.watermark = max(1, blocks.num_blocks // 100)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._last_was_prefill = False

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; it joins the batch at the next prefill step with room."""
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
        decode_ready = any(s.num_uncomputed == 1 for s in self.running)
        prefill_first = not (decode_ready and self._last_was_prefill)
        order = (self._prefill, self._decode) if prefill_first else (self._decode, self._prefill)
        for plan in order:
            batch = plan()
            if batch.seqs:
                self._last_was_prefill = not batch.is_decode
                batch.sampling = [s for s in batch.seqs if s.samples_this_step]
                return batch
        return None

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

    def _prefill(self) -> ScheduledBatch:
        budget = self.max_prefill_tokens
        seqs: list[Sequence] = []
        # Chunked prompts already hold blocks: continue them before admitting new ones.
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING or seq.num_uncomputed <= 1:
                continue
            chunk = min(seq.num_uncomputed, budget)
            if self._grow(seq, seq.num_computed + chunk):
                seq.num_scheduled = chunk
                budget -= chunk
                seqs.append(seq)
        while self.waiting and budget > 0 and len(self.running) < self.max_batch:
            seq = self.waiting[0]
            matched = self.blocks.match_prefix(seq)
            start = len(matched) * self.blocks.block_size
            chunk = min(len(seq) - start, budget)
            reserve = self.watermark if self.running else 0
            if not self.blocks.can_admit(matched, start + chunk, reserve):
                break
            self.waiting.popleft()
            self.blocks.admit(seq, matched, start + chunk)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seq.num_scheduled = chunk
            budget -= chunk
            seqs.append(seq)
        return ScheduledBatch(seqs, is_decode=False)

    def _decode(self) -> ScheduledBatch:
        seqs: list[Sequence] = []
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or seq.num_uncomputed != 1:
                continue
            if self._grow(seq, len(seq)):
                seq.num_scheduled = 1
                seqs.append(seq)
        return ScheduledBatch(seqs, is_decode=True)

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for `seq`, preempting the newest sequences; False if `seq` itself went."""
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
