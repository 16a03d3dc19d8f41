"""The real stories260k model reproduces its golden greedy continuations exactly."""

from __future__ import annotations

import json

import pytest
import torch

from cortex.neuron.models.loading import load_model
from tests.decoder.paged import PagedRunner
from tests.support.checkpoints import STORIES

GOLDEN = json.loads((STORIES / "expected" / "greedy.json").read_text())


@pytest.fixture(scope="module")
def runner() -> PagedRunner:
    model = load_model(STORIES, "cpu", torch.float32)
    return PagedRunner(model, max_seqs=len(GOLDEN["cases"]), max_len=272)


def test_reference_logits(runner: PagedRunner) -> None:
    ref = GOLDEN["logits_reference"]
    runner.reset()
    logits = runner.step([(0, ref["input_ids"])])
    assert logits.argmax(-1).tolist() == ref["argmax_per_position"]
    expected = torch.tensor(ref["last_position_logits_first16"])
    assert (logits[-1, :16] - expected).abs().max().item() < 1e-4


def test_every_golden_case_batched(runner: PagedRunner) -> None:
    """All cases decode together (different prompt lengths, one batch) and match exactly."""
    cases = GOLDEN["cases"]
    longest = max(c["max_new_tokens"] for c in cases)
    outputs = runner.greedy([c["prompt_ids"] for c in cases], longest)
    for case, out in zip(cases, outputs, strict=True):
        assert out[: case["max_new_tokens"]] == case["generated_ids"], case["name"]


def test_golden_case_alone(runner: PagedRunner) -> None:
    case = GOLDEN["cases"][2]
    (out,) = runner.greedy([case["prompt_ids"]], case["max_new_tokens"])
    assert out == case["generated_ids"]
