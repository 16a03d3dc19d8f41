"""LLMEngine on CPU in fp32 with the real stories260k model: batching never changes tokens."""

from __future__ import annotations

import json

import pytest
import torch

from cortex.config import EngineConfig
from cortex.errors import ContextLengthExceeded
from cortex.neuron.engine.llm_engine import LLMEngine
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.models.loading import load_model
from cortex.neuron.offline import LLM
from tests.support.checkpoints import STORIES

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
ROOMY = EngineConfig(block_size=4, max_batch=8, max_num_batched_tokens=64, cuda_graphs=False)
#: A budget no prompt here reaches: every prompt prefills whole in one step.
WHOLE = EngineConfig(block_size=4, max_batch=16, max_num_batched_tokens=4096, cuda_graphs=False)


@pytest.fixture(scope="module")
def model():
    return load_model(STORIES, torch.device("cpu"), torch.float32)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths, starting with BOS like the model's training data."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [
            1,
            *torch.randint(
                3, 512, (int(torch.randint(2, 40, (1,), generator=gen)),), generator=gen
            ).tolist(),
        ]
        for _ in range(n)
    ]


def mixed_params(n: int) -> list[SamplingParams]:
    """Greedy and seeded sampling with the different filters and penalties, and lengths."""
    kinds = [
        dict(temperature=0.0),
        dict(temperature=0.9, seed=11),
        dict(temperature=1.0, top_k=20, seed=12),
        dict(temperature=0.8, top_p=0.9, seed=13),
        dict(temperature=1.2, min_p=0.05, seed=14),
        dict(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5),
        dict(temperature=0.7, presence_penalty=0.8, seed=15),
    ]
    return [
        SamplingParams(max_tokens=8 + 5 * (i % 4), ignore_eos=True, **kinds[i % len(kinds)])
        for i in range(n)
    ]


def alone(model, prompt: list[int], params: SamplingParams) -> list[int]:
    return LLM(model=model, config=ROOMY).generate([prompt], params)[0]


def test_reference_greedy_tokens(model):
    cases = json.loads((STORIES / "expected" / "greedy.json").read_text())["cases"]
    llm = LLM(model=model, config=ROOMY)
    got = llm.generate(
        [c["prompt_ids"] for c in cases],
        [
            SamplingParams(temperature=0.0, max_tokens=c["max_new_tokens"], ignore_eos=True)
            for c in cases
        ],
    )
    assert got == [c["generated_ids"] for c in cases]


def test_concurrent_requests_match_each_alone(model):
    ps, params = prompts(7), mixed_params(7)
    batched = LLM(model=model, config=ROOMY).generate(ps, params)
    assert batched == [alone(model, p, sp) for p, sp in zip(ps, params, strict=True)]
    assert [len(o) for o in batched] == [sp.max_tokens for sp in params]


def test_request_joining_mid_batch_disturbs_nothing(model):
    ps, params = prompts(4, seed=1), mixed_params(4)
    engine = LLMEngine(model, ROOMY)
    seqs = [engine.add_request(p, sp) for p, sp in zip(ps[:3], params[:3], strict=True)]
    for _ in range(6):
        engine.step()
    seqs.append(engine.add_request(ps[3], params[3]))
    while engine.has_work:
        engine.step()
    assert [s.output_ids for s in seqs] == [
        alone(model, p, sp) for p, sp in zip(ps, params, strict=True)
    ]


def test_preemption_under_tiny_kv_budget(model):
    ps, params = prompts(8, seed=2), mixed_params(8)
    # Blocks of 4 tokens cost 4*2*5*4*8*4 bytes = 5 KiB; 24 blocks hold about 2 sequences.
    tight = EngineConfig(
        block_size=4, max_batch=8, max_num_batched_tokens=32, cpu_kv_cache_bytes=25 * 5120,
        cuda_graphs=False,
    )  # fmt: skip
    llm = LLM(model=model, config=tight, max_context=96)
    assert llm.engine.blocks.num_blocks == 24
    got = llm.generate(ps, params)
    assert llm.engine.stats().preemptions > 0
    # Batched equals alone (test above), so an unconstrained batch is the reference.
    assert got == LLM(model=model, config=ROOMY).generate(ps, params)
    assert llm.engine.blocks.num_used == 0


def test_prefix_cache_reuse_reports_cached_tokens(model):
    system = prompts(1, seed=3)[0] + list(range(100, 130))  # a long shared prefix
    first, second = system + [7, 8, 9], system + [20, 21]
    engine = LLMEngine(model, ROOMY)
    engine.add_request(first, GREEDY)
    while engine.has_work:
        engine.step()
    seq = engine.add_request(second, GREEDY)
    outs = []
    while engine.has_work:
        outs += [o for s, o in engine.step() if s is seq]
    cached = len(system) // 4 * 4
    assert outs[0].cached_tokens == cached and outs[0].prompt_tokens == len(second)
    assert engine.stats().prefix_hits == cached
    no_cache = EngineConfig(block_size=4, prefix_cache=False, cuda_graphs=False)
    assert seq.output_ids == LLM(model=model, config=no_cache).generate([second], GREEDY)[0]


def test_cancel_frees_every_block(model):
    engine = LLMEngine(model, ROOMY)
    keeper = engine.add_request(
        prompts(1, seed=4)[0], SamplingParams(max_tokens=10**6, ignore_eos=True)
    )
    engine.step()
    ps = prompts(30, seed=5)
    for round_ in range(20):
        seqs = [engine.add_request(p, GREEDY) for p in ps[round_ % 4 :: 4]]
        for _ in range(round_ % 3 + 1):
            engine.step()
        for seq in seqs:
            engine.abort(seq)
        assert engine.blocks.num_used == len(keeper.block_table)
    assert engine.scheduler.running == [keeper] and not engine.scheduler.waiting
    engine.abort(keeper)
    assert engine.blocks.num_used == 0 and not engine.runner._generators


def test_stop_token_is_not_emitted_and_context_limit(model):
    engine = LLMEngine(model, ROOMY, max_context=32)
    probe = LLM(model=model, config=ROOMY).generate([[1, 400]], GREEDY)[0]
    seq = engine.add_request([1, 400], SamplingParams(temperature=0.0, stop_token_ids=[probe[3]]))
    outs = []
    while engine.has_work:
        outs += [o for _, o in engine.step()]
    assert [t for o in outs for t in o.token_ids] == probe[:3]
    assert outs[-1].finish_reason == "stop" and seq.finish_reason == "stop"
    long = engine.add_request(
        [1] * 20, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
    )
    while engine.has_work:
        engine.step()
    assert long.finish_reason == "length" and len(long) == 32
    with pytest.raises(ContextLengthExceeded):
        engine.add_request([1] * 32, GREEDY)


def run_recording(model, config: EngineConfig, ps, params) -> tuple[list, LLMEngine, list]:
    """Run every prompt at once; returns the sequences, the engine, and per step
    (decode rows, prompt-chunk tokens)."""
    engine = LLMEngine(model, config)
    schedule = engine.scheduler.schedule
    steps: list[tuple[int, int]] = []

    def recording_schedule():
        batch = schedule()
        if batch is not None:
            steps.append((len(batch.decodes), batch.num_prefill_tokens))
        return batch

    engine.scheduler.schedule = recording_schedule
    seqs = [engine.add_request(p, sp) for p, sp in zip(ps, params, strict=True)]
    while engine.has_work:
        engine.step()
    return seqs, engine, steps


def test_chunked_mixed_steps_give_the_tokens_of_whole_prefills(model):
    shared = prompts(1, seed=6)[0] + list(range(200, 240))  # a prefix longer than the budget
    ps = [*prompts(5, seed=7), shared + [11, 12], shared + [13], shared[:30] + [14, 15, 16]]
    params = [GREEDY] * len(ps) + mixed_params(len(ps))
    ps = ps + ps
    small = EngineConfig(block_size=4, max_batch=16, max_num_batched_tokens=16, cuda_graphs=False)
    whole, _, whole_steps = run_recording(model, WHOLE, ps, params)
    chunked, engine, steps = run_recording(model, small, ps, params)
    assert [s.output_ids for s in chunked] == [s.output_ids for s in whole]
    assert all(len(s.output_ids) == sp.max_tokens for s, sp in zip(chunked, params, strict=True))
    # The huge budget prefilled every prompt whole in its first step; the small one chunked
    # them and mixed the chunks with decodes.
    assert whole_steps[0] == (0, sum(len(p) for p in ps))
    assert all(d + n <= 16 for d, n in steps)
    assert sum(1 for d, n in steps if d and n) >= 5
    assert engine.stats().prefix_hits > 0  # later prompts reuse the shared prefix's blocks
    assert engine.stats().prompt_tokens == sum(n for _, n in steps)


def test_prompt_logprobs_survive_chunking(model):
    ps = [prompts(1, seed=8)[0] + list(range(300, 330)), prompts(1, seed=9)[0]]
    params = [
        SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=True, top_logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
    ]
    whole, _, whole_steps = run_recording(model, WHOLE, ps, params)
    small = EngineConfig(block_size=4, max_batch=4, max_num_batched_tokens=5, cuda_graphs=False)
    chunked, _, steps = run_recording(model, small, ps, params)
    assert whole_steps[0] == (0, sum(len(p) for p in ps))
    assert max(n for _, n in steps) == 5 and len(steps) > len(ps[0]) // 5
    got, want = chunked[0].prompt_logprobs, whole[0].prompt_logprobs
    assert len(got) == len(want) == len(ps[0]) - 1
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    assert [[i for i, _ in top] for _, top in got] == [[i for i, _ in top] for _, top in want]
    assert [s.output_ids for s in chunked] == [s.output_ids for s in whole]
