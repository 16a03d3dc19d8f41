"""Eviction order, pins, busy models, idle unloads and defrag against scripted neurons."""

from __future__ import annotations

import asyncio

from cortex.config import ModelEntry
from tests.support.fake_neuron import FakeModel, FakeNeuron, GiB, fleet, loaded
from tests.support.gateway_app import make_config, running


def full_neuron() -> FakeNeuron:
    """3 GiB, m1..m3 (1 GiB each) loaded, m4 on disk."""
    neuron = FakeNeuron("a", loaded("m1", "m2", "m3"), total_bytes=3 * GiB)
    neuron.models["m4"] = FakeModel("m4")
    return neuron


async def use(g, *models: str) -> None:
    for model in models:
        async with await g.chat(model) as r:
            assert r.status == 200, await r.text()


async def test_lru_evicts_the_least_recently_used():
    a = full_neuron()
    async with fleet(a), running(make_config([a])) as g:
        await use(g, "m2", "m1", "m3")
        await use(g, "m4")
        assert a.unloads == ["m2"]
        assert a.loaded() == ["m1", "m3", "m4"]
        text = await g.metrics()
        assert 'cortex_evictions_total{model="m2",neuron="a",reason="capacity"} 1.0' in text


async def test_priority_evicts_the_lowest_priority_first():
    a = full_neuron()
    async with fleet(a):
        models = [
            ModelEntry(id="m1", priority=10),
            ModelEntry(id="m2", priority=50),
            ModelEntry(id="m3", priority=10),
            ModelEntry(id="m4", priority=50),
        ]
        config = make_config([a], models=models, eviction__strategy="priority")
        async with running(config) as g:
            await use(g, "m3", "m2", "m1")  # m2 is the LRU, but priority comes first
            await use(g, "m4")
            assert a.unloads == ["m3"]  # lowest priority, then least recently used


async def test_higher_priority_models_are_not_evicted_for_a_lower_one():
    a = full_neuron()
    async with fleet(a):
        models = [ModelEntry(id=m, priority=90) for m in ("m1", "m2", "m3")]
        models.append(ModelEntry(id="m4", priority=10))
        config = make_config([a], models=models, eviction__strategy="priority")
        async with running(config) as g, await g.chat("m4") as r:
            assert r.status == 503
        assert a.unloads == []


async def test_pinned_models_are_never_evicted():
    a = full_neuron()
    async with fleet(a):
        config = make_config([a], models=[ModelEntry(id="m2", pin=True)])
        async with running(config) as g:
            await use(g, "m2", "m1", "m3")
            await use(g, "m4")
            assert a.unloads == ["m1"]
            # Runtime pins too.
            async with g.http.post(g.url + "/fleet/pin", json={"model": "m3"}) as r:
                assert r.status == 200
            await use(g, "m1")
            assert a.unloads == ["m1", "m4"]


async def test_busy_models_are_never_evicted():
    a = full_neuron()
    a.script.chunks = 1000
    a.script.chunk_delay = 0.01
    async with fleet(a), running(make_config([a])) as g:
        await use(g, "m1", "m2", "m3")
        streaming = await g.chat("m1", stream=True)  # m1 is the LRU but busy
        await streaming.content.readline()
        await use(g, "m4")
        assert a.unloads == ["m2"]
        streaming.close()


async def test_all_busy_or_pinned_means_no_capacity():
    a = full_neuron()
    a.script.chunks = 1000
    a.script.chunk_delay = 0.01
    async with fleet(a):
        config = make_config([a], models=[ModelEntry(id="m1", pin=True)])
        async with running(config) as g:
            streams = [await g.chat(m, stream=True) for m in ("m2", "m3")]
            for s in streams:
                await s.content.readline()
            async with await g.chat("m4") as r:
                assert r.status == 503 and "Retry-After" in r.headers
            assert a.unloads == []
            for s in streams:
                s.close()


async def test_evicts_several_when_one_is_not_enough():
    a = full_neuron()
    a.models["m4"].bytes = 2 * GiB
    async with fleet(a), running(make_config([a])) as g:
        await use(g, "m3", "m1", "m2")
        await use(g, "m4")
        assert a.unloads == ["m3", "m1"]


async def test_pins_are_loaded_at_start_and_kept_loaded():
    a = FakeNeuron("a", {"m1": FakeModel("m1"), "m2": FakeModel("m2")})
    async with fleet(a):
        config = make_config([a], models=[ModelEntry(id="m1", pin=True)])
        async with running(config) as g:
            await g.settle(lambda: a.loaded() == ["m1"])
            async with g.http.post(g.url + "/fleet/unload", json={"model": "m1"}) as r:
                assert r.status == 409  # pinned: unpin first (a conflict, not a usage error)
            # Unloaded behind the gateway's back: the upkeep loads it again.
            a.models["m1"].state = "available"
            await g.settle(lambda: a.loads == ["m1", "m1"])


async def test_idle_models_are_unloaded():
    a = FakeNeuron("a", loaded("m1", "m2"))
    async with fleet(a):
        config = make_config(
            [a], models=[ModelEntry(id="m2", pin=True)], eviction__idle_unload_after=0.3
        )
        async with running(config) as g:
            await use(g, "m1")
            await g.settle(lambda: a.unloads == ["m1"])
            await asyncio.sleep(0.5)
            assert a.loaded() == ["m2"]
            text = await g.metrics()
            assert 'cortex_evictions_total{model="m1",neuron="a",reason="idle"} 1.0' in text


async def test_defrag_after_cycles_releases_memory_and_reloads_residents():
    a = FakeNeuron("a", loaded("keep"))
    a.models["x"] = FakeModel("x")
    async with fleet(a):
        config = make_config([a], eviction__defrag_after_cycles=2)
        async with running(config) as g:
            for _ in range(2):
                for path in ("/fleet/load", "/fleet/unload"):
                    async with g.http.post(g.url + path, json={"model": "x"}) as r:
                        assert r.status == 200, await r.text()
            await g.settle(lambda: a.releases == 1 and a.loads.count("keep") == 1)
            await g.settle(lambda: a.loaded() == ["keep"])
            assert a.unloads == ["x", "x", "keep"]
            assert g.gw.fleet.get("a").cycles == 0
            await use(g, "keep")
