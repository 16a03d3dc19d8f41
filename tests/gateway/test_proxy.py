"""OpenAI passthrough against scripted neurons: bodies, streams, usage, retries, failures."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

from cortex.api.sse import SSEParser
from cortex.config import ModelEntry, NeuronSection
from cortex.gateway.neuron_client import rewrite_loopback
from cortex.gateway.state import KEEPALIVE_S
from tests.support.fake_neuron import CHAT, FakeModel, FakeNeuron, Reply, fleet, loaded
from tests.support.gateway_app import make_config, running


async def read_events(response) -> list:
    parser = SSEParser()
    events = []
    async for chunk in response.content.iter_any():
        events.extend(parser.feed(chunk))
    return events


async def test_non_streaming_body_forwarded_untouched():
    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:
        raw = b'{"model": "m1",  "messages": [{"role":"user","content":"hi"}], "x_unknown": 1}'
        async with g.http.post(
            g.url + "/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 200
            body = await r.json()
            assert body["choices"][0]["message"]["content"] == "hi from a"
            assert r.headers["x-cortex-neuron"] == "a"
            assert float(r.headers["x-cortex-overhead-ms"]) >= 0
        assert [seen.body for seen in a.seen(CHAT)] == [raw]


async def test_alias_is_resolved_in_the_body():
    async with fleet(FakeNeuron("a", loaded("org/model-1"))) as (a,):
        config = make_config([a], aliases={"short": "org/model-1"})
        async with running(config) as g, await g.chat("short") as r:
            assert r.status == 200
        assert a.chats[0]["model"] == "org/model-1"


async def test_stream_relayed_and_usage_chunk_stripped_unless_asked():
    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:
        async with await g.chat("m1", stream=True) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(r)
        assert events[-1].done
        chunks = [e.json() for e in events if e.data and not e.done]
        assert all(c["choices"] for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == "tok0 tok1 tok2 "
        # The neuron was asked for usage all the same (token metrics need it).
        assert a.chats[0]["stream_options"] == {"include_usage": True}

        async with await g.chat("m1", stream=True, stream_options={"include_usage": True}) as r:
            events = await read_events(r)
        final = [e.json() for e in events if e.data and not e.done][-1]
        assert final["choices"] == [] and final["usage"]["completion_tokens"] == 3


async def test_unknown_model_is_404_in_openai_envelope():
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a])) as g, await g.chat("nope") as r:
        assert r.status == 404
        error = (await r.json())["error"]
        assert error["code"] == "model_not_found" and "param" in error


async def test_bad_json_is_400():
    a = FakeNeuron("a", loaded("m1"))
    async with (
        fleet(a),
        running(make_config([a])) as g,
        g.http.post(g.url + "/v1/chat/completions", data=b"{nope") as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_neuron_error_is_relayed_with_its_status():
    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:
        a.script.reply.status = 400
        async with await g.chat("m1") as r:
            assert r.status == 400
            assert (await r.json())["error"]["message"] == "scripted 400"


async def test_retry_on_another_neuron_before_first_byte():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", loaded("m1"))
    async with fleet(a, b), running(make_config([a, b])) as g:
        a.script.refuse = True
        b.script.refuse = False
        for _ in range(4):
            async with await g.chat("m1") as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["message"]["content"] == "hi from b"


async def test_a_connection_closed_unanswered_is_retried_on_the_same_neuron():
    """What a pooled keep-alive connection looks like when the neuron closed it as idle just as
    the gateway reused it: the only neuron gets the request again, streamed or not. A neuron
    that keeps closing is given up (502), not retried for ever."""
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a])) as g:
        for stream in (False, True):
            a.script.refusals = 1
            chats = len(a.chats)
            async with await g.chat("m1", stream=stream) as r:
                assert r.status == 200
                assert (b"[DONE]" if stream else b"hi from a") in await r.read()
            assert len(a.chats) == chats + 2  # the closed one, then the answered one
        a.script.refuse = True
        async with await g.chat("m1") as r:
            assert r.status == 502


async def test_a_neuron_answering_503_is_retried_elsewhere():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", loaded("m1"))
    async with fleet(a, b), running(make_config([a, b])) as g:
        a.script.reply.status = b.script.reply.status = 503
        async with await g.chat("m1") as r:
            assert r.status == 503 and "Retry-After" in r.headers
        b.script.reply.status = 200
        for _ in range(3):
            async with await g.chat("m1") as r:
                assert r.status == 200 and r.headers["x-cortex-neuron"] == "b"


async def test_the_neurons_retry_after_is_passed_on():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", loaded("m1"))
    async with fleet(a, b), running(make_config([a, b])) as g:
        for neuron in (a, b):
            neuron.script.reply = Reply(status=429, headers={"Retry-After": "7"})
        async with await g.chat("m1") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "7"
        # Every neuron busy: come back when the first of them said it would be free.
        a.script.reply = Reply(status=503, headers={"Retry-After": "12"})
        b.script.reply = Reply(status=503, headers={"Retry-After": "3"})
        async with await g.chat("m1") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "3"
        # An HTTP date works too.
        date = formatdate(time.time() + 30, usegmt=True)
        a.script.reply.headers["Retry-After"] = b.script.reply.headers["Retry-After"] = date
        async with await g.chat("m1") as r:
            assert r.status == 503 and 25 <= int(r.headers["Retry-After"]) <= 30


async def test_openai_kind_upstream_is_routed_but_never_managed():
    a = FakeNeuron("plain", loaded("m1"))
    async with fleet(a):
        config = make_config([a])
        config.neurons[0].kind = "openai"
        async with running(config) as g:
            async with g.http.get(g.url + "/v1/models") as r:
                (model,) = (await r.json())["data"]
            assert model["id"] == "m1" and model["cortex"]["state"] == "loaded"
            async with await g.chat("m1") as r:
                assert r.status == 200
            async with g.http.post(g.url + "/fleet/unload", json={"model": "m1"}) as r:
                assert r.status == 400
        assert a.unloads == []


async def test_refused_everywhere_is_502():
    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:
        a.script.refuse = True
        async with await g.chat("m1") as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_error"


async def test_neuron_killed_mid_stream_gives_clean_error_and_gateway_goes_on():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", loaded("m2"))
    async with fleet(a, b):
        config = make_config([a, b], down_after_failures=2)
        async with running(config) as g:
            a.script.reply.drop = True
            async with await g.chat("m1", stream=True) as r:
                assert r.status == 200
                events = await read_events(r)
            assert events[-1].done  # the gateway ends a broken stream as the neuron would
            error = events[-2].json()["error"]
            assert error["code"] == "upstream_error" and "mid-stream" in error["message"]
            # Kill it for real: marked down, others keep serving, back up when it returns.
            port = a.port
            await a.stop()
            await g.settle(lambda: not g.gw.fleet.get("a").up)
            async with await g.chat("m2") as r:
                assert r.status == 200
            async with await g.chat("m1") as r:
                assert r.status == 503
                assert "Retry-After" in r.headers
            a.script.reply.drop = False
            await a.start(port)
            await g.settle(lambda: g.gw.fleet.get("a").up)
            async with await g.chat("m1") as r:
                assert r.status == 200


async def test_stalled_stream_hits_the_read_timeout():
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a], stall_timeout=0.3)) as g:
        a.script.reply.stall = True
        async with await g.chat("m1", stream=True) as r:
            events = await read_events(r)
        assert "error" in events[-2].json() and events[-1].done


async def test_client_disconnect_closes_the_upstream():
    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:
        a.script.chunks = 1000
        a.script.chunk_delay = 0.01
        r = await g.chat("m1", stream=True)
        await r.content.readline()
        r.close()
        await g.settle(lambda: a.disconnects == 1)
        await g.settle(lambda: a.models["m1"].in_flight == 0)
        assert g.gw.fleet.get("a").models["m1"].in_flight == 0


async def test_loopback_endpoint_rewritten_to_neuron_host():
    # The neuron listens on 127.0.0.2 and says "localhost": only the rewrite reaches it.
    a = FakeNeuron("a", loaded("m1"), host="127.0.0.2")
    async with fleet(a), running(make_config([a])) as g:
        async with await g.chat("m1") as r:
            assert r.status == 200
        assert g.gw.fleet.get("a").models["m1"].base_url == a.url


async def test_neuron_token_is_sent():
    a = FakeNeuron("a", loaded("m1"), token="sekrit")
    async with fleet(a), running(make_config([a])) as g:
        async with await g.chat("m1") as r:
            assert r.status == 200
        assert {seen.auth for seen in a.requests} == {"Bearer sekrit"}


async def test_allow_list_keeps_a_model_off_other_neurons():
    a, b = FakeNeuron("a", loaded("m1")), FakeNeuron("b", {"m1": FakeModel("m1")})
    async with fleet(a, b):
        config = make_config([a, b], models=[ModelEntry(id="m1", neurons=["b"])])
        async with running(config) as g, await g.chat("m1") as r:
            assert r.status == 200
            assert r.headers["x-cortex-neuron"] == "b"
        assert b.loads == ["m1"]


async def test_concurrent_streams_all_complete():
    async with fleet(FakeNeuron("a", loaded("m1"))) as (a,), running(make_config([a])) as g:

        async def one() -> bool:
            async with await g.chat("m1", stream=True) as r:
                return (await read_events(r))[-1].done

        assert all(await asyncio.gather(*(one() for _ in range(20))))


def test_rewrite_loopback_keeps_port_and_path():
    beast = "http://beast.internal:13131"
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]"):
        assert (
            rewrite_loopback(f"http://{host}:9000/base", beast) == "http://beast.internal:9000/base"
        )
    assert rewrite_loopback("http://other:9000", beast) == "http://other:9000"
    assert (
        rewrite_loopback("http://localhost:9000", "http://127.0.0.1:1") == "http://localhost:9000"
    )


def test_idle_connections_are_dropped_before_a_default_neuron_closes_them():
    """The gateway's pool keeps an idle connection for less time than a neuron with default
    settings keeps it open, so that reuse rarely meets a connection being closed."""
    assert float(NeuronSection().idle_timeout) > KEEPALIVE_S
