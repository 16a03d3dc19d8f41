"""Catalogue, /health, /fleet and its actions, auth and metrics against scripted neurons."""

from __future__ import annotations

from cortex.config import ModelEntry
from tests.gateway.test_proxy import read_events
from tests.support.fake_neuron import FakeModel, FakeNeuron, fleet, loaded
from tests.support.gateway_app import make_config, running, samples


async def test_merged_catalogue():
    a = FakeNeuron("a", {**loaded("m1"), "m2": FakeModel("m2")})
    b = FakeNeuron("b", {"m1": FakeModel("m1"), "m3": FakeModel("m3")})
    c = FakeNeuron("c", loaded("gone"))
    async with fleet(a, b, c):
        config = make_config(
            [a, b, c],
            models=[ModelEntry(id="m3", pin=True), ModelEntry(id="future")],
            aliases={"one": "m1"},
        )
        await c.stop()
        async with running(config) as g:
            async with g.http.get(g.url + "/v1/models") as r:
                body = await r.json()
            assert body["object"] == "list"
            by_id = {m["id"]: m for m in body["data"]}
            assert set(by_id) == {"m1", "m2", "m3", "future", "one"}  # "gone": neuron down
            m1 = by_id["m1"]
            assert m1["object"] == "model" and m1["owned_by"] == "cortex"
            assert m1["cortex"]["state"] == "loaded"
            assert sorted(m1["cortex"]["locations"], key=lambda x: x["neuron"]) == [
                {"neuron": "a", "state": "loaded"},
                {"neuron": "b", "state": "available"},
            ]
            assert m1["cortex"]["pinned"] is False
            assert by_id["m3"]["cortex"]["pinned"] is True
            assert by_id["future"]["cortex"] == {
                "state": "available",
                "locations": [],
                "pinned": False,
            }
            assert by_id["one"]["cortex"]["alias_of"] == "m1"
            assert by_id["one"]["cortex"]["state"] == "loaded"


async def test_health_and_fleet():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", {})
    async with fleet(a, b):
        config = make_config([a, b])
        async with running(config) as g:
            async with g.http.get(g.url + "/health") as r:
                assert await r.json() == {"status": "ok", "neurons": {"up": 2, "total": 2}}
            async with g.http.get(g.url + "/fleet") as r:
                body = await r.json()
            na = body["neurons"][0]
            assert na["name"] == "a" and na["endpoint"] == a.url and na["state"] == "up"
            assert na["devices"][0]["id"] == "cpu" and na["last_seen"] > 0
            assert na["models"][0]["id"] == "m1" and na["models"][0]["state"] == "loaded"
            assert body["models"] == [
                {"id": "m1", "pinned": False, "locations": [{"neuron": "a", "state": "loaded"}]}
            ]
            await b.stop()
            await g.settle(lambda: not g.gw.fleet.get("b").up)
            async with g.http.get(g.url + "/health") as r:
                assert await r.json() == {"status": "degraded", "neurons": {"up": 1, "total": 2}}


async def test_fleet_load_unload_pin():
    a = FakeNeuron("a", {"m1": FakeModel("m1"), "m2": FakeModel("m2")})
    b = FakeNeuron("b", {"m1": FakeModel("m1")})
    async with fleet(a, b), running(make_config([a, b])) as g:
        post = g.http.post
        async with post(g.url + "/fleet/load", json={"model": "m1", "neuron": "b"}) as r:
            assert await r.json() == {"model": "m1", "neuron": "b", "state": "loaded"}
        assert b.loaded() == ["m1"] and a.loaded() == []
        async with post(g.url + "/fleet/unload", json={"model": "m1"}) as r:
            body = await r.json()
            assert body["state"] == "unloaded" and body["neurons"] == ["b"]
        async with post(g.url + "/fleet/unload", json={"model": "m1"}) as r:
            assert r.status == 404
        async with post(g.url + "/fleet/load", json={"model": "m1", "neuron": "zz"}) as r:
            assert r.status == 404
        async with post(g.url + "/fleet/pin", json={"model": "m2", "pinned": True}) as r:
            assert await r.json() == {
                "model": "m2",
                "neuron": "a",
                "pinned": True,
                "state": "loaded",
            }
        async with g.http.get(g.url + "/fleet") as r:
            assert {"id": "m2", "pinned": True}.items() <= (await r.json())["models"][0].items()
        async with post(g.url + "/fleet/pin", json={"model": "m2", "pinned": False}) as r:
            assert (await r.json())["pinned"] is False
        async with post(g.url + "/fleet/unload", json={"model": "m2"}) as r:
            assert r.status == 200
        async with post(g.url + "/fleet/load", json={}) as r:
            assert r.status == 400


async def test_api_keys():
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a], api_keys=["k1", "k2"])) as g:
        async with g.http.get(g.url + "/health") as r:
            assert r.status == 200
        async with g.http.head(g.url + "/") as r:
            assert r.status == 200
        async with await g.chat("m1") as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "authentication_error"
        for headers in ({"Authorization": "Bearer k2"}, {"x-api-key": "k1"}):
            async with g.http.get(g.url + "/v1/models", headers=headers) as r:
                assert r.status == 200
        async with g.http.get(g.url + "/fleet", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with g.http.post(g.url + "/v1/messages", json={}) as r:
            assert r.status == 401
            assert (await r.json())["type"] == "error"  # the Anthropic envelope


async def test_unknown_route_is_404_in_envelope():
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a])) as g, g.http.get(g.url + "/v2/nothing") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


async def test_metrics_after_known_traffic():
    a = FakeNeuron("a", {**loaded("m1"), "m2": FakeModel("m2")})
    async with fleet(a), running(make_config([a])) as g:
        for _ in range(3):
            async with await g.chat("m1") as r:
                assert r.status == 200
        async with await g.chat("m2", stream=True) as r:
            await read_events(r)
        async with await g.chat("nope") as r:
            assert r.status == 404
        m = samples(await g.metrics())
        mn1 = (("model", "m1"), ("neuron", "a"))
        mn2 = (("model", "m2"), ("neuron", "a"))
        req = "cortex_requests_total"
        assert m[(req, (("api", "chat.completions"), *mn1, ("status", "200")))] == 3
        assert m[(req, (("api", "chat.completions"), *mn2, ("status", "200")))] == 1
        errors = (
            "cortex_request_errors_total",
            (("model", ""), ("neuron", ""), ("reason", "model_not_found")),
        )
        assert m[errors] == 1
        assert m[("cortex_prompt_tokens_total", mn1)] == 15
        assert m[("cortex_completion_tokens_total", mn1)] == 9
        assert m[("cortex_cached_prompt_tokens_total", mn1)] == 6
        assert m[("cortex_completion_tokens_total", mn2)] == 3
        assert m[("cortex_request_duration_seconds_count", mn1)] == 3
        assert m[("cortex_time_to_first_token_seconds_count", mn2)] == 1
        assert m[("cortex_tokens_per_second_count", mn2)] == 1
        assert m[("cortex_cold_starts_total", mn2)] == 1
        assert m[("cortex_model_load_duration_seconds_count", mn2)] == 1
        assert m[("cortex_neuron_up", (("neuron", "a"),))] == 1
        assert m[("cortex_model_loaded", mn2)] == 1
        assert m[("cortex_model_in_flight", mn1)] == 0
        dev = (("device", "cpu"), ("neuron", "a"))
        assert m[("cortex_device_memory_total_bytes", dev)] == a.total_bytes
        assert ("cortex_device_memory_free_bytes", dev) in m
        le = [k for k in m if k[0] == "cortex_time_to_first_token_seconds_bucket"]
        assert {dict(k[1])["le"] for k in le} >= {"0.01", "120.0", "+Inf"}
