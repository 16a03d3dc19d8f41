"""`cortex serve` as a process: configuration errors, `--neuron`, metrics port, shutdown."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import free_port
from tests.support.cli_run import run_cli
from tests.support.fake_neuron import FakeNeuron, fleet, loaded
from tests.support.gateway_proc import start_gateway


def test_unknown_key_names_file_and_key(tmp_path):
    config = tmp_path / "cortex.toml"
    config.write_text('[gateway]\nlisten = "127.0.0.1:1"\nlistn = 3\n')
    result = run_cli("serve", "--config", str(config))
    assert result.code == 2
    assert str(config) in result.stderr and "gateway.listn" in result.stderr
    assert "unknown key" in result.stderr


def test_bad_values_and_missing_files_are_usage_errors(tmp_path):
    config = tmp_path / "cortex.toml"
    config.write_text('[eviction]\nstrategy = "fifo"\n')
    result = run_cli("serve", "--config", str(config))
    assert result.code == 2 and "eviction.strategy" in result.stderr
    result = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.code == 2 and "missing.toml" in result.stderr
    result = run_cli("serve", "--no-local", "--listen", "nonsense")
    assert result.code == 2 and "--listen" in result.stderr


def test_no_neurons_without_local_is_a_usage_error(tmp_path):
    config = tmp_path / "cortex.toml"
    config.write_text("[gateway]\n")
    result = run_cli("serve", "--config", str(config), "--no-local")
    assert result.code == 2 and "no neurons" in result.stderr


HEAVY = ("torch", "numpy", "tokenizers", "jinja2")


def imported_packages(log: str) -> set[str]:
    """Top-level packages named in `python -X importtime` lines of a process's stderr."""
    lines = (line for line in log.splitlines() if line.startswith("import time:"))
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines}


async def test_gateway_process_never_imports_torch():
    # The gateway process itself, after serving OpenAI and Anthropic requests (streamed or
    # not), must not have imported what only neurons need: gateway hosts lack them.
    async with fleet(FakeNeuron("fake", loaded("m1"))) as (a,):
        env = {"PYTHONPROFILEIMPORTTIME": "1"}
        gw = await asyncio.to_thread(start_gateway, None, ["--neuron", a.url], env=env)
        try:
            messages = [{"role": "user", "content": "hi"}]
            async with aiohttp.ClientSession() as http:
                for path, body in (
                    ("/v1/chat/completions", {"model": "m1", "messages": messages}),
                    ("/v1/chat/completions", {"model": "m1", "messages": messages, "stream": True}),
                    ("/v1/messages", {"model": "m1", "max_tokens": 8, "messages": messages}),
                ):
                    async with http.post(gw.url + path, json=body) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                async with http.get(gw.metrics_url) as r:
                    assert r.status == 200
        finally:
            code = await asyncio.to_thread(gw.stop)
        assert code == 0, gw.log()
    imported = imported_packages(gw.log())
    assert "cortex" in imported and "aiohttp" in imported  # the import log was read
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


async def test_serve_with_neuron_flag_named_after_host():
    async with fleet(FakeNeuron("fake", loaded("m1"))) as (a,):
        gw = await asyncio.to_thread(start_gateway, None, ["--neuron", a.url])
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(gw.url + "/fleet") as r:
                    neurons = (await r.json())["neurons"]
                assert [n["name"] for n in neurons] == ["127.0.0.1"]
                body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(gw.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    assert (await r.json())["choices"][0]["message"]["content"] == "hi from fake"
                async with http.get(gw.metrics_url) as r:
                    text = await r.text()
                assert 'cortex_requests_total{api="chat.completions"' in text
                assert 'cortex_neuron_up{neuron="127.0.0.1"} 1.0' in text
        finally:
            code = await asyncio.to_thread(gw.stop)
        assert code == 0, gw.log()


async def test_listen_failure_is_a_clear_error():
    async with fleet(FakeNeuron("fake", loaded("m1"))) as (a,):
        busy = f"127.0.0.1:{a.port}"
        result = await asyncio.to_thread(
            run_cli,
            "serve",
            "--neuron",
            a.url,
            "--listen",
            busy,
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
        )
        assert result.code == 2 and "cannot listen" in result.stderr
