"""The proxied-request owner (gateway/exchange.py) treats every dialect alike: a stream that
breaks is counted and its neuron polled at once whatever the route, time to first token is found
whatever the backend's JSON spacing, and an alias is resolved once for routing, labels and the
body the neuron gets, while the client's answer keeps the name it asked for."""

from __future__ import annotations

from cortex.api.sse import SSEParser
from cortex.config import ModelEntry
from tests.support.fake_neuron import CHAT, FakeModel, FakeNeuron, Reply, fleet, loaded
from tests.support.gateway_app import make_config, running, samples

MESSAGE = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def errors(metrics: str, reason: str) -> float:
    labels = (("model", "m1"), ("neuron", "a"), ("reason", reason))
    return samples(metrics).get(("cortex_request_errors_total", labels), 0.0)


async def test_a_broken_anthropic_stream_is_counted_and_its_neuron_polled_at_once():
    a = FakeNeuron("a", loaded("m1"))
    # Polls far apart: a poll right after the break can only be the one the break asked for.
    async with fleet(a), running(make_config([a], poll_interval=60.0)) as g:
        a.script.reply = Reply(content="hello there", drop=True)
        polls = len(a.seen("/health"))
        body = {"model": "m1", "stream": True, **MESSAGE}
        async with g.http.post(g.url + "/v1/messages", json=body) as r:
            events = list(SSEParser().feed(await r.read()))
        assert events[-1].event == "error"
        assert "mid-stream" in events[-1].json()["error"]["message"]
        assert errors(await g.metrics(), "upstream_broken") == 1.0
        await g.settle(lambda: len(a.seen("/health")) > polls)


async def test_openai_and_anthropic_streams_break_alike():
    a = FakeNeuron("a", loaded("m1"))
    async with fleet(a), running(make_config([a], poll_interval=60.0)) as g:
        a.script.reply = Reply(content="hello there", drop=True)
        async with await g.chat("m1", stream=True) as r:
            events = list(SSEParser().feed(await r.read()))
        assert events[-1].done  # the error event, then a clean end
        assert "mid-stream" in events[-2].json()["error"]["message"]
        body = {"model": "m1", "stream": True, **MESSAGE}
        async with g.http.post(g.url + "/v1/messages", json=body) as r:
            await r.read()
        assert errors(await g.metrics(), "upstream_broken") == 2.0


async def test_time_to_first_token_on_a_backend_that_spaces_its_json():
    a = FakeNeuron("plain", loaded("m1"))
    async with fleet(a):
        config = make_config([a])
        config.neurons[0].kind = "openai"
        async with running(config) as g:
            a.script.spaced_json = True
            async with await g.chat("m1", stream=True) as r:
                raw = await r.read()
            assert b'"content": "tok0 "' in raw  # relayed as the backend wrote it
            labels = (("model", "m1"), ("neuron", "plain"))
            ttft = samples(await g.metrics())[("cortex_time_to_first_token_seconds_count", labels)]
            assert ttft == 1.0


async def test_an_alias_is_resolved_once_for_every_dialect():
    a = FakeNeuron("a", {"org/model-1": FakeModel("org/model-1", state="loaded", max_context=64)})
    async with fleet(a):
        entry = ModelEntry("org/model-1", max_context=64)
        config = make_config([a], models=[entry], aliases={"short": "org/model-1"})
        async with running(config) as g:
            async with await g.chat("short") as r:
                assert r.status == 200
            body = {"model": "short", **MESSAGE, "max_tokens": 32000}
            async with g.http.post(g.url + "/v1/messages", json=body) as r:
                assert r.status == 200
                message = await r.json()
            metrics = samples(await g.metrics())
    sent = a.bodies(CHAT)
    assert [b["model"] for b in sent] == ["org/model-1", "org/model-1"]
    assert sent[1]["max_tokens"] == 64  # clamped to the resolved model's context
    assert message["model"] == "short"  # the client's own name comes back
    labels = (("api", "messages"), ("model", "org/model-1"), ("neuron", "a"), ("status", "200"))
    assert metrics[("cortex_requests_total", labels)] == 1.0
