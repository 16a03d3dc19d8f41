"""The offline Python API, on the calling thread: `LLM` (token ids in, token ids out, every
prompt batched through one engine: tests, scripts, benchmarks) and `load`/`generate()` (text in,
deltas out, for scripts and notebooks).

    model = load("models/stories260k")
    for delta in generate(model, "Once upon a time", SamplingParams(max_tokens=32)):
        print(delta.text, end="")

It runs the same engine, tokenizer and text pipeline as `cortex neuron` (continuous batching
engine, chat template, stop strings, reasoning split, tool calls), on the calling thread, on CPU
or CUDA. A prompt is plain text, chat messages (rendered with the model's chat template), or
token ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.llm_engine import LLMEngine
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.models.loading import load_model
from cortex.neuron.text import load_tokenizer
from cortex.neuron.text.parsers import Delta
from cortex.neuron.text.textstream import TextStream
from cortex.neuron.text.tokenizer import Tokenizer

Prompt = str | Sequence[dict[str, Any]] | Sequence[int]


class LLM:
    """`LLM(path).generate(prompts, params)`: every prompt batched through one engine."""

    def __init__(
        self,
        path: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        *,
        config: EngineConfig | None = None,
        max_context: int | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        if model is None:
            if path is None:
                raise ValueError("LLM needs a model path or a model")
            model = load_model(Path(path), torch.device(device), dtype)
        self.engine = LLMEngine(model, config or EngineConfig(), max_context)

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[list[int]]:
        """Generated token ids for each prompt (a stop/EOS token that ended one excluded)."""
        if params is None:
            params = SamplingParams()
        if not isinstance(params, list):
            params = [params] * len(prompts)
        seqs = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        outputs: dict[int, list[int]] = {s.seq_id: [] for s in seqs}
        while self.engine.has_work:
            for seq, out in self.engine.step():
                outputs[seq.seq_id].extend(out.token_ids)
        return [outputs[s.seq_id] for s in seqs]


@dataclass
class Model:
    """A loaded model with its tokenizer."""

    llm: LLM
    tokenizer: Tokenizer


def load(
    path: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    max_context: int | None = None,
) -> Model:
    """Load a model directory or GGUF file onto `device`."""
    return Model(LLM(path, device, dtype, max_context=max_context), load_tokenizer(path))


def prompt_ids(
    tokenizer: Tokenizer,
    prompt: Prompt,
    tools: list[dict[str, Any]] | None = None,
    **template_kwargs: Any,
) -> list[int]:
    """Token ids of a text prompt, chat messages (through the chat template) or ids."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if prompt and isinstance(prompt[0], dict):
        return tokenizer.encode_chat(list(prompt), tools, True, **template_kwargs)
    return [int(i) for i in prompt]


def generate(
    model: Model,
    prompt: Prompt,
    params: SamplingParams | None = None,
    *,
    tools: list[dict[str, Any]] | None = None,
    **template_kwargs: Any,
) -> Iterator[Delta]:
    """Stream the answer as deltas: content, reasoning and tool calls, stop strings cut."""
    params = params or SamplingParams()
    ids = prompt_ids(model.tokenizer, prompt, tools, **template_kwargs)
    stream = TextStream(model.tokenizer, ids, stop=params.stop, tools=bool(tools))
    engine = model.llm.engine
    seq = engine.add_request(ids, params)
    try:
        while not seq.is_finished and not stream.stopped:
            for stepped, out in engine.step():
                if stepped is seq:
                    yield from stream.push(out.token_ids)
    finally:
        if not seq.is_finished:
            engine.abort(seq)
    yield from stream.finish(seq.finish_reason or "stop")
