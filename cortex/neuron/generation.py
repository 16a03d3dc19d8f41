"""One OpenAI request on the engine: its sequences, their text pipelines, and one event stream.

`n` > 1 runs as n engine requests over the same prompt (the prefix cache shares its blocks); a
seeded request gives sequence i the seed `seed + i`, so the n answers differ but each is
reproducible. A legacy completion with a batch of prompts runs n sequences per prompt; choice
`p * n + i` is answer i to prompt p. Each sequence's tokens go through a `TextStream`
(detokenize, stop strings, reasoning split, tool calls). A constrained request (grammar.py) gives
each sequence its own copy of the compiled grammar, which the engine's sampler enforces.
`Generation.events()` merges the sequences into one stream of `Piece`s and yields None after
each half second of silence (the caller sends an SSE comment or checks that the client is still
there).

A stop string or a stop token (`stop_token_ids`: the engine stops only at EOS and drops that id
from its output, so the text pipeline watches for these) cancels that sequence in the engine at
once (its KV blocks are freed at the next step); so does `cancel()` for a client that went away.

`echo` (legacy completions): the prompt's text comes first in the answer, in the first piece,
with its tokens' logprobs when `logprobs` is asked (the first token's logprob is null: nothing
precedes it). `max_tokens: 0` generates nothing; with `echo` and `logprobs` the engine still
prefills the prompt to score it, and the one token it samples is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cortex.api.limits import SEED_MIN
from cortex.api.openai import (
    ChoiceResult,
    GenerationRequest,
    logprob_entry,
    resolve_sampling,
    tool_call_delta,
)
from cortex.errors import CortexError
from cortex.neuron.engine.outputs import StepOutput
from cortex.neuron.engine.request import RequestHandle
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.manager import LoadedModel
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.text.grammar import CompiledGrammar
from cortex.neuron.text.parsers import Delta
from cortex.neuron.text.textstream import TextStream

HEARTBEAT_SECONDS = 0.5  # well under the one-second promise, whatever the jitter
_SEQ_END = object()


@dataclass
class Piece:
    """What one engine step (or the end) added to one sequence."""

    index: int
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI delta items
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # with finish_reason: the stop string or token id

    @property
    def empty(self) -> bool:
        """Nothing to send (no text, no tool call, no logprobs)."""
        return not (self.content or self.reasoning or self.tool_calls or self.logprobs)


@dataclass
class _Sequence:
    index: int
    prompt: list[int]
    fields: dict[str, Any]  # SamplingParams keyword arguments
    stream: TextStream
    result: ChoiceResult
    echo: str | None = None  # prompt text still to send first (legacy `echo`)
    score_only: bool = False  # max_tokens 0 with echo and logprobs: sampled tokens dropped
    handle: RequestHandle | None = None
    tokens: int = 0


def sequence_seed(seed: int | None, index: int) -> int | None:
    """The seed of sequence `index` of a request seeded `seed`: `seed + index`, wrapped to
    stay an int64."""
    if seed is None:
        return None
    return (seed + index - SEED_MIN) % 2**64 + SEED_MIN


async def next_or_none(queue: asyncio.Queue[Any], seconds: float) -> Any:
    """The queue's next item, or None after `seconds` of silence.

    Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as the get
    completes, so a client that left mid-answer (aiohttp cancels its handler) went unnoticed
    while tokens kept coming."""
    try:
        async with asyncio.timeout(seconds):
            return await queue.get()
    except TimeoutError:
        return None


class Generation:
    """The sequences of one request and their merged outputs."""

    def __init__(
        self,
        model: LoadedModel,
        req: GenerationRequest,
        prompts: list[list[int]],
        metrics: NeuronMetrics,
        grammar: CompiledGrammar | None = None,
    ) -> None:
        """`prompts`: the token ids of each prompt (one for chat); `grammar`: the compiled
        grammar of a constrained request."""
        self.model = model
        self.req = req
        self.prompts = prompts
        self.metrics = metrics
        self.grammar = grammar
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.cached_tokens = 0
        self.sequences = [
            self._sequence(p * req.n + i, prompt, i)
            for p, prompt in enumerate(prompts)
            for i in range(req.n)
        ]
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._token_text: dict[int, str] = {}

    def _sequence(self, index: int, prompt: list[int], sample: int) -> _Sequence:
        """Sequence `index`, answer number `sample` to `prompt`."""
        req, tokenizer = self.req, self.model.tokenizer
        fields = resolve_sampling(req, self.model.defaults, len(prompt), self.model.max_context)
        fields["seed"] = sequence_seed(fields["seed"], sample)
        stream = TextStream(
            tokenizer,
            prompt,
            stop=fields["stop"],
            stop_token_ids=req.stop_token_ids,
            reasoning=None if req.kind == "chat" else False,
            tools=req.parse_tools,
        )
        result = ChoiceResult(index=index, logprobs=[] if req.logprobs else None)
        seq = _Sequence(index, prompt, fields, stream, result)
        if req.echo:
            original = req.prompts[index // req.n]
            seq.echo = original if isinstance(original, str) else tokenizer.decode(prompt)
            fields["prompt_logprobs"] = req.logprobs
            if fields["max_tokens"] == 0 and req.logprobs:
                # Scoring: prefill the prompt for its logprobs; the sampled token is dropped.
                seq.score_only, fields["max_tokens"] = True, 1
        return seq

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over every prompt (each counted once, whatever `n`)."""
        return sum(len(p) for p in self.prompts)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, over every sequence."""
        return sum(s.tokens for s in self.sequences)

    @property
    def ttft(self) -> float | None:
        """Seconds from the request to its first generated token."""
        return None if self.first_token_at is None else self.first_token_at - self.started

    def start(self) -> None:
        """Submit every sequence to the engine (raises the engine's validation errors)."""
        self.metrics.prompt_tokens.labels(self.model.id).inc(self.prompt_tokens)
        # vLLM's ignore_eos: EOS is one more token (the engine then stops at nothing).
        stop_ids = [] if self.req.ignore_eos else list(self.model.tokenizer.eos_token_ids)
        for seq in self.sequences:
            if seq.fields["max_tokens"] == 0:  # nothing to generate (asked, or no room left)
                self._queue.put_nowait(self._finish(seq, "length", [self._echo(seq, None)]))
                self._queue.put_nowait(_SEQ_END)
                continue
            params = SamplingParams(
                **seq.fields,
                stop_token_ids=stop_ids,
                soft_stop_token_ids=list(self.req.stop_token_ids),
                constraint=None if self.grammar is None else self.grammar.constraint(),
            )
            seq.handle = self.model.worker.submit(self.model.id, seq.prompt, params)
            self.model.handles.add(seq.handle)
            self._tasks.append(asyncio.create_task(self._pump(seq)))

    def cancel(self) -> None:
        """Stop every sequence (client gone, or the request failed)."""
        for seq in self.sequences:
            if seq.handle is not None:
                seq.handle.cancel()
                self.model.handles.discard(seq.handle)
        for task in self._tasks:
            task.cancel()

    async def events(self) -> AsyncIterator[Piece | None]:
        """Pieces of every sequence as they come; None after each heartbeat of silence."""
        remaining = len(self.sequences)
        while remaining:
            item = await next_or_none(self._queue, HEARTBEAT_SECONDS)
            if item is None:
                yield None
            elif item is _SEQ_END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    async def _pump(self, seq: _Sequence) -> None:
        try:
            finished = False
            async for out in seq.handle:
                if self.first_token_at is None and out.token_ids:
                    self.first_token_at = time.perf_counter()
                    self.metrics.ttft.labels(self.model.id).observe(self.ttft or 0.0)
                if seq.index == 0 and out.prompt_tokens:
                    self.cached_tokens = out.cached_tokens
                if seq.score_only:
                    out = StepOutput([], "length", prompt_logprobs=out.prompt_logprobs)
                seq.tokens += len(out.token_ids)
                self.metrics.generation_tokens.labels(self.model.id).inc(len(out.token_ids))
                piece = self._on_tokens(seq, out)
                if out.finish_reason is None and not seq.stream.stopped:
                    self._queue.put_nowait(piece)
                    continue
                seq.handle.cancel()  # a no-op when the engine finished it
                # A stop in the last step's text wins over the length limit (as in vLLM).
                reason = "stop" if seq.stream.stopped else out.finish_reason or "stop"
                self._queue.put_nowait(self._finish(seq, reason, [piece]))
                finished = True
                break
            if not finished:  # cancelled from outside
                self._queue.put_nowait(self._finish(seq, "stop", []))
        except CortexError as exc:
            self._queue.put_nowait(exc)
        finally:
            self.model.handles.discard(seq.handle)
            self._queue.put_nowait(_SEQ_END)

    def _on_tokens(self, seq: _Sequence, out: StepOutput) -> Piece:
        piece = self._echo(seq, out)
        if self.req.logprobs:
            entries = self._logprobs(out)
            piece.logprobs = (piece.logprobs or []) + entries
            if seq.result.logprobs is not None:
                seq.result.logprobs.extend(entries)
        self._apply(seq, piece, seq.stream.push(out.token_ids))
        return piece

    def _echo(self, seq: _Sequence, out: StepOutput | None) -> Piece:
        """A piece holding the echoed prompt (and its logprobs) if not sent yet, else empty."""
        piece = Piece(seq.index)
        if seq.echo is None:
            return piece
        piece.content, seq.echo = seq.echo, None
        seq.result.content += piece.content
        if self.req.logprobs:
            scored = out.prompt_logprobs if out is not None else None
            piece.logprobs = self._prompt_logprobs(seq.prompt, scored or [])
            if seq.result.logprobs is not None:
                seq.result.logprobs.extend(piece.logprobs)
        return piece

    def _finish(self, seq: _Sequence, reason: str, pieces: list[Piece]) -> Piece:
        """Merge the last pieces with the stream's tail into the final piece of `seq`."""
        final = Piece(seq.index)
        for piece in pieces:
            final.content += piece.content
            final.reasoning += piece.reasoning
            final.tool_calls += piece.tool_calls
            if piece.logprobs is not None:
                final.logprobs = (final.logprobs or []) + piece.logprobs
        self._apply(seq, final, seq.stream.finish(reason))
        # The stream already assembled the calls and turned "stop" into "tool_calls" for them.
        seq.result.tool_calls = seq.stream.result().tool_calls
        final.finish_reason = seq.result.finish_reason = seq.stream.finish_reason
        final.stop_reason = seq.result.stop_reason = seq.stream.stop_reason
        return final

    def _apply(self, seq: _Sequence, piece: Piece, deltas: list[Delta]) -> None:
        """Route TextStream deltas into `piece` and the sequence's accumulated result."""
        result = seq.result
        for delta in deltas:
            if delta.kind == "reasoning":
                piece.reasoning += delta.text
                result.reasoning += delta.text
            elif delta.kind == "tool_call":
                piece.tool_calls.append(
                    tool_call_delta(delta.index, delta.id, delta.name, delta.arguments or "")
                )
            else:
                piece.content += delta.text
                result.content += delta.text

    def _logprobs(self, out: StepOutput) -> list[dict[str, Any]]:
        entries = []
        tops = out.top_logprobs or [[] for _ in out.token_ids]
        for tid, lp, top in zip(out.token_ids, out.logprobs or [], tops, strict=False):
            alternatives = [(self._text(t), float(v)) for t, v in top[: self.req.top_logprobs]]
            entries.append(logprob_entry(self._text(tid), float(lp), alternatives))
        return entries

    def _prompt_logprobs(
        self, prompt: list[int], scored: list[tuple[float, list[tuple[int, float]]]]
    ) -> list[dict[str, Any]]:
        """Logprob entries of the prompt's tokens: the first has none, the rest `scored`."""
        entries = [logprob_entry(self._text(prompt[0]), None, None)]
        for tid, (lp, top) in zip(prompt[1:], scored, strict=False):
            alternatives = [(self._text(t), float(v)) for t, v in top[: self.req.top_logprobs]]
            entries.append(logprob_entry(self._text(tid), float(lp), alternatives))
        return entries

    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.model.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text
