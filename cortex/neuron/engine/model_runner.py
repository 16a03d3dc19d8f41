"""Runs one scheduled batch on the device: inputs, forward, logits, sampling.

The runner owns the model's paged KV cache. A step builds its flat token batch and
`AttentionMetadata` on the host (one small tensor per field), copies them over, runs the
model, and samples on the device; the only host sync is reading the sampled ids back. Decode
steps keep static shapes per batch size, so `cuda_graph.DecodeGraphs` can replay them.

Per-step host work is kept small because it dominates small models (a 260K-parameter model
decodes a token in about a millisecond): decode inputs come straight from Python ints, and
the SamplingBatch is reused while the same sequences sample (see `_sampling_batch`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import torch

from cortex.config import EngineConfig
from cortex.neuron.engine.cuda_graph import DecodeGraphs
from cortex.neuron.engine.kv_budget import plan_kv_cache
from cortex.neuron.engine.sampling import Sampler, SamplingBatch, make_generator
from cortex.neuron.engine.scheduler import ScheduledBatch
from cortex.neuron.engine.sequence import Sequence
from cortex.neuron.models.attention import AttentionMetadata, KVCache

log = logging.getLogger(__name__)


@dataclass
class SampledTokens:
    """Host-side results of one step, one entry per sequence in `batch.sampling`."""

    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    #: Rows (indexes into `batch.sampling`) whose sampling failed alone, with why; their
    #: `token_ids` entries are placeholders.
    failed: dict[int, str] = field(default_factory=dict)


class ModelRunner:
    """Owns the model's KV cache and sampler; `run(batch)` executes one engine step."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: EngineConfig,
        max_context: int,
        memory: int | None = None,
    ) -> None:
        self.model = model
        self.device: torch.device = model.device
        self.block_size = config.block_size
        plan = plan_kv_cache(model, config, max_context, memory)
        self.num_blocks, self.max_context = plan.num_blocks, plan.max_context
        self.scratch_block = self.num_blocks
        self.max_blocks_per_seq = -(-self.max_context // self.block_size)
        self.kv_cache = KVCache.allocate(
            model.config, self.num_blocks + 1, self.block_size, self.device, model.dtype
        )
        model.bind_kv_cache(self.kv_cache)
        self.sampler = Sampler()
        self._generators: dict[int, torch.Generator] = {}
        # (seq ids, batch) of the last step's sampling settings; see `_sampling_batch`.
        self._sampling: tuple[tuple[int, ...], SamplingBatch] | None = None
        self.graphs = None
        if config.cuda_graphs and self.device.type == "cuda":
            self.graphs = DecodeGraphs(
                model,
                config.max_batch,
                self.max_blocks_per_seq,
                self.block_size,
                self.scratch_block,
            )

    @property
    def graphs_state(self) -> str:
        """How decode runs, for `/health`: "captured" (CUDA graphs), "eager" (no graphs: the
        CPU, or `cuda_graphs = false`), or "failed: <why>" (a capture failed; eager since)."""
        return "eager" if self.graphs is None else self.graphs.state

    @property
    def kv_cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv_cache.k + self.kv_cache.v)

    def release(self, seq_id: int) -> None:
        """Forget a finished or aborted sequence's sampling state."""
        self._generators.pop(seq_id, None)

    def close(self) -> None:
        """Drop the KV cache and captured graphs (the caller frees the model)."""
        self.model.bind_kv_cache(None)
        self.graphs = None
        self.kv_cache = None
        self._generators.clear()
        self._sampling = None

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> SampledTokens:
        """Forward the batch and sample one token for each sequence in `batch.sampling`."""
        input_ids, positions, attn, last_rows = self.prepare(batch)
        if self.graphs is not None and batch.is_decode:
            hidden = self.graphs.forward(input_ids, positions, attn)
        else:
            hidden = self.model(input_ids, positions, attn)
        if not batch.is_decode:
            # Before the early return: a chunk that does not finish its prompt still scores it.
            self._prompt_logprobs(batch, hidden, attn.query_start_loc_host)
        if not batch.sampling:
            return SampledTokens([])
        rows = hidden if last_rows is None else hidden[last_rows]
        logits = self.model.compute_logits(rows)
        params = [s.params for s in batch.sampling]
        try:
            sampling = self._sampling_batch(batch.sampling)
            result = self.sampler.sample(logits, sampling)
        except Exception:
            # One request's settings can break the batch's sampling (a value a tensor cannot
            # hold): sample row by row so only that request fails and the others go on.
            log.exception("sampling a batch of %d failed; isolating rows", len(params))
            self._sampling = None
            return self._sample_rows(logits, batch.sampling)
        sampling.observe(result.token_ids)  # penalty counts follow the histories
        sampled = self._to_host(result, params)
        if sampling.adjust is not None:
            sampling.adjust.accept(sampled.token_ids)  # grammars follow the sampled tokens
        return sampled

    def _sample_rows(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampledTokens:
        """Sample each row alone; a row that fails is reported in `failed`, not raised."""
        out = SampledTokens([], [], [])
        for i, seq in enumerate(seqs):
            try:
                row = self._build_sampling([seq])
                one = self._to_host(self.sampler.sample(logits[i : i + 1], row), [seq.params])
                if row.adjust is not None:
                    row.adjust.accept(one.token_ids)
            except Exception as exc:
                out.failed[i] = f"{type(exc).__name__}: {exc}"
                one = SampledTokens([0], [0.0], [[]])
            out.token_ids += one.token_ids
            out.logprobs += one.logprobs or [0.0]
            out.top_logprobs += one.top_logprobs or [[]]
        return out

    def _prompt_logprobs(self, batch: ScheduledBatch, hidden: torch.Tensor, qsl: list[int]) -> None:
        """Record the logprobs of the prompt tokens this prefill computed, for the sequences
        that asked (`params.prompt_logprobs`); a recomputation after a preemption adds none."""
        for i, seq in enumerate(batch.seqs):
            if not seq.params.prompt_logprobs:
                continue
            start = seq.num_computed  # position of the chunk's first token
            # Position p predicts token p + 1: keep the predictions of prompt tokens not yet
            # recorded (prompt token k + 1 is entry k).
            first = max(start, len(seq.prompt_logprobs))
            last = min(start + seq.num_scheduled, seq.num_prompt_tokens - 1)
            if first >= last:
                continue
            rows = hidden[qsl[i] + first - start : qsl[i] + last - start]  # [N, H]
            raw = torch.log_softmax(self.model.compute_logits(rows).float(), dim=-1)  # [N, V]
            targets = torch.tensor(seq.token_ids[first + 1 : last + 1], device=raw.device)
            chosen = raw.gather(1, targets[:, None]).squeeze(1).tolist()  # [N]
            k = seq.params.top_logprobs
            tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
            if k:
                values, ids = raw.topk(k, dim=-1)  # [N, k]
                tops = [
                    list(zip(i, v, strict=True))
                    for i, v in zip(ids.tolist(), values.tolist(), strict=True)
                ]
            seq.prompt_logprobs += list(zip(chosen, tops, strict=True))

    def _sampling_batch(self, seqs: list[Sequence]) -> SamplingBatch:
        """The step's SamplingBatch, reused while the same sequences sample.

        A sequence's params and generator never change and the batch's penalty counts are
        updated with every sampled token (`observe`), so only a change of the batch's members
        needs a rebuild (which re-reads the histories when penalties are on).
        """
        key = tuple(s.seq_id for s in seqs)
        if self._sampling is not None and self._sampling[0] == key:
            return self._sampling[1]
        sampling = self._build_sampling(seqs)
        self._sampling = (key, sampling)
        return sampling

    def _build_sampling(self, seqs: list[Sequence]) -> SamplingBatch:
        return SamplingBatch.build(
            [s.params for s in seqs],
            [s.token_ids for s in seqs],
            [self._generator(s.seq_id, s.params.seed) for s in seqs],
            self.device,
            prompt_lens=[s.num_prompt_tokens for s in seqs],
            stop_ids=[s.stop_ids for s in seqs],
        )

    def prepare(
        self, batch: ScheduledBatch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor | None]:
        """Device inputs for a batch: ids [T], positions [T], metadata, last-token rows [N].

        Block tables are padded with the scratch block to the widest table in the batch. A
        decode step (one token per sequence, all of them sampling) is built with plain Python
        over its few sequences and one tensor per field; its last-token rows are None (every
        row samples). A step with prompt chunks (decode rows are then one-token queries among
        them) is built with vectorised ops over its many tokens; only the last token of each
        sampling sequence gets logits.
        """
        seqs = batch.seqs
        bs = self.block_size
        width = max(len(s.block_table) for s in seqs)
        pad = [self.scratch_block] * width
        tables = torch.tensor(
            [s.block_table + pad[len(s.block_table) :] for s in seqs], dtype=torch.int32
        )  # [B, width]
        starts = [s.num_computed for s in seqs]
        if batch.is_decode:
            ctx = [a + 1 for a in starts]
            qsl = list(range(len(seqs) + 1))
            ids = torch.tensor([s.token_ids[-1] for s in seqs])
            positions = torch.tensor(starts)
            slots = torch.tensor(
                [s.block_table[a // bs] * bs + a % bs for s, a in zip(seqs, starts, strict=True)]
            )
            last_rows = None
        else:
            lens = [s.num_scheduled for s in seqs]
            ctx = [a + n for a, n in zip(starts, lens, strict=True)]
            qsl = [0, *itertools.accumulate(lens)]
            ids = torch.tensor(list(itertools.chain.from_iterable(
                s.token_ids[a : a + n] for s, a, n in zip(seqs, starts, lens, strict=True)
            )))  # fmt: skip
            row = torch.arange(len(seqs)).repeat_interleave(torch.tensor(lens))  # seq of a token
            positions = torch.arange(qsl[-1]) + (torch.tensor(starts) - torch.tensor(qsl[:-1]))[row]
            slots = tables[row, positions // bs].long() * bs + positions % bs
            last_rows = self._put(
                torch.tensor([qsl[i + 1] - 1 for i, s in enumerate(seqs) if s.samples_this_step])
            )
        attn = AttentionMetadata(
            slot_mapping=self._put(slots),
            block_tables=self._put(tables),
            context_lens=self._put(torch.tensor(ctx, dtype=torch.int32)),
            query_start_loc=self._put(torch.tensor(qsl, dtype=torch.int32)),
            is_decode=batch.is_decode,
            max_context_len=max(ctx),
            query_start_loc_host=qsl,
            context_lens_host=ctx,
        )
        return self._put(ids), self._put(positions), attn, last_rows

    def _put(self, t: torch.Tensor) -> torch.Tensor:
        # Small host tensors: an asynchronous copy from pageable memory needs no device sync.
        return t.to(self.device, non_blocking=True)

    def _generator(self, seq_id: int, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = self._generators.get(seq_id)
        if gen is None:
            gen = make_generator(seed, self.device)
            self._generators[seq_id] = gen
        return gen

    @staticmethod
    def _to_host(result, params: list) -> SampledTokens:
        """Read sampled ids (and logprobs when any request asked) back: one sync each."""
        token_ids = result.token_ids.tolist()
        if result.logprobs is None:
            return SampledTokens(token_ids)
        logprobs = result.logprobs.tolist()
        top: list[list[tuple[int, float]]] = [[] for _ in params]
        if result.top_ids is not None:
            ids, lps = result.top_ids.tolist(), result.top_logprobs.tolist()
            top = [
                list(zip(i[: p.top_logprobs], lp[: p.top_logprobs], strict=True))
                for i, lp, p in zip(ids, lps, params, strict=True)
            ]
        return SampledTokens(token_ids, logprobs, top)
