"""Scheduler and block manager: no model, a deterministic stand-in for sampling."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cortex.config import EngineConfig, parse_size
from cortex.neuron.engine.block_manager import BlockManager
from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.engine.scheduler import Scheduler
from cortex.neuron.engine.sequence import Sequence, SequenceStatus


def make_seq(seq_id: int, prompt: list[int], max_tokens: int = 8, **kw) -> Sequence:
    return Sequence(seq_id, prompt, SamplingParams(max_tokens=max_tokens), **kw)


def next_token(seq: Sequence) -> int:
    """A pure function of the whole history, like greedy decoding of a fixed model."""
    return (sum(seq.token_ids) * 31 + len(seq)) % 97 + 3


def check_invariants(sched: Scheduler) -> None:
    bm = sched.blocks
    refs = Counter(b for s in sched.running for b in s.block_table)
    for block in range(bm.num_blocks):
        assert bm.ref_counts[block] == refs.get(block, 0)
    assert bm.num_used == len(refs)
    for seq in sched.waiting:
        assert not seq.block_table
    for seq in sched.running:
        assert len(seq.block_table) * bm.block_size >= seq.num_computed + seq.num_scheduled


def run(sched: Scheduler, seqs: list[Sequence], join_at: dict[int, list[Sequence]] | None = None):
    """Drive the scheduler to completion; returns the batches it produced."""
    for seq in seqs:
        sched.add(seq)
    batches = []
    step = 0
    while sched.has_work or (join_at and any(k >= step for k in join_at)):
        for seq in (join_at or {}).pop(step, []):
            sched.add(seq)
        batch = sched.schedule()
        step += 1
        if batch is None:
            continue
        check_invariants(sched)
        batches.append((batch.is_decode, [(s.seq_id, s.num_scheduled) for s in batch.seqs]))
        sched.finish_step(batch, [next_token(s) for s in batch.sampling])
        check_invariants(sched)
    return batches


def test_hash_chain_matches_whole_prefixes_only():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(0, list(range(1, 14)))  # 3 full blocks + 1 token
    bm.admit(a, bm.match_prefix(a), len(a))
    a.num_computed = len(a)
    bm.commit(a)
    assert bm.num_cached_blocks == 3

    same = make_seq(1, list(range(1, 14)) + [99])
    assert bm.match_prefix(same) == a.block_table[:3]
    # A different first block breaks the chain even though later blocks are equal.
    other = make_seq(2, [42, 2, 3, 4] + list(range(5, 14)))
    assert bm.match_prefix(other) == []
    # The last token is always left to compute, even when the whole prompt is cached.
    exact = make_seq(3, list(range(1, 13)))
    assert bm.match_prefix(exact) == a.block_table[:2]


def test_ref_counts_and_cached_tokens():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(0, list(range(10)))
    bm.admit(a, [], len(a))
    a.num_computed = len(a)
    bm.commit(a)
    b = make_seq(1, list(range(10)) + [7, 7])
    matched = bm.match_prefix(b)
    assert matched == a.block_table[:2]
    bm.admit(b, matched, len(b))
    assert b.num_cached_tokens == 8 and b.num_computed == 8
    assert bm.hit_tokens == 8
    assert [bm.ref_counts[x] for x in matched] == [2, 2]
    assert bm.num_used == 3 + 1  # a's three blocks, b's own third block
    bm.free(a)
    assert [bm.ref_counts[x] for x in matched] == [1, 1]
    bm.free(b)
    assert bm.num_used == 0 and bm.num_free == 8
    assert bm.num_cached_blocks == 2  # still reusable after release


def test_lru_evicts_least_recently_freed_and_deepest_first():
    bm = BlockManager(num_blocks=6, block_size=2)
    a = make_seq(0, [1, 2, 3, 4, 5])
    b = make_seq(1, [6, 7, 8, 9, 10])
    for seq in (a, b):
        bm.admit(seq, [], len(seq))
        seq.num_computed = len(seq)
        bm.commit(seq)
    a_blocks, b_blocks = a.block_table[:2], b.block_table[:2]
    bm.free(a)
    bm.free(b)
    assert bm.num_cached_blocks == 4 and bm.num_free == 6
    # Two plain blocks go first, then a's deepest block, then a's first.
    c = make_seq(2, list(range(20, 27)))
    bm.admit(c, [], 7)
    assert set(a_blocks) <= set(c.block_table)
    assert bm.match_prefix(make_seq(3, [1, 2, 3, 4, 5])) == []
    assert bm.match_prefix(make_seq(4, [6, 7, 8, 9, 10])) == b_blocks
    # Reusing a cached block refreshes it: it leaves the evictable set.
    d = make_seq(5, [6, 7, 8, 9, 11])
    assert bm.can_admit(bm.match_prefix(d), 5) is False  # c holds 4, b's 2 are the free ones
    bm.free(c)
    bm.admit(d, bm.match_prefix(d), 5)
    assert d.block_table[:2] == b_blocks and d.num_cached_tokens == 4


def test_chunked_prefill_respects_budget_and_alternates_with_decode():
    bm = BlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(bm, max_batch=8, max_prefill_tokens=8)
    short = make_seq(0, [5, 6, 7], max_tokens=6)
    long = make_seq(1, list(range(1, 30)), max_tokens=2)
    batches = run(sched, [short], join_at={2: [long]})
    for is_decode, items in batches:
        assert sum(n for _, n in items) <= (len(items) if is_decode else 8)
    # The long prompt is split into chunks of at most 8, and decodes of `short` interleave.
    long_chunks = [n for d, items in batches if not d for i, n in items if i == 1]
    assert sum(long_chunks) == 29 and max(long_chunks) == 8 and len(long_chunks) == 4
    kinds = [d for d, items in batches if any(i == 0 for i, _ in items) or not d]
    assert True in kinds[2:6] and False in kinds[2:6]
    assert long.finish_reason == "length" and long.num_output_tokens == 2
    assert short.num_output_tokens == 6


def test_preemption_under_tiny_cache_gives_identical_tokens():
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 50) for _ in range(rng.randrange(3, 20))] for _ in range(12)]

    def outputs(num_blocks: int) -> tuple[list[list[int]], int]:
        bm = BlockManager(num_blocks=num_blocks, block_size=4)
        sched = Scheduler(bm, max_batch=6, max_prefill_tokens=16)
        seqs = [make_seq(i, p, max_tokens=10) for i, p in enumerate(prompts)]
        run(sched, seqs)
        assert bm.num_used == 0
        assert all(s.is_finished for s in seqs)
        return [s.output_ids for s in seqs], sched.num_preemptions

    roomy, roomy_preempted = outputs(256)
    tight, tight_preempted = outputs(8)  # one sequence of 30 tokens needs all 8 blocks
    assert roomy_preempted == 0 and tight_preempted > 0
    assert tight == roomy


def test_stop_token_eos_and_max_len():
    sched = Scheduler(BlockManager(16, 4), max_batch=4, max_prefill_tokens=64)
    probe = make_seq(0, [1, 2, 3])
    stop = next_token(probe)
    a = make_seq(1, [1, 2, 3], eos_token_ids=[stop])
    b = Sequence(2, [1, 2, 3], SamplingParams(ignore_eos=True, max_tokens=3), eos_token_ids=[stop])
    c = make_seq(3, [1, 2, 3], max_tokens=100, max_len=6)
    run(sched, [a, b, c])
    assert a.finish_reason == "stop" and a.output_ids == [stop]
    assert b.finish_reason == "length" and b.num_output_tokens == 3
    assert c.finish_reason == "length" and len(c) == 6


def test_max_batch_limits_running():
    sched = Scheduler(BlockManager(128, 4), max_batch=3, max_prefill_tokens=1000)
    seqs = [make_seq(i, [i + 1, 2, 3], max_tokens=4) for i in range(7)]
    for seq in seqs:
        sched.add(seq)
    while sched.has_work:
        batch = sched.schedule()
        assert len(sched.running) <= 3 and len(batch.seqs) <= 3
        sched.finish_step(batch, [next_token(s) for s in batch.sampling])
    assert all(s.num_output_tokens == 4 for s in seqs)


@pytest.mark.parametrize("phase", ["waiting", "prefilling", "decoding"])
def test_thousands_of_aborts_leak_nothing(phase):
    bm = BlockManager(num_blocks=1024, block_size=4)
    sched = Scheduler(bm, max_batch=8, max_prefill_tokens=8)
    keeper = make_seq(0, [9, 9, 9, 9, 9, 1], max_tokens=10**6)
    sched.add(keeper)
    sched.finish_step(sched.schedule(), [1])
    rng = random.Random(1)
    for i in range(1, 2001 if phase == "waiting" else 1001):
        seq = make_seq(i, [rng.randrange(100) for _ in range(rng.randrange(1, 30))], 50)
        sched.add(seq)
        if phase != "waiting":
            for _ in range(1 if phase == "prefilling" else 3):
                batch = sched.schedule()
                sched.finish_step(batch, [next_token(s) for s in batch.sampling])
        sched.abort(seq)
        assert seq.status is SequenceStatus.FINISHED and not seq.block_table
        assert bm.num_used == len(keeper.block_table)  # the keeper grows as it decodes
        check_invariants(sched)
    assert sched.running == [keeper] and not sched.waiting


def test_engine_config_checks_its_ranges():
    config = EngineConfig(max_batch=4, cpu_kv_cache_bytes=parse_size("64MiB"), cuda_graphs=False)
    assert (config.max_batch, config.cpu_kv_cache_bytes, config.cuda_graphs) == (4, 2**26, False)
    for bad in ({"kv_cache_memory": 0.0}, {"max_prefill_tokens": 0}, {"block_size": 0}):
        with pytest.raises(ValueError):
            EngineConfig(**bad)
