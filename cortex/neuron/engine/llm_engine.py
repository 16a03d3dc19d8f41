"""LLMEngine: one loaded model's scheduler, KV cache and step loop (single-threaded).

The DeviceWorker drives it from its device thread; `LLM` drives it directly for offline use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from cortex.config import EngineConfig
from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.engine.block_manager import BlockManager
from cortex.neuron.engine.model_runner import ModelRunner, SampledTokens
from cortex.neuron.engine.outputs import EngineStats, StepOutput
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.engine.scheduler import Scheduler
from cortex.neuron.engine.sequence import Sequence

_seq_ids = itertools.count()


@dataclass
class _Counters:
    prompt_tokens: int = 0
    generation_tokens: int = 0


def check_prompt(prompt_ids: list[int], max_context: int) -> None:
    """Raise unless the prompt has tokens and leaves room to generate within `max_context`."""
    if not prompt_ids:
        raise InvalidRequest("the prompt has no tokens", param="prompt")
    if len(prompt_ids) >= max_context:
        raise ContextLengthExceeded(len(prompt_ids), max_context)


class LLMEngine:
    """Continuous batching over a paged KV cache for one model on one device."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: EngineConfig,
        max_context: int | None = None,
        memory: int | None = None,
    ) -> None:
        limit = model.config.max_position_embeddings
        self.model = model
        self.config = config
        self.runner = ModelRunner(model, config, min(max_context or limit, limit), memory)
        self.max_context = self.runner.max_context
        self.blocks = BlockManager(self.runner.num_blocks, config.block_size, config.prefix_cache)
        self.scheduler = Scheduler(self.blocks, config.max_batch, config.max_num_batched_tokens)
        self.eos_token_ids = list(model.config.eos_token_id)
        self._counts = _Counters()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        """Queue a prompt; raises ContextLengthExceeded when it leaves no room to generate."""
        check_prompt(prompt_ids, self.max_context)
        seq = Sequence(
            next(_seq_ids),
            prompt_ids,
            params,
            eos_token_ids=self.eos_token_ids,
            max_len=self.max_context,
        )
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        """Drop a request now and free its blocks."""
        self.scheduler.abort(seq)
        self.runner.release(seq.seq_id)

    def abort_all(self) -> list[Sequence]:
        """Drop every request (after a failed step, or on unload); returns them."""
        seqs = [*self.scheduler.waiting, *self.scheduler.running]
        for seq in seqs:
            self.abort(seq)
        return seqs

    def step(self) -> list[tuple[Sequence, StepOutput]]:
        """Run one batch; returns an output for every sequence that sampled a token."""
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        sampled = self.runner.run(batch)
        self._counts.prompt_tokens += batch.num_prefill_tokens
        failed = [(batch.sampling[i], why) for i, why in sampled.failed.items()]
        if failed:
            # Only the rows that sampled go on; the failed ones leave the batch below.
            keep = [i for i in range(len(batch.sampling)) if i not in sampled.failed]
            batch.sampling = [batch.sampling[i] for i in keep]
            sampled = SampledTokens(
                [sampled.token_ids[i] for i in keep],
                [sampled.logprobs[i] for i in keep] if sampled.logprobs else None,
                [sampled.top_logprobs[i] for i in keep] if sampled.top_logprobs else None,
            )
        self.scheduler.finish_step(batch, sampled.token_ids)
        self._counts.generation_tokens += len(batch.sampling)
        outputs = [(seq, self._output(seq, sampled, i)) for i, seq in enumerate(batch.sampling)]
        for seq in batch.sampling:
            if seq.is_finished:
                self.runner.release(seq.seq_id)
        for seq, why in failed:
            self.abort(seq)
            outputs.append((seq, StepOutput(token_ids=[], finish_reason="abort", error=why)))
        return outputs

    @staticmethod
    def _output(seq: Sequence, sampled: SampledTokens, i: int) -> StepOutput:
        """The StepOutput for `seq`'s newest token (row `i` of the step's samples)."""
        stopped = seq.finish_reason == "stop"  # the last token is a stop/EOS id: not text
        out = StepOutput(
            token_ids=[] if stopped else [seq.token_ids[-1]],
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt_tokens,
            cached_tokens=seq.num_cached_tokens,
        )
        if seq.params.prompt_logprobs and seq.num_output_tokens == 1:
            out.prompt_logprobs = seq.prompt_logprobs
        wants = seq.params.logprobs or seq.params.top_logprobs
        if sampled.logprobs is not None and wants and not stopped:
            out.logprobs = [sampled.logprobs[i]]
            out.top_logprobs = [sampled.top_logprobs[i]]
        return out

    def stats(self) -> EngineStats:
        """Counters and gauges for metrics."""
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_used=self.blocks.num_used,
            kv_blocks_total=self.blocks.num_blocks,
            prefix_hits=self.blocks.hit_tokens,
            prompt_tokens=self._counts.prompt_tokens,
            generation_tokens=self._counts.generation_tokens,
            preemptions=self.scheduler.num_preemptions,
            graphs=self.runner.graphs_state,
        )

    def close(self) -> None:
        """Abort everything and release the KV cache."""
        self.abort_all()
        self.runner.close()
