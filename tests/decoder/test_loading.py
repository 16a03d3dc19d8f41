"""Checkpoint loading: sharded files, strictness, configs, sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cortex.errors import ModelLoadFailed, UnsupportedArchitecture
from cortex.neuron.models.loading import load_model, model_weight_bytes
from cortex.neuron.models.model_config import ModelConfig
from tests.conftest import FIXTURES
from tests.decoder.paged import PagedRunner
from tests.support.checkpoints import make_tiny_checkpoint

PROMPT = [3, 14, 15, 92, 65, 35]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("single") / "llama")


def prefill(path: Path) -> torch.Tensor:
    return PagedRunner(load_model(path, "cpu", torch.float32)).step([(0, PROMPT)])


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint, passing its tensors through `edit(dict) -> dict`."""
    shutil.copytree(src, dst)
    tensors = edit(load_file(dst / "model.safetensors"))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_sharded_checkpoint_loads(llama: Path, tmp_path: Path) -> None:
    sharded = make_tiny_checkpoint("llama", tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    assert torch.equal(prefill(sharded), prefill(llama))
    assert model_weight_bytes(sharded) == model_weight_bytes(llama)


def test_missing_tensor_is_named(llama: Path, tmp_path: Path) -> None:
    name = "model.layers.1.self_attn.k_proj.weight"
    broken = rewrite(llama, tmp_path / "m", lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ModelLoadFailed, match=r"missing tensors: .*layers\.1\.self_attn\.k_proj"):
        load_model(broken)


def test_unused_tensor_is_named(llama: Path, tmp_path: Path) -> None:
    broken = rewrite(llama, tmp_path / "m", lambda t: {**t, "model.extra.weight": torch.ones(2)})
    with pytest.raises(ModelLoadFailed, match=r"unused tensors: model\.extra\.weight"):
        load_model(broken)


def test_wrong_shape_is_refused(llama: Path, tmp_path: Path) -> None:
    name = "model.norm.weight"
    broken = rewrite(llama, tmp_path / "m", lambda t: {**t, name: torch.ones(3)})
    with pytest.raises(ModelLoadFailed, match="model.norm.weight has shape"):
        load_model(broken)


def test_weight_bytes_match_parameters(llama: Path) -> None:
    model = load_model(llama, "cpu", torch.float32)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert model_weight_bytes(llama) == params
    assert model_weight_bytes(llama, torch.bfloat16) == params // 2


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_bigcode"}))
    with pytest.raises(UnsupportedArchitecture, match="gpt_bigcode"):
        load_model(tmp_path)


def test_config_from_real_files() -> None:
    llama = ModelConfig.from_dir(FIXTURES / "llama3.2")
    assert llama.eos_token_id == [128001, 128008, 128009]
    assert llama.rope_scaling and llama.rope_scaling["rope_type"] == "llama3"
    assert llama.rope_theta == 500000.0 and llama.head_dim == 64
    qwen2 = ModelConfig.from_dir(FIXTURES / "qwen2.5")
    assert qwen2.attention_bias and not qwen2.o_proj_bias and qwen2.sliding_window is None
    qwen3 = ModelConfig.from_dir(FIXTURES / "qwen3")
    assert qwen3.qk_norm and qwen3.head_dim == 128 and qwen3.eos_token_id == [151645]


def test_real_vocab_checkpoint_stays_small(tmp_path: Path) -> None:
    path = make_tiny_checkpoint("qwen3", tmp_path / "q", tokenizer_from=FIXTURES / "qwen3")
    assert (path / "tokenizer.json").is_file() and (path / "generation_config.json").is_file()
    assert ModelConfig.from_dir(path).vocab_size == 151936
    assert model_weight_bytes(path) < 64 * 2**20


def test_rope_settings_in_both_spellings() -> None:
    base = {
        "model_type": "llama",
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "future_key": {"ignored": True},
    }
    old = ModelConfig.from_dict(
        {**base, "rope_theta": 5.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    )
    new = ModelConfig.from_dict(
        {**base, "rope_parameters": {"rope_theta": 5.0, "rope_type": "linear", "factor": 2.0}}
    )
    assert old.rope_scaling == new.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert old.rope_theta == new.rope_theta == 5.0
    assert old.num_key_value_heads == 2 and old.head_dim == 4 and old.eos_token_id == []
    with pytest.raises(UnsupportedArchitecture, match="longrope"):
        ModelConfig.from_dict({**base, "rope_scaling": {"rope_type": "longrope"}})
