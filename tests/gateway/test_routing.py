"""Routing and cold loads against scripted neurons."""

from __future__ import annotations

import asyncio

from cortex.config import ModelEntry, parse_size
from cortex.gateway.fleet import Neuron
from cortex.gateway.neuron_client import NeuronClient
from tests.gateway.test_proxy import read_events
from tests.support.fake_neuron import FakeModel, FakeNeuron, GiB, fleet, loaded
from tests.support.gateway_app import make_config, running


async def test_routes_to_the_neuron_that_has_it_loaded():
    a, b = FakeNeuron("a", {"m1": FakeModel("m1")}), FakeNeuron("b", loaded("m1"))
    async with fleet(a, b), running(make_config([a, b])) as g:
        for _ in range(3):
            async with await g.chat("m1") as r:
                assert r.headers["x-cortex-neuron"] == "b"
        assert a.loads == [] and b.loads == []


async def test_least_busy_neuron_gets_the_next_request():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", loaded("m1"))
    async with fleet(a, b), running(make_config([a, b])) as g:
        a.script.chunks = b.script.chunks = 200
        a.script.chunk_delay = b.script.chunk_delay = 0.01
        first = await g.chat("m1", stream=True)
        second = await g.chat("m1", stream=True)
        assert {first.headers["x-cortex-neuron"], second.headers["x-cortex-neuron"]} == {"a", "b"}
        first.close()
        second.close()


async def test_twenty_concurrent_requests_share_one_cold_load():
    a = FakeNeuron("a", {"m1": FakeModel("m1")})
    a.script.load_gate = asyncio.Event()
    async with fleet(a), running(make_config([a])) as g:

        async def one(i: int) -> int:
            async with await g.chat("m1", stream=i % 2 == 0) as r:
                await r.read()
                return r.status

        tasks = [asyncio.ensure_future(one(i)) for i in range(20)]
        await g.settle(lambda: a.loads == ["m1"])
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in tasks)
        a.script.load_gate.set()
        assert await asyncio.gather(*tasks) == [200] * 20
        assert a.loads == ["m1"]
        text = await g.metrics()
        assert 'cortex_cold_starts_total{model="m1",neuron="a"} 1.0' in text


async def test_stream_gets_sse_comments_while_the_model_loads():
    a = FakeNeuron("a", {"m1": FakeModel("m1")})
    a.script.load_gate = asyncio.Event()
    async with fleet(a), running(make_config([a])) as g:
        r = await g.chat("m1", stream=True)
        assert r.status == 200
        line = await r.content.readline()
        assert line.startswith(b": loading m1")
        a.script.load_gate.set()
        events = await read_events(r)
        assert events[-1].done
        r.close()


async def test_a_waiter_that_leaves_does_not_cancel_the_load():
    a = FakeNeuron("a", {"m1": FakeModel("m1")})
    a.script.load_gate = asyncio.Event()
    async with fleet(a), running(make_config([a])) as g:
        r = await g.chat("m1", stream=True)
        await r.content.readline()
        r.close()
        await asyncio.sleep(0.1)
        a.script.load_gate.set()
        await g.settle(lambda: a.loaded() == ["m1"])
        async with await g.chat("m1") as r2:
            assert r2.status == 200
        assert a.loads == ["m1"]


async def test_cold_load_timeout_is_503_with_retry_after():
    a = FakeNeuron("a", {"m1": FakeModel("m1")})
    a.script.load_gate = asyncio.Event()
    async with fleet(a), running(make_config([a], cold_load_timeout=0.3)) as g:
        async with await g.chat("m1") as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert "still loading" in (await r.json())["error"]["message"]
        async with await g.chat("m1", stream=True) as r:
            # Timed out within the first second: nothing was streamed yet, a plain 503.
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
        a.script.load_gate.set()


async def test_no_capacity_is_503_with_retry_after():
    a = FakeNeuron("a", {"big": FakeModel("big", bytes=100 * GiB)})
    async with fleet(a), running(make_config([a])) as g, await g.chat("big") as r:
        assert r.status == 503
        assert "Retry-After" in r.headers
        assert (await r.json())["error"]["code"] == "unavailable"


async def test_cold_load_goes_where_it_fits_without_eviction():
    a = FakeNeuron("a", loaded("x1", "x2"), total_bytes=3 * GiB)
    a.models["m1"] = FakeModel("m1", bytes=2 * GiB)
    b = FakeNeuron("b", {"m1": FakeModel("m1", bytes=2 * GiB)}, total_bytes=3 * GiB)
    async with fleet(a, b), running(make_config([a, b])) as g, await g.chat("m1") as r:
        assert r.headers["x-cortex-neuron"] == "b"
    assert a.unloads == []


async def test_memory_estimate_from_models_toml_and_507_replan():
    # models.toml under-estimates m3; the neuron's 507 names the real size; the router
    # evicts for it and loads.
    a = FakeNeuron("a", loaded("m1", "m2"), total_bytes=3 * GiB)
    a.models["m3"] = FakeModel("m3", bytes=2 * GiB)
    async with fleet(a):
        config = make_config([a], models=[ModelEntry(id="m3", memory=1)])
        async with running(config) as g, await g.chat("m3") as r:
            assert r.status == 200
    assert len(a.unloads) == 1 and "m3" in a.loaded()


async def test_the_load_request_carries_the_models_toml_memory_budget():
    # The neuron sizes the model's KV cache from it (weights + KV = memory), so a second model
    # fits beside the first; a model without one lets the neuron size it.
    a = FakeNeuron("a", {"m1": FakeModel("m1"), "m2": FakeModel("m2")}, total_bytes=8 * GiB)
    async with fleet(a):
        entries = [ModelEntry(id="m1", memory=parse_size("3GiB")), ModelEntry(id="m2")]
        async with running(make_config([a], models=entries)) as g:
            for model in ("m1", "m2"):
                async with await g.chat(model) as r:
                    assert r.status == 200
    assert a.bodies("/models/load") == [{"model": "m1", "memory": 3 * GiB}, {"model": "m2"}]


async def test_a_model_lost_by_its_neuron_is_loaded_again():
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a], poll_interval=60)) as g:
        a.models["m1"].state = "available"  # a restart the poller has not seen yet
        async with await g.chat("m1") as r:
            assert r.status == 200
        assert a.loads == ["m1"]


def test_down_after_several_failed_polls_and_up_after_one_success():
    neuron = Neuron(NeuronClient("x", "http://x:1", session=None), down_after_failures=3)
    neuron.apply_poll({"status": "ok"}, [])
    assert not neuron.poll_failed() and not neuron.poll_failed() and neuron.up
    assert neuron.poll_failed() and not neuron.up
    neuron.apply_poll({"status": "ok"}, [])
    assert neuron.up and neuron.failures == 0
