"""Sampling: definitions on hand-made logits, seeds, masks, greedy equivalences."""

from __future__ import annotations

import pytest
import torch

from cortex.errors import InvalidRequest
from cortex.neuron.engine.sampling import (
    Sampler,
    SamplingBatch,
    SamplingParams,
    make_generator,
)
from cortex.neuron.generation import sequence_seed

VOCAB = 50


def batch(params: list[SamplingParams], histories=None, prompt_lens=None, generators=None):
    rows = len(params)
    generators = generators or [
        make_generator(p.seed, "cpu") if p.seed is not None else None for p in params
    ]
    return SamplingBatch.build(
        params,
        histories or [[] for _ in range(rows)],
        generators,
        "cpu",
        prompt_lens=prompt_lens,
    )


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_penalties_exact_values() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    # prompt [0, 1], output [2, 2, 3]: repetition over all four, the others over output only.
    b = SamplingBatch.build([params], [[0, 1, 2, 2, 3]], [None], "cpu", prompt_lens=[2])
    got = b.apply_penalties(logits)
    expected = torch.tensor([[1.0, -4.0, 0.5 - 1.0 - 0.25, -2.0 - 0.5 - 0.25, 0.5]])
    assert torch.allclose(got, expected)


def test_penalties_change_the_sampled_distribution() -> None:
    logits = torch.tensor([[3.0, 2.9] + [-10.0] * (VOCAB - 2)])
    plain = batch([SamplingParams(temperature=0)])
    penal = batch([SamplingParams(temperature=0, presence_penalty=1.0)], histories=[[0]])
    sampler = Sampler()
    assert sampler.sample(logits, plain).token_ids.item() == 0
    assert sampler.sample(logits, penal).token_ids.item() == 1


def test_greedy_and_top_k_one_are_argmax() -> None:
    logits = random_logits(6)
    params = [SamplingParams(temperature=0)] * 3 + [SamplingParams(temperature=1.5, top_k=1)] * 3
    out = Sampler(torch.Generator().manual_seed(1)).sample(logits, batch(params))
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()


def test_seeded_rows_reproduce_alone_and_in_a_batch() -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    logits = random_logits(1, seed=5).repeat(3, 1)
    alone, batched = [], []
    b_alone = batch([seeded])
    b_batch = batch([SamplingParams(temperature=1.0), seeded, SamplingParams(temperature=0.7)])
    sampler = Sampler()
    for _ in range(20):
        alone.append(sampler.sample(logits[:1], b_alone).token_ids.item())
        batched.append(sampler.sample(logits, b_batch).token_ids[1].item())
    assert alone == batched
    assert len(set(alone)) > 1  # it did sample


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2] + [0.0] * (VOCAB - 3))
    logits = probs.clamp(min=1e-30).log().repeat(4000, 1)
    params = [SamplingParams(temperature=1.0)] * 4000
    out = Sampler(torch.Generator().manual_seed(0)).sample(logits, batch(params)).token_ids
    freq = torch.bincount(out, minlength=VOCAB).float() / 4000
    assert torch.allclose(freq[:3], probs[:3], atol=0.03) and freq[3:].sum() == 0


def test_min_p_and_top_p_masks() -> None:
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05] + [0.0] * (VOCAB - 5))
    logits = probs.clamp(min=1e-30).log().repeat(3000, 1)
    sampler = Sampler(torch.Generator().manual_seed(0))

    def support(params: SamplingParams) -> set[int]:
        return set(sampler.sample(logits, batch([params] * 3000)).token_ids.tolist())

    assert support(SamplingParams(min_p=0.3)) == {0, 1, 2}  # floor 0.12
    assert support(SamplingParams(top_p=0.69)) == {0, 1}  # 0.4 + 0.3 reaches it
    assert support(SamplingParams(top_p=0.71)) == {0, 1, 2}
    assert support(SamplingParams(top_k=2)) == {0, 1}
    assert support(SamplingParams(top_k=4, top_p=0.8)) == {0, 1, 2}


def test_logprobs_are_raw_model_logprobs() -> None:
    logits = random_logits(2)
    params = [SamplingParams(temperature=0, logprobs=True, top_logprobs=3)] * 2
    out = Sampler().sample(logits, batch(params))
    raw = logits.log_softmax(-1)
    assert torch.allclose(out.logprobs, raw.max(-1).values)
    assert out.top_ids.tolist() == raw.topk(3).indices.tolist()
    assert torch.allclose(out.top_logprobs, raw.topk(3).values)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_p", 1.5),
        ("seed", 2**64),
        ("top_k", 2**40),
        ("temperature", float("inf")),
        ("max_tokens", -1),
        ("min_tokens", -1),
        ("logit_bias", {5: 200.0}),
        ("stop_token_ids", [2**40]),
    ],
)
def test_out_of_range_params_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match=field):
        SamplingParams(**{field: value})


def test_sequence_seeds_stay_int64() -> None:
    top = 2**63 - 1
    assert sequence_seed(top, 0) == top
    assert sequence_seed(top, 1) == -(2**63)
    assert sequence_seed(5, 2) == 7 and sequence_seed(None, 3) is None


def test_observe_keeps_penalty_counts_equal_to_a_rebuild() -> None:
    params = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.25)
    histories, prompt_lens = [[0, 1, 2, 2, 3], [4, 4, 5]], [2, 1]
    logits = random_logits(2)
    kept = batch([params, params], histories, prompt_lens)
    kept.apply_penalties(logits)  # materialises the counts, as the first step does
    kept.observe(torch.tensor([3, 7]))
    grown = [histories[0] + [3], histories[1] + [7]]
    rebuilt = batch([params, params], grown, prompt_lens)
    assert torch.equal(kept.apply_penalties(logits), rebuilt.apply_penalties(logits))
