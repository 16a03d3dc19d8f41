"""Issue 16, point 3: a long non-streaming answer from a healthy cortex neuron is never cut by
a read timeout (it was a misleading 502 after `stream_read_timeout`, 300 s); streams of a
cortex neuron are watched by `stall_timeout`, other OpenAI servers keep the long read timeout.

Scripted neurons (tests/support/fake_neuron.py): a real one cannot be told to be slow exactly."""

from __future__ import annotations

import asyncio

from tests.support.fake_neuron import FakeModel, FakeNeuron, fleet
from tests.support.gateway_app import make_config, running


def test_slow_non_streaming_answer_is_not_cut_while_the_neuron_is_healthy():
    asyncio.run(asyncio.wait_for(_slow_answer(), 30))


async def _slow_answer() -> None:
    a = FakeNeuron("a", {"m1": FakeModel("m1", state="loaded")})
    async with fleet(a), running(make_config([a], stream_read_timeout=0.3, stall_timeout=1.0)) as g:
        a.script.chunk_delay = 1.5  # five times the read timeout; polls keep answering
        async with await g.chat("m1") as r:
            assert r.status == 200, await r.text()
