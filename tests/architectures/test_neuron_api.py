"""The new architectures served by a real `cortex neuron`: `/models` names each one's `arch`, and
greedy completions requested concurrently (so they share the running batch) are transformers'
greedy tokens, detokenized. Each prompt is sent twice, the second time partly from the prefix
cache."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex.neuron.text.detokenizer import IncrementalDetokenizer
from cortex.neuron.text.tokenizer import Tokenizer
from tests.architectures.tiny import ARCHS, hf_greedy, hf_reference, make_checkpoint
from tests.support.neuron_proc import NeuronProc, Session, start_neuron

PROMPTS = [[7, 300, 41, 5, 99, 12, 250, 3, 61, 17, 480, 33, 8], [400, 4, 44, 45, 46, 47, 48]]
TOKENS = 12
EOS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arch-models")
    for arch in ARCHS:
        make_checkpoint(arch, root / arch, seed=3)
    return root


@pytest.fixture(scope="module")
def neuron(models: Path) -> Iterator[NeuronProc]:
    with start_neuron(models, ["--device", "cpu"], env={"HF_HUB_OFFLINE": "1"}) as proc:
        session = Session(proc.url)
        for arch in ARCHS:  # loading is a 422 for an architecture the neuron cannot run
            answer = session.post("/models/load", json={"model": arch})
            assert answer.status_code == 200, answer.text
        yield proc


def expected_text(path: Path, prompt: list[int]) -> tuple[str, str]:
    """(text, finish reason) of transformers' greedy continuation, ended by EOS as the neuron's,
    streamed token by token through the neuron's detokenizer (random models emit invalid UTF-8
    byte runs, which a stream renders differently from a whole decode)."""
    ids = hf_greedy(hf_reference(path), prompt, TOKENS)
    reason = "length"
    if EOS in ids:
        ids, reason = ids[: ids.index(EOS)], "stop"
    stream = IncrementalDetokenizer(Tokenizer.from_dir(path), prompt)
    return "".join(stream.push([i]) for i in ids) + stream.flush(), reason


def test_models_name_their_arch(neuron: NeuronProc) -> None:
    listed = {m["id"]: m for m in Session(neuron.url).get("/models").json()["data"]}
    assert {arch: listed[arch]["arch"] for arch in ARCHS} == {arch: arch for arch in ARCHS}


def test_concurrent_greedy_completions_equal_transformers(neuron: NeuronProc, models: Path) -> None:
    session = Session(neuron.url)

    def complete(job: tuple[str, list[int]]) -> tuple[str, str]:
        arch, prompt = job
        body = {"model": arch, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0}
        answer = session.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        return choice["text"], choice["finish_reason"]

    jobs = [(arch, prompt) for arch in ARCHS for prompt in PROMPTS] * 2
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(complete, jobs))
    for (arch, prompt), answer in zip(jobs, answers, strict=True):
        assert answer == expected_text(models / arch, prompt), arch
