"""One generation request as the scheduler sees it: token ids, progress, KV blocks, stop rules.

Pure Python (no torch), so the scheduler and block manager are testable on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from cortex.neuron.engine.sampling import SamplingParams

#: Seed of the chained block hash for a sequence's first block.
ROOT_HASH = 0


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """A prompt plus its generated tokens, and where its KV lives in the paged cache.

    `num_computed` counts tokens whose KV is in the cache (prefix-cache hits included);
    the sequence needs a prefill while more than one token is uncomputed and a decode step
    when exactly one (the last sampled token) is.
    """

    def __init__(
        self,
        seq_id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        eos_token_ids: Iterable[int] = (),
        max_len: int | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.seq_id = seq_id
        self.token_ids: list[int] = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        #: Opaque to the scheduler (the model runner reads the sampling settings).
        self.params = params
        self.max_tokens: int = params.max_tokens
        self.max_len = max_len
        stop = set(params.stop_token_ids or ())
        if not params.ignore_eos:
            stop.update(eos_token_ids)
        self.stop_ids = frozenset(stop)
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed = 0
        self.num_scheduled = 0
        #: Leading blocks of `block_table` already registered in (or taken from) the prefix cache.
        self.num_committed_blocks = 0
        #: Prompt tokens served from the prefix cache at the first admission.
        self.num_cached_tokens = 0
        self.admitted = False
        self.num_preemptions = 0
        self.finish_reason: str | None = None
        #: Chained hashes of the full blocks of `token_ids` (grown lazily, never invalidated:
        #: tokens are only ever appended).
        self.block_hashes: list[int] = []
        #: With `params.prompt_logprobs`: (logprob, top (id, logprob) pairs) of prompt tokens
        #: 1.. in order, filled as the prefill computes them.
        self.prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] = []

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id}, {self.status.value}, tokens={len(self)}, "
            f"computed={self.num_computed}, blocks={len(self.block_table)})"
        )

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def reuses_prefix(self) -> bool:
        """Whether cached prompt blocks may stand in for computing them (not when the prompt's
        own logprobs are wanted: those come from computing every prompt token)."""
        return not self.params.prompt_logprobs

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def samples_this_step(self) -> bool:
        """Whether the scheduled tokens reach the end, so the step samples a next token."""
        return self.num_computed + self.num_scheduled == len(self.token_ids)

    def full_block_hashes(self, block_size: int, upto_tokens: int) -> list[int]:
        """Chained hashes of the full blocks within the first `upto_tokens` tokens.

        Block i's hash covers the parent hash and its own tokens, so equal hashes mean equal
        whole prefixes (up to hash collisions, which the block manager double-checks).
        """
        wanted = min(upto_tokens, len(self.token_ids)) // block_size
        hashes = self.block_hashes
        while len(hashes) < wanted:
            i = len(hashes)
            parent = hashes[-1] if hashes else ROOT_HASH
            hashes.append(hash((parent, *self.token_ids[i * block_size : (i + 1) * block_size])))
        return hashes[:wanted]

    def append_token(self, token_id: int) -> None:
        """Add a sampled token and decide whether the sequence is done."""
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
        self.token_ids.append(token_id)
        if self.finish_reason is None and (
            self.num_output_tokens >= self.max_tokens
            or (self.max_len is not None and len(self.token_ids) >= self.max_len)
        ):
            self.finish_reason = "length"
