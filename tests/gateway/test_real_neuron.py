"""The gateway in front of real `cortex neuron` processes serving stories260k (CPU).

The models dir holds three ids (`s1`, `s2`, `s3`), each a symlink to the shared stories260k
fixture, so eviction can be exercised with a real neuron. Memory budgets in models.toml make
the CPU host "full" after two models (the gateway plans with the smaller of the neuron's free
memory and its total minus the budgets of loaded models).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from cortex.config import ModelEntry, NeuronEntry
from tests.conftest import FIXTURES, ROOT
from tests.gateway.test_fleet_api import samples
from tests.gateway.test_proxy import read_events
from tests.support.gateway_app import make_config, running
from tests.support.gateway_proc import start_gateway
from tests.support.neuron_proc import NeuronProc, start_neuron

PROMPT = "Once upon a time"
MODELS = ("s1", "s2", "s3")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models")
    for model in MODELS:
        (path / model).symlink_to(FIXTURES / "stories260k", target_is_directory=True)
    return path


@pytest.fixture(scope="module")
def neuron(models_dir):
    with start_neuron(models_dir) as proc:
        yield proc


def unload_all(url: str) -> None:
    """Unload every model of a neuron (directly, not through a gateway)."""
    health = orjson.loads(urllib.request.urlopen(url + "/health").read())
    for model in health["models"]:
        body = orjson.dumps({"model": model["id"]})
        request = urllib.request.Request(
            url + "/models/unload", body, {"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request).read()


@pytest.fixture
def real(neuron: NeuronProc) -> NeuronProc:
    """The shared neuron with nothing loaded."""
    unload_all(neuron.url)
    return neuron


def entry(name: str, proc: NeuronProc) -> NeuronEntry:
    return NeuronEntry(name=name, endpoint=proc.url)


def config_for(neurons: list[NeuronEntry], models=None, **gateway):
    config = make_config([], models=models, **gateway)
    config.neurons = neurons
    return config


async def complete(g, model: str, stream: bool = False, max_tokens: int = 5) -> dict:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with g.http.post(g.url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        if not stream:
            return await r.json()
        events = [e.json() for e in await read_events(r) if e.data and not e.done]
    text = "".join(c["choices"][0]["text"] for c in events if c["choices"])
    return {"choices": [{"text": text}], "usage": events[-1]["usage"]}


async def loaded_on(url: str) -> set[str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/health") as r:
        return {m["id"] for m in (await r.json())["models"]}


async def test_catalogue_and_twenty_requests_sharing_one_cold_load(real):
    async with running(config_for([entry("real", real)])) as g:
        async with g.http.get(g.url + "/v1/models") as r:
            by_id = {m["id"]: m for m in (await r.json())["data"]}
        assert set(by_id) == set(MODELS)
        assert by_id["s1"]["cortex"] == {
            "state": "available",
            "locations": [{"neuron": "real", "state": "available"}],
            "pinned": False,
            "max_context": 512,
            "arch": "llama",
            "bytes": by_id["s1"]["cortex"]["bytes"],
        }
        answers = await asyncio.gather(*(complete(g, "s1", stream=i % 2 == 0) for i in range(20)))
        assert len({a["choices"][0]["text"] for a in answers}) == 1  # greedy, same prompt
        assert await loaded_on(real.url) == {"s1"}
        m = samples(await g.metrics())
        labels = (("model", "s1"), ("neuron", "real"))
        assert m[("cortex_cold_starts_total", labels)] == 1
        api = (("api", "completions"), *labels, ("status", "200"))
        assert m[("cortex_requests_total", api)] == 20
        completion = sum(a["usage"]["completion_tokens"] for a in answers)
        assert m[("cortex_completion_tokens_total", labels)] == completion
        assert (
            m[("cortex_prompt_tokens_total", labels)] == 20 * answers[0]["usage"]["prompt_tokens"]
        )
        assert m[("cortex_time_to_first_token_seconds_count", labels)] == 10


async def test_eviction_lru_pins_busy_and_priority(real):
    async with aiohttp.ClientSession() as http, http.get(real.url + "/health") as r:
        total = (await r.json())["devices"][0]["total_bytes"]
    budget = int(total * 0.34)  # two models fit, a third needs an eviction

    models = [ModelEntry(id=m, memory=budget) for m in MODELS]
    async with running(config_for([entry("real", real)], models)) as g:
        for model in ("s1", "s2", "s1", "s3"):
            await complete(g, model)
        assert await loaded_on(real.url) == {"s1", "s3"}  # s2 was the least recently used

    unload_all(real.url)
    models = [ModelEntry(id=m, memory=budget, pin=m == "s3") for m in MODELS]
    async with running(config_for([entry("real", real)], models)) as g:
        places = g.gw.fleet.get("real").models
        await g.settle(lambda: "s3" in places and places["s3"].state == "loaded", 30)
        await complete(g, "s1")
        await complete(g, "s2")  # s3 (pinned) is the LRU; s1 goes
        assert await loaded_on(real.url) == {"s2", "s3"}
        body = {"model": "s2", "prompt": PROMPT, "max_tokens": 400, "stream": True}
        async with g.http.post(g.url + "/v1/completions", json=body) as busy:
            await busy.content.readline()
            async with g.http.post(
                g.url + "/v1/completions", json={"model": "s1", "prompt": PROMPT, "max_tokens": 2}
            ) as r:
                assert r.status == 503 and "Retry-After" in r.headers  # s2 busy, s3 pinned
        assert await loaded_on(real.url) == {"s2", "s3"}

    unload_all(real.url)
    models = [
        ModelEntry(id="s1", memory=budget, priority=10),
        ModelEntry(id="s2", memory=budget, priority=50),
        ModelEntry(id="s3", memory=budget, priority=50),
    ]
    config = config_for([entry("real", real)], models, eviction__strategy="priority")
    async with running(config) as g:
        for model in ("s2", "s1", "s3"):
            await complete(g, model)
        assert await loaded_on(real.url) == {"s2", "s3"}  # s1: lowest priority, though recent


def respawn(port: int, models_dir: Path) -> subprocess.Popen:
    """A neuron on a given port (the one a killed neuron had)."""
    command = [sys.executable, "-m", "cortex", "neuron", "--listen", f"127.0.0.1:{port}"]
    command += ["--models-dir", str(models_dir)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_neuron_killed_mid_stream_and_back(real, models_dir):
    victim = await asyncio.to_thread(start_neuron, models_dir)
    models = [ModelEntry(id="s1", neurons=["victim"]), ModelEntry(id="s2", neurons=["real"])]
    config = config_for(
        [entry("victim", victim), entry("real", real)], models, down_after_failures=2
    )
    reborn = None
    try:
        async with running(config) as g:
            await complete(g, "s2")
            body = {"model": "s1", "prompt": PROMPT, "max_tokens": 400, "stream": True}
            async with g.http.post(g.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.content.readline()
                os.kill(victim.proc.pid, signal.SIGKILL)
                events = await read_events(r)
            assert events[-1].done
            error = events[-2].json()["error"]
            assert error["code"] == "upstream_error"
            await g.settle(lambda: not g.gw.fleet.get("victim").up, 10)
            assert (await complete(g, "s2"))["choices"][0]["text"]
            async with g.http.get(g.url + "/health") as h:
                assert (await h.json())["status"] == "degraded"
            async with g.http.post(g.url + "/v1/completions", json=body | {"stream": False}) as r:
                assert r.status == 503
            reborn = respawn(victim.port, models_dir)
            await g.settle(lambda: g.gw.fleet.get("victim").up, 60)
            assert (await complete(g, "s1"))["choices"][0]["text"]
    finally:
        victim.proc.wait()
        if reborn is not None:
            reborn.terminate()
            reborn.wait(30)


def test_single_host_serve_starts_its_own_neuron(models_dir):
    gw = start_gateway(None, ["--models-dir", str(models_dir)])
    try:
        assert "no cortex.toml found" in gw.log() and str(models_dir) in gw.log()
        # The models dir has models: no hint to fetch the demo one (issue 16, point 11).
        assert "fetch-demo" not in gw.log()
        assert "poll failed" not in gw.log()  # the local neuron starting up is no news
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            fleet = orjson.loads(urllib.request.urlopen(gw.url + "/fleet").read())
            if fleet["neurons"][0]["state"] == "up":
                break
            time.sleep(0.2)
        assert [n["name"] for n in fleet["neurons"]] == ["local"]
        local = fleet["neurons"][0]["endpoint"]
        body = orjson.dumps({"model": "s1", "prompt": PROMPT, "max_tokens": 3})
        request = urllib.request.Request(
            gw.url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        answer = orjson.loads(urllib.request.urlopen(request, timeout=120).read())
        assert answer["usage"]["completion_tokens"] == 3
    finally:
        assert gw.stop() == 0, gw.log()
    with pytest.raises(OSError):
        urllib.request.urlopen(local + "/health", timeout=2)
