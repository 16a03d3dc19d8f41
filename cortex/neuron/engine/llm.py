"""Offline batched generation on the calling thread, for tests, scripts and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from cortex.neuron.engine.config import EngineConfig
from cortex.neuron.engine.engine import LLMEngine
from cortex.neuron.models import load_model
from cortex.neuron.sampling import SamplingParams


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
