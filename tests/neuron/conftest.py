"""Models for the neuron tests, built once per session in one temp models dir.

Layout (ids are paths relative to the models dir):
- `stories260k`: a symlink to the real fixture (how operators link models in);
- `tiny/qwen3`: a tiny random Qwen3 with the real Qwen3 tokenizer and an 8192-token context;
- `scripted/qwen3`: a scripted Qwen3 (tests/support/scripted.py): after the plain generation
  prompt it thinks then answers, with thinking switched off it calls `get_weather`, after a
  forced `{` it writes `"answer": 42}`;
- `scripted/qwen3-opened`: the same weights, with a chat template that opens `<think>` itself;
- `huge/llama`: a tiny llama claiming a 16G-token context (one sequence's KV cannot fit);
- `broken/gpt2`: a directory with an unsupported model_type;
- `outside` (symlink to the fixtures dir): an intermediate symlink that leads out of the root;
- an HF cache (`hub/`) holding `Test/Stories` as `models--Test--Stories/snapshots/<ref>`.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import FIXTURES
from tests.support.checkpoints import STORIES, make_tiny_checkpoint
from tests.support.neuron_proc import NeuronProc, Session, start_neuron
from tests.support.scripted import make_scripted_checkpoint

SCRIPTS = {
    "\n": "<think>Let me think.</think>Hello there!",
    "\n\n": '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>',
    "{": '"answer": 42}',
}
SNAPSHOT = "0123456789abcdef"


def _opened_variant(source: Path, target: Path) -> None:
    """`target`: `source`'s files, with a template whose generation prompt opens `<think>`."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "tokenizer_config.json":
            (target / item.name).symlink_to(item)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["chat_template"] = config["chat_template"].replace(
        "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>' }}"
    )
    (target / "tokenizer_config.json").write_text(json.dumps(config))


def _hf_cache(hub: Path) -> None:
    repo = hub / "models--Test--Stories"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    for item in STORIES.iterdir():
        if item.is_file():
            (snapshot / item.name).symlink_to(item)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models dir (see the module docstring); its parent holds `hub/`, the HF cache."""
    base = tmp_path_factory.mktemp("neuron")
    root = base / "models"
    root.mkdir()
    (root / "stories260k").symlink_to(STORIES)
    make_tiny_checkpoint(
        "qwen3",
        root / "tiny" / "qwen3",
        tokenizer_from=FIXTURES / "qwen3",
        max_position_embeddings=8192,
    )
    make_scripted_checkpoint(root / "scripted" / "qwen3", SCRIPTS)
    _opened_variant(root / "scripted" / "qwen3", root / "scripted" / "qwen3-opened")
    make_tiny_checkpoint(
        "llama", root / "huge" / "llama", tokenizer_from=STORIES, max_position_embeddings=2**34
    )
    broken = root / "broken" / "gpt2"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    (broken / "model.safetensors").symlink_to(STORIES / "model.safetensors")
    (root / "outside").symlink_to(FIXTURES)
    _hf_cache(base / "hub")
    return root


@pytest.fixture(scope="session")
def neuron_env(models_root: Path) -> dict[str, str]:
    """Environment for neuron processes: the test HF cache, no hub access."""
    return {
        "HF_HUB_CACHE": str(models_root.parent / "hub"),
        "HF_HUB_OFFLINE": "1",
    }


SERVED = ("stories260k", "tiny/qwen3", "scripted/qwen3", "scripted/qwen3-opened")


@pytest.fixture(scope="session")
def serving(models_root: Path, neuron_env: dict[str, str]) -> Iterator[NeuronProc]:
    """One neuron for the chat and completion tests, with `SERVED` loaded."""
    proc = start_neuron(models_root, env=neuron_env)
    with Session(proc.url) as session, concurrent.futures.ThreadPoolExecutor(4) as pool:
        for answer in pool.map(lambda m: session.post("/models/load", json={"model": m}), SERVED):
            assert answer.status_code == 200, answer.text
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="session")
def client(serving: NeuronProc) -> Iterator[Session]:
    """A session on the `serving` neuron."""
    with Session(serving.url) as session:
        yield session


@pytest.fixture(scope="session")
def sdk(serving: NeuronProc) -> openai.OpenAI:
    """The official openai client on the `serving` neuron."""
    return openai.OpenAI(base_url=f"{serving.url}/v1", api_key="unused", max_retries=0)
