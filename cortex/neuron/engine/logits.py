"""Per-row logit adjustments of one sampling step: `logit_bias`, `min_tokens`, grammar masks.

Built with the step's SamplingBatch from the rows' SamplingParams, and only when some row needs
one (`LogitAdjustments.build` returns None otherwise): rows without an adjustment are never
touched, and a batch without any pays nothing. `apply` runs inside the sampler, on the device,
after the penalties and before temperature; logprobs stay those of the raw model distribution.

- `logit_bias` (OpenAI's semantics): the bias is added to the logit of its token; 100 and -100
  all but force and ban it.
- `min_tokens` (vLLM's semantics): while a row has fewer output tokens, its stop ids (EOS, the
  engine's stop ids and the request's `stop_token_ids`) are masked. A row with a grammar is left
  to its grammar, which alone decides when the answer may end.
- Grammars: a row's `constraint` is an llguidance `LLMatcher`, one per sequence. Each step the
  host fills one int32 bitmask row per constrained row (bit i of word j allows token 32*j + i)
  in parallel on llguidance's thread pool, copies it to the device without a sync, unpacks it
  and sets the disallowed logits to -inf. Ids past the matcher's vocabulary (padded embedding
  rows) are disallowed. Once the grammar is complete the mask allows only the tokenizer's EOS
  ids, which are the model's stop ids. After the step's tokens reach the host, `accept` feeds
  each constrained row's token to its matcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import torch

_executor: llguidance.LLExecutor | None = None


def _mask_executor() -> llguidance.LLExecutor:
    """llguidance's thread pool for filling masks (one per process, made on first use)."""
    global _executor
    if _executor is None:
        _executor = llguidance.LLExecutor()
    return _executor


def unpack_bitmask(words: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 bitmask words [R, W] -> bool allowed [R, vocab] (ids past 32 * W disallowed)."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)  # [32]
    bits = (words[:, :, None] >> shifts) & 1  # [R, W, 32]
    allowed = bits.reshape(words.shape[0], -1).bool()  # [R, 32 * W]
    if allowed.shape[1] >= vocab:
        return allowed[:, :vocab]
    pad = allowed.new_zeros(words.shape[0], vocab - allowed.shape[1])
    return torch.cat([allowed, pad], dim=1)  # [R, vocab]


@dataclass
class TokenConstraint:
    """A sequence's grammar state: its llguidance matcher (its own copy, fed every sampled
    token) and the size of the vocabulary the matcher's masks cover."""

    matcher: llguidance.LLMatcher
    vocab_size: int


@dataclass
class _Grammars:
    """The constrained rows of a batch and their host bitmask."""

    rows: torch.Tensor  # [R] int64 on the device
    matchers: list[llguidance.LLMatcher]  # per constrained row (batch order)
    positions: list[int]  # the batch row of each matcher
    bitmask: torch.Tensor  # [R, W] int32 on the host (pinned for CUDA)


class LogitAdjustments:
    """The adjustments of one batch's rows (see the module docstring)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # rows, ids, vals
        self.min_tokens: list[tuple[int, int, list[int]]] = []  # (row, tokens left, stop ids)
        self.grammars: _Grammars | None = None

    @classmethod
    def build(
        cls,
        params: Sequence[Any],
        output_lens: Sequence[int],
        stop_ids: Sequence[frozenset[int]],
        device: torch.device | str,
    ) -> LogitAdjustments | None:
        """Adjustments for rows with `params` (SamplingParams), their current output lengths
        and engine stop ids; None when no row has any."""
        adjust = cls(device)
        bias = [(row, t, v) for row, p in enumerate(params) for t, v in p.logit_bias.items()]
        if bias:
            rows, ids, values = zip(*bias, strict=True)
            adjust.bias = (
                torch.tensor(rows, dtype=torch.long, device=device),
                torch.tensor(ids, dtype=torch.long, device=device),
                torch.tensor(values, dtype=torch.float32, device=device),
            )
        for row, (p, done, stops) in enumerate(zip(params, output_lens, stop_ids, strict=True)):
            if p.constraint is None and p.min_tokens > done:
                ids = sorted(stops | set(p.soft_stop_token_ids))
                adjust.min_tokens.append((row, p.min_tokens - done, ids))
        constrained = [(row, p.constraint) for row, p in enumerate(params) if p.constraint]
        if constrained:
            adjust.grammars = adjust._grammars(constrained)
        if adjust.bias is None and not adjust.min_tokens and adjust.grammars is None:
            return None
        return adjust

    def _grammars(self, constrained: list[tuple[int, TokenConstraint]]) -> _Grammars:
        positions = [row for row, _ in constrained]
        matchers = [c.matcher for _, c in constrained]
        words = (constrained[0][1].vocab_size + 31) // 32
        # Pinned so the copy to a GPU is asynchronous; the buffer is refilled only at the next
        # step, after this step's tokens were read back (a sync that the copy precedes).
        pin = self.device.type == "cuda"
        bitmask = torch.zeros((len(matchers), words), dtype=torch.int32, pin_memory=pin)
        rows = torch.tensor(positions, dtype=torch.long, device=self.device)
        return _Grammars(rows, matchers, positions, bitmask)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> adjusted logits [B, V] (a new tensor where anything changed)."""
        if self.bias is not None:
            rows, ids, values = self.bias
            logits = logits.index_put((rows, ids), values, accumulate=True)
        if self.min_tokens:
            active = [(row, ids) for row, left, ids in self.min_tokens if left > 0]
            if active:
                rows = [row for row, ids in active for _ in ids]
                ids = [t for _, ids in active for t in ids]
                index = (self._put(rows), self._put(ids))
                logits = logits.index_put(index, torch.tensor(float("-inf"), device=logits.device))
        if self.grammars is not None:
            logits = self._mask(logits, self.grammars)
        return logits

    def _put(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

    @staticmethod
    def _mask(logits: torch.Tensor, g: _Grammars) -> torch.Tensor:
        """-inf where the constrained rows' grammars disallow a token."""
        bitmask = g.bitmask
        pairs = list(zip(g.matchers, range(len(g.matchers)), strict=True))
        row_bytes = bitmask.shape[1] * bitmask.element_size()
        _mask_executor().unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), row_bytes, len(pairs))
        words = bitmask.to(logits.device, non_blocking=True)  # [R, W]
        allowed = unpack_bitmask(words, logits.shape[1])  # [R, V]
        masked = logits[g.rows].masked_fill(~allowed, float("-inf"))  # [R, V]
        return logits.index_put((g.rows,), masked)

    def accept(self, token_ids: Sequence[int]) -> None:
        """Record the step's sampled tokens (one per row, on the host)."""
        self.min_tokens = [(row, left - 1, ids) for row, left, ids in self.min_tokens]
        if self.grammars is not None:
            for matcher, row in zip(self.grammars.matchers, self.grammars.positions, strict=True):
                matcher.consume_token(token_ids[row])
