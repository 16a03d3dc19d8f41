"""Config loading: strict keys, durations, sizes, relative paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import (
    load_cortex_config,
    load_neuron_config,
    parse_duration,
    parse_size,
    split_listen,
)
from cortex.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_full_cortex_config_loads(tmp_path: Path) -> None:
    write(
        tmp_path / "models.toml",
        """
[aliases]
qwen = "Qwen/Qwen3-8B"
[[models]]
id = "Qwen/Qwen3-8B"
neurons = ["beast"]
pin = true
priority = 50
memory = "18GiB"
max_context = 32768
dtype = "bfloat16"
""",
    )
    path = write(
        tmp_path / "cortex.toml",
        """
models_config = "models.toml"
[gateway]
listen = "0.0.0.0:31313"
api_keys = ["k1"]
cold_load_timeout = "15m"
[eviction]
strategy = "priority"
idle_unload_after = "1h30m"
[[neurons]]
name = "beast"
endpoint = "http://beast.internal:13131"
""",
    )
    config = load_cortex_config(path)
    assert config.gateway.cold_load_timeout == 900
    assert config.eviction.idle_unload_after == 5400
    assert config.models_config == str(tmp_path / "models.toml")
    assert config.models.resolve("qwen") == "Qwen/Qwen3-8B"
    entry = config.models.entry("Qwen/Qwen3-8B")
    assert entry is not None and entry.memory == 18 * 2**30 and entry.pin
    assert config.neurons[0].token == ""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[gateway]\nlisen = '1.2.3.4:5'\n", "gateway.lisen"),
        ("[gateway]\ncold_load_timeout = 'soon'\n", "gateway.cold_load_timeout"),
        ("[eviction]\nstrategy = 'fifo'\n", "eviction.strategy"),
        ("[[neurons]]\nname = 'a'\n", "neurons[0].endpoint"),
        ("[gateway]\napi_keys = 'k'\n", "gateway.api_keys"),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path / "cortex.toml", text)
    with pytest.raises(ConfigError) as info:
        load_cortex_config(path)
    assert str(path) in info.value.message
    assert needle in info.value.message


def test_neuron_config_defaults_and_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path / "neuron.toml",
        "[neuron]\nmodels_dirs = ['models']\n[engine]\nmax_batch = 8\nkv_cache_memory = 0.5\n",
    )
    config = load_neuron_config(path)
    assert config.neuron.models_dirs == [str(tmp_path / "models")]
    assert config.engine.max_batch == 8
    assert load_neuron_config(None).neuron.listen == "127.0.0.1:13131"
    with pytest.raises(ConfigError, match="engine.kv_cache_memory"):
        load_neuron_config(write(tmp_path / "bad.toml", "[engine]\nkv_cache_memory = 2\n"))


def test_engine_token_budget(tmp_path: Path) -> None:
    assert load_neuron_config(None).engine.max_num_batched_tokens == 2048
    # Below max_context is fine (long prompts prefill in chunks), below max_batch is not.
    small = "[engine]\nmax_batch = 8\nmax_num_batched_tokens = 8\n"
    assert load_neuron_config(write(tmp_path / "ok.toml", small)).engine.max_num_batched_tokens == 8
    for bad in ("max_batch = 8\nmax_num_batched_tokens = 7", "max_num_batched_tokens = 0"):
        with pytest.raises(ConfigError, match="engine.max_num_batched_tokens.*max_batch"):
            load_neuron_config(write(tmp_path / "bad.toml", f"[engine]\n{bad}\n"))


def test_parsers() -> None:
    assert parse_duration("30s") == 30 and parse_duration(5) == 5 and parse_duration("0") == 0
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size(10) == 10
    assert parse_size("512MiB") == 512 * 2**20
    assert split_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_duration("-1")
