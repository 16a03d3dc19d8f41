"""Batched sampling on the device: penalties, temperature, min-p, top-k, top-p, seeds, logprobs.

Definitions follow vLLM:
- repetition_penalty r over prompt + output tokens: a positive logit is divided by r, a
  negative one multiplied by r;
- frequency_penalty f and presence_penalty p over output tokens only:
  `logit -= f * count + p * (count > 0)`;
- then temperature (0 = greedy: argmax of the penalised logits), then min_p (drop tokens whose
  probability is below min_p times the top probability), then top_k, then top_p (smallest set
  whose probability reaches top_p).
Then the per-row adjustments of logits.py (logit_bias, min_tokens, grammar masks), only for the
rows that have one. `top_p: 0` keeps one token: it is greedy.
Logprobs are those of the raw model distribution (log-softmax of the unprocessed logits), as
vLLM reports them by default.

A draw is `argmax(probs / E)` with E ~ Exp(1) i.i.d. (equivalent to sampling from probs). A
seeded request draws its E from its own `torch.Generator`, so it yields the same tokens whether
it runs alone or batched with others; unseeded rows share the sampler's generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cortex.api.limits import BOUNDS, check_sampling, logit_bias, token_ids
from cortex.neuron.engine.logits import LogitAdjustments, TokenConstraint

_GREEDY_BELOW = 1e-5  # temperatures this small are greedy (avoids dividing by ~0)


@dataclass
class SamplingParams:
    """Per-request decoding settings (OpenAI/vLLM names; temperature 0 means greedy)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    # Stop ids that the text pipeline watches rather than the engine (a request's own
    # `stop_token_ids`): min_tokens masks them with EOS.
    soft_stop_token_ids: list[int] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    constraint: TokenConstraint | None = None  # a grammar: this sequence's own matcher
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False  # the logprob of each prompt token after the first
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW or self.top_p == 0

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1.0
        )

    def __post_init__(self) -> None:
        # The engine holds these in fixed-width tensors: check them here too, for the offline API.
        check_sampling({name: getattr(self, name) for name in BOUNDS})
        token_ids(self.stop_token_ids, "stop_token_ids")
        logit_bias(self.logit_bias)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The per-request generator of a seeded request, on the device that samples."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


@dataclass
class SamplingBatch:
    """The per-row settings of one sampling step as device tensors, plus host-side flags."""

    temperature: torch.Tensor  # [B] fp32; 1.0 on greedy rows
    greedy: torch.Tensor  # [B] bool
    top_k: torch.Tensor  # [B] int64; vocab size where off
    top_p: torch.Tensor  # [B] fp32
    min_p: torch.Tensor  # [B] fp32
    generators: list[torch.Generator | None]
    all_greedy: bool
    use_min_p: bool
    use_top_k_top_p: bool
    num_top_logprobs: int  # max top_logprobs over the rows
    want_logprobs: bool
    # Penalties (None when no row has any): token occurrences as (row, id) index pairs.
    repetition: torch.Tensor | None = None  # [B, 1]
    frequency: torch.Tensor | None = None  # [B, 1]
    presence: torch.Tensor | None = None  # [B, 1]
    history_index: tuple[torch.Tensor, torch.Tensor] | None = None  # prompt + output
    output_index: tuple[torch.Tensor, torch.Tensor] | None = None  # output only
    # The occurrences as [B, V] tensors, made from the index pairs at the first step and then
    # kept current by `observe`: a batch reused across steps never re-reads whole histories.
    seen: torch.Tensor | None = None  # [B, V] bool: in prompt or output
    output_counts: torch.Tensor | None = None  # [B, V] fp32: occurrences in the output
    # logit_bias, min_tokens and grammars (None when no row has any).
    adjust: LogitAdjustments | None = None

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        histories: list[list[int]],
        generators: list[torch.Generator | None],
        device: torch.device | str,
        *,
        prompt_lens: list[int] | None = None,
        stop_ids: Sequence[frozenset[int]] | None = None,
    ) -> SamplingBatch:
        """Pack per-request params; `histories` are prompt + output ids (used for penalties).

        `prompt_lens[i]` splits history i into prompt and output (presence/frequency count
        output tokens only; min_tokens counts output); without it the whole history counts as
        output. `stop_ids[i]` are the ids that end row i (masked until its min_tokens).
        """

        def floats(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        big = 1 << 62  # top_k "off": larger than any vocabulary
        top_k = [p.top_k if p.top_k > 0 else big for p in params]
        batch = cls(
            temperature=floats([1.0 if p.greedy else p.temperature for p in params]),
            greedy=torch.tensor([p.greedy for p in params], dtype=torch.bool, device=device),
            top_k=torch.tensor(top_k, dtype=torch.int64, device=device),
            top_p=floats([p.top_p for p in params]),
            min_p=floats([p.min_p for p in params]),
            generators=list(generators),
            all_greedy=all(p.greedy for p in params),
            use_min_p=any(p.min_p > 0 and not p.greedy for p in params),
            use_top_k_top_p=any((p.top_k > 0 or p.top_p < 1) and not p.greedy for p in params),
            num_top_logprobs=max((p.top_logprobs for p in params), default=0),
            want_logprobs=any(p.logprobs or p.top_logprobs for p in params),
        )
        starts = prompt_lens or [0] * len(params)
        batch.adjust = LogitAdjustments.build(
            params,
            [len(h) - s for h, s in zip(histories, starts, strict=True)],
            stop_ids or [frozenset(p.stop_token_ids) for p in params],
            device,
        )
        if any(p.has_penalties for p in params):
            outputs = [h[s:] for h, s in zip(histories, starts, strict=True)]
            batch.history_index = _index_pairs(histories, device)
            batch.output_index = _index_pairs(outputs, device)
            batch.repetition = floats([p.repetition_penalty for p in params])[:, None]
            batch.frequency = floats([p.frequency_penalty for p in params])[:, None]
            batch.presence = floats([p.presence_penalty for p in params])[:, None]
        return batch

    def apply_penalties(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> penalised logits [B, V] (a new tensor)."""
        if self.history_index is None or self.output_index is None:
            return logits
        if self.seen is None:
            self.seen = _counts(self.history_index, logits) > 0  # [B, V]
            self.output_counts = _counts(self.output_index, logits)  # [B, V]
        scaled = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
        logits = torch.where(self.seen, scaled, logits)
        counts = self.output_counts
        return logits - self.frequency * counts - self.presence * (counts > 0).float()

    def observe(self, token_ids: torch.Tensor) -> None:
        """Count the tokens just sampled (LongTensor[B], one per row) as output occurrences.

        On the device, without a host sync; a no-op unless penalties are in use.
        """
        if self.seen is None or self.output_counts is None:
            return
        index = (torch.arange(token_ids.shape[0], device=token_ids.device), token_ids)
        self.seen.index_put_(index, torch.ones((), dtype=torch.bool, device=token_ids.device))
        self.output_counts.index_put_(
            index, torch.ones((), device=token_ids.device), accumulate=True
        )


def _index_pairs(lists: list[list[int]], device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """(row ids, token ids) of every token of every row, as two flat device tensors."""
    rows = [i for i, ids in enumerate(lists) for _ in ids]
    flat = [t for ids in lists for t in ids]
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(flat, dtype=torch.long, device=device),
    )


def _counts(index: tuple[torch.Tensor, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """[B, V] fp32 occurrence counts from (row, id) pairs, with one accumulating index_put."""
    counts = torch.zeros_like(like, dtype=torch.float32)
    ones = torch.ones(index[0].shape[0], dtype=torch.float32, device=like.device)
    return counts.index_put_(index, ones, accumulate=True)


@dataclass
class SampleResult:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] fp32: logprob of each chosen token
    top_ids: torch.Tensor | None = None  # [B, K] int64
    top_logprobs: torch.Tensor | None = None  # [B, K] fp32


class Sampler:
    """Samples one token per row from fp32 logits; every tensor stays on the device."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator  # shared by unseeded rows; None: torch's default RNG

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SampleResult:
        """logits [B, V] fp32 -> SampleResult (tokens, and logprobs where asked).

        No grad mode of its own: logits never require grad here (the engine's whole step
        runs under `inference_mode`), and entering a mode per step costs more than a kernel.
        """
        result = SampleResult(token_ids=torch.empty(0))
        if batch.want_logprobs:
            raw = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
        penalised = batch.apply_penalties(logits)
        if batch.adjust is not None:
            penalised = batch.adjust.apply(penalised)
        if batch.all_greedy:
            result.token_ids = penalised.argmax(dim=-1)
        else:
            result.token_ids = torch.where(
                batch.greedy, penalised.argmax(dim=-1), self._draw(penalised, batch)
            )
        if batch.want_logprobs:
            result.logprobs = raw.gather(1, result.token_ids[:, None]).squeeze(1)
            if batch.num_top_logprobs:
                result.top_logprobs, result.top_ids = raw.topk(batch.num_top_logprobs, dim=-1)
        return result

    def _draw(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Random tokens [B] from temperature / min_p / top_k / top_p filtered logits."""
        logits = logits / batch.temperature[:, None]
        if batch.use_min_p:
            probs = logits.softmax(dim=-1)
            floor = probs.amax(dim=-1, keepdim=True) * batch.min_p[:, None]
            logits = logits.masked_fill(probs < floor, float("-inf"))
        if batch.use_top_k_top_p:
            logits = _top_k_top_p(logits, batch.top_k, batch.top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, generator in enumerate(batch.generators):
            if generator is not None:
                noise[row].exponential_(generator=generator)
        return (probs / noise).argmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask all but each row's top_k logits, then all outside its top_p nucleus (one sort)."""
    vocab = logits.shape[-1]
    ascending, order = logits.sort(dim=-1)  # [B, V]
    # k-th largest value per row; everything below it goes.
    kth = ascending.gather(1, (vocab - top_k.clamp(max=vocab))[:, None])  # [B, 1]
    ascending = ascending.masked_fill(ascending < kth, float("-inf"))
    # Drop the low tail whose total probability is at most 1 - top_p; the top token stays.
    tail = ascending.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    drop = tail <= (1 - top_p)[:, None]
    drop[:, -1] = False
    ascending = ascending.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ascending)
