"""What the engine reports: per-step outputs, stats snapshots, load results."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of one model's engine, for `/health` and `/metrics`.

    `prefix_hits`, `prompt_tokens` and `generation_tokens` are counters since the load:
    prompt tokens served from the prefix cache, prompt tokens computed (prefilled, recomputed
    ones after a preemption included) and tokens generated. `graphs` says how decode runs
    (`ModelRunner.graphs_state`: "captured", "eager" or "failed: <why>").
    """

    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    prefix_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    graphs: str = "eager"


@dataclass(frozen=True)
class LoadedInfo:
    """What a load produced: weight bytes, usable context, dtype name, seconds, KV blocks."""

    bytes: int
    max_context: int
    dtype: str
    load_seconds: float
    kv_blocks: int


@dataclass
class StepOutput:
    """New tokens for one request from one engine step.

    `token_ids` excludes the token that matched a stop/EOS id (it is never text). With
    `logprobs` asked for, `logprobs[i]` is the log-probability of `token_ids[i]` and
    `top_logprobs[i]` the `(token_id, logprob)` pairs of the most likely alternatives.
    `prompt_logprobs` (with the first token, when asked) holds the same pair for each prompt
    token after the first.
    `error` says why a request failed alone in a step (finish_reason "abort"); the others of
    its batch went on.
    """

    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = field(default=None)
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None
    error: str | None = None
