"""The synchronous `generate()` API on real models: stories260k and a scripted Qwen3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cortex.neuron.engine.sampling import SamplingParams
from cortex.neuron.offline import generate, load
from cortex.neuron.text.textstream import assemble
from tests.support.checkpoints import STORIES
from tests.support.scripted import make_scripted_checkpoint

GOLDEN = json.loads((STORIES / "expected" / "greedy.json").read_text())["cases"]


@pytest.fixture(scope="module")
def stories():
    return load(STORIES)


def test_text_prompt_streams_the_golden_greedy_answer(stories) -> None:
    case = next(c for c in GOLDEN if c["prompt"])
    params = SamplingParams(temperature=0, max_tokens=len(case["generated_ids"]), ignore_eos=True)
    deltas = list(generate(stories, case["prompt_ids"], params))
    expected = stories.tokenizer.decode(case["prompt_ids"] + case["generated_ids"])
    text = "".join(d.text for d in deltas)
    assert all(d.kind == "content" for d in deltas)
    assert len(deltas) > 1  # streamed, not one piece at the end
    assert stories.tokenizer.decode(case["prompt_ids"]) + text == expected


def test_stop_string_cuts_and_frees_the_sequence(stories) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=64)
    free = "".join(d.text for d in generate(stories, "Once upon a time", greedy))
    word = free.split()[5]
    greedy.stop = [word]
    text = "".join(d.text for d in generate(stories, "Once upon a time", greedy))
    assert text == free[: free.index(word)]
    assert stories.llm.engine.stats().running == 0
    assert stories.llm.engine.stats().kv_blocks_used == 0


def test_abandoned_generator_aborts_its_request(stories) -> None:
    it = generate(stories, "Once upon a time", SamplingParams(temperature=0, max_tokens=200))
    next(it)
    it.close()
    assert stories.llm.engine.stats().running == 0
    assert stories.llm.engine.stats().kv_blocks_used == 0


def test_chat_messages_split_reasoning_and_content(tmp_path: Path) -> None:
    path = make_scripted_checkpoint(
        tmp_path / "scripted", {"\n": "<think>Let me see.</think>The answer is four."}
    )
    model = load(path)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    deltas = list(generate(model, messages, SamplingParams(temperature=0, max_tokens=40)))
    result = assemble(deltas, "stop")
    assert result.reasoning_content == "Let me see."
    assert result.content == "The answer is four."
