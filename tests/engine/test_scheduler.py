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


def run_steps(sched: Scheduler, seqs: list[Sequence], steps: int) -> None:
    """Add `seqs` and run `steps` steps."""
    for seq in seqs:
        sched.add(seq)
    for _ in range(steps):
        batch = sched.schedule()
        sched.finish_step(batch, [next_token(s) for s in batch.sampling])


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
        assert batch.num_tokens <= sched.max_num_batched_tokens
        assert all(s.status is SequenceStatus.RUNNING and s.num_scheduled for s in batch.seqs)
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


def test_long_prompt_prefills_in_chunks_and_samples_only_at_its_end():
    sched = Scheduler(
        BlockManager(num_blocks=64, block_size=4), max_batch=4, max_num_batched_tokens=8
    )
    long = make_seq(0, list(range(1, 30)), max_tokens=2)
    sched.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        batch = sched.schedule()
        assert batch.chunks == [long] and not batch.decodes and not batch.is_decode
        chunks.append(long.num_scheduled)
        assert batch.sampling == ([long] if sum(chunks) == 29 else [])
        sched.finish_step(batch, [next_token(s) for s in batch.sampling])
        assert long.num_computed == sum(chunks)
    assert chunks == [8, 8, 8, 5]
    batch = sched.schedule()  # the first generated token decodes alone: the fast path
    assert batch.is_decode and batch.decodes == [long] and batch.sampling == [long]


def test_a_step_mixes_every_decode_with_prompt_chunks_under_the_budget():
    sched = Scheduler(
        BlockManager(num_blocks=64, block_size=4), max_batch=8, max_num_batched_tokens=8
    )
    a, b = make_seq(0, [5, 6, 7], max_tokens=50), make_seq(1, [8, 9], max_tokens=50)
    run_steps(sched, [a, b], 2)
    long = make_seq(2, list(range(1, 30)), max_tokens=2)
    sched.add(long)
    batch = sched.schedule()
    # Decodes first, then the prompt's chunk takes what the decodes left of the budget.
    assert batch.decodes == [a, b] and batch.chunks == [long] and long.num_scheduled == 6
    assert batch.seqs == [a, b, long] and batch.sampling == [a, b] and not batch.is_decode
    assert batch.num_tokens == 8 and batch.num_prefill_tokens == 6


def test_decodes_keep_producing_tokens_during_a_long_prefill():
    sched = Scheduler(
        BlockManager(num_blocks=256, block_size=4), max_batch=8, max_num_batched_tokens=8
    )
    short = make_seq(0, [5, 6, 7], max_tokens=100)
    long = make_seq(1, list(range(1, 200)), max_tokens=3)
    batches = run(sched, [short], join_at={2: [long]})
    long_steps = [items for _, items in batches if any(i == 1 for i, _ in items)]
    chunks = [n for items in long_steps for i, n in items if i == 1]
    # 199 prompt tokens at most 7 a step (the decode takes one), then 2 decodes of its own.
    assert sum(chunks) == 199 + 2 and len(long_steps) == -(-199 // 7) + 2
    # `short` got a token in every one of those steps, the prompt's included.
    assert all((0, 1) in items for items in long_steps[: 199 // 7])
    assert all(sum(n for _, n in items) <= 8 for _, items in batches)
    assert short.num_output_tokens == 100 and long.num_output_tokens == 3


@pytest.mark.parametrize("budget", [6, 9, 16])
def test_preemption_under_tiny_cache_gives_identical_tokens(budget):
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 50) for _ in range(rng.randrange(3, 20))] for _ in range(12)]

    def outputs(num_blocks: int) -> tuple[list[list[int]], int]:
        bm = BlockManager(num_blocks=num_blocks, block_size=4)
        sched = Scheduler(bm, max_batch=6, max_num_batched_tokens=budget)
        seqs = [make_seq(i, p, max_tokens=10) for i, p in enumerate(prompts)]
        batches = run(sched, seqs)
        assert bm.num_used == 0
        assert all(s.is_finished for s in seqs)
        mixed = sum(1 for d, items in batches if not d and any(n == 1 for _, n in items))
        return [s.output_ids for s in seqs], sched.num_preemptions, mixed

    roomy, roomy_preempted, _ = outputs(256)
    tight, tight_preempted, tight_mixed = outputs(8)  # a sequence of 30 tokens needs all 8
    assert roomy_preempted == 0 and tight_preempted > 0 and tight_mixed > 0
    assert tight == roomy


def test_a_prompt_chunk_short_of_blocks_gives_way_to_the_decodes():
    def outputs(num_blocks: int) -> tuple[Sequence, Sequence, list, int]:
        sched = Scheduler(BlockManager(num_blocks, 4), max_batch=4, max_num_batched_tokens=8)
        short = make_seq(0, [1, 2, 3], max_tokens=20)
        long = make_seq(1, list(range(4, 32)), max_tokens=3)  # 7 blocks of the 8
        preempted_mid_prompt = 0
        batches = []
        for seq in (short, long):
            sched.add(seq)
        while sched.has_work:
            batch = sched.schedule()
            batches.append([s.seq_id for s in batch.decodes])
            sched.finish_step(batch, [next_token(s) for s in batch.sampling])
            check_invariants(sched)
            if long.status is SequenceStatus.WAITING and long.num_preemptions:
                preempted_mid_prompt += long.num_output_tokens == 0
        return short, long, batches, preempted_mid_prompt

    short, long, batches, preempted = outputs(8)
    roomy_short, roomy_long, _, _ = outputs(64)
    # `long`'s chunks fill the cache while `short` decodes; the chunk that no longer fits
    # preempts the newest sequence, `long` itself, and `short` decodes on without missing a
    # step. `long` prefills again once there is room, and its tokens are unchanged.
    assert preempted > 0 and long.num_preemptions > 0
    assert all(b[:1] == [0] for b in batches[1:20])
    assert (short.output_ids, long.output_ids) == (roomy_short.output_ids, roomy_long.output_ids)


def test_stop_token_eos_and_max_len():
    sched = Scheduler(BlockManager(16, 4), max_batch=4, max_num_batched_tokens=64)
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
    sched = Scheduler(BlockManager(128, 4), max_batch=3, max_num_batched_tokens=1000)
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
    sched = Scheduler(bm, max_batch=8, max_num_batched_tokens=8)
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
    for bad in (
        {"kv_cache_memory": 0.0},
        {"max_num_batched_tokens": 0},
        {"max_batch": 8, "max_num_batched_tokens": 7},
        {"block_size": 0},
    ):
        with pytest.raises(ValueError):
            EngineConfig(**bad)
