"""The paged KV cache's bookkeeping: fixed-size blocks, reference counts, prefix caching.

A full block whose KV is computed is registered under the chained hash of its tokens (see
`Sequence.full_block_hashes`), so a later prompt with the same prefix reuses it instead of
recomputing it. Blocks nobody references stay cached until space is needed; then the least
recently freed cached block is evicted first.
"""

from __future__ import annotations

from collections import OrderedDict

from cortex.neuron.engine.sequence import ROOT_HASH, Sequence


class BlockManager:
    """Allocates cache blocks to sequences. Pure Python; the model runner owns the tensors."""

    def __init__(self, num_blocks: int, block_size: int, prefix_cache: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_cache = prefix_cache
        self.ref_counts = [0] * num_blocks
        #: Hash and (parent hash, tokens) of each registered block, to double-check a hash hit.
        self._block_hash: list[int | None] = [None] * num_blocks
        self._block_key: list[tuple[int, ...] | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}
        # Free blocks holding no reusable content: taken first, in any order.
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks still holding a cached prefix, least recently freed first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        #: Prompt tokens served from the cache since start (a counter for metrics).
        self.hit_tokens = 0

    @property
    def num_free(self) -> int:
        return len(self._free_plain) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    # Prefix matching and admission

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of `seq`'s tokens (no state change).

        At least the last token is always left to compute: its logits give the next token. A
        sequence that wants its prompt's logprobs computes every token (`seq.reuses_prefix`).
        """
        if not self.prefix_cache or not seq.reuses_prefix:
            return []
        bs = self.block_size
        hashes = seq.full_block_hashes(bs, len(seq) - 1)
        matched: list[int] = []
        parent = ROOT_HASH
        for i, h in enumerate(hashes):
            block = self._cached.get(h)
            key = (parent, *seq.token_ids[i * bs : (i + 1) * bs])
            if block is None or self._block_key[block] != key:
                break
            matched.append(block)
            parent = h
        return matched

    def can_admit(self, matched: list[int], num_tokens: int, reserve: int = 0) -> bool:
        """Whether a sequence reusing `matched` can get blocks for its first `num_tokens`."""
        revived = sum(1 for b in matched if self.ref_counts[b] == 0)
        needed = self.blocks_for(num_tokens) - len(matched)
        return self.num_free - revived >= needed + reserve

    def admit(self, seq: Sequence, matched: list[int], num_tokens: int) -> None:
        """Give `seq` the matched cached blocks plus new ones for its first `num_tokens`."""
        assert not seq.block_table, "sequence already holds blocks"
        for block in matched:
            if self.ref_counts[block] == 0:
                del self._evictable[block]
            self.ref_counts[block] += 1
        seq.block_table = list(matched)
        seq.num_computed = len(matched) * self.block_size
        seq.num_committed_blocks = len(matched)
        if not seq.admitted:
            seq.admitted = True
            seq.num_cached_tokens = seq.num_computed
            self.hit_tokens += seq.num_computed
        if not self.grow(seq, num_tokens):
            self.free(seq)
            raise RuntimeError("admit() called without room; check can_admit() first")

    # Growth, registration, release

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Extend `seq`'s block table to hold `num_tokens` tokens; False (no change) if full."""
        needed = self.blocks_for(num_tokens) - len(seq.block_table)
        if needed <= 0:
            return True
        if needed > self.num_free:
            return False
        seq.block_table.extend(self._take() for _ in range(needed))
        return True

    def commit(self, seq: Sequence) -> None:
        """Register `seq`'s newly completed full blocks in the prefix cache."""
        if not self.prefix_cache:
            return
        bs = self.block_size
        hashes = seq.full_block_hashes(bs, seq.num_computed)
        for i in range(seq.num_committed_blocks, len(hashes)):
            block = seq.block_table[i]
            if self._block_hash[block] is not None:
                continue  # a reused cached block
            h = hashes[i]
            if h in self._cached:
                continue  # computed concurrently by another sequence; keep that copy
            parent = hashes[i - 1] if i else ROOT_HASH
            self._block_hash[block] = h
            self._block_key[block] = (parent, *seq.token_ids[i * bs : (i + 1) * bs])
            self._cached[h] = block
        seq.num_committed_blocks = len(hashes)

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; its blocks become free (cached ones stay reusable)."""
        # Tail first: deeper prefix blocks are then evicted before the shallow ones they need.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self._block_hash[block] is None:
                    self._free_plain.append(block)
                else:
                    self._evictable[block] = None
        seq.block_table = []
        seq.num_computed = 0
        seq.num_committed_blocks = 0

    def _take(self) -> int:
        if self._free_plain:
            block = self._free_plain.pop()
        else:
            block, _ = self._evictable.popitem(last=False)
            self._forget(block)
        self.ref_counts[block] = 1
        return block

    def _forget(self, block: int) -> None:
        h = self._block_hash[block]
        if h is not None and self._cached.get(h) == block:
            del self._cached[h]
        self._block_hash[block] = None
        self._block_key[block] = None
