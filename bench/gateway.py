"""Gateway overhead benchmark: the real `cortex serve` in front of a minimal fast upstream.

    python bench/gateway.py [--seconds 4] [--concurrency 1 64] [--chunks 16] [--in-process]

Starts a minimal neuron-shaped upstream (canned chat completion, canned SSE stream of
`--chunks` chunks plus usage) and `cortex serve --neuron <it>` as subprocesses, then for
non-streaming and streaming requests at each concurrency level measures the upstream directly
and through the gateway in the same run, one after the other. Load comes from separate client
processes (one per 32 concurrent requests) so the client is not the bottleneck it measures.
Prints req/s both ways, the latency the gateway adds (p50, p99 of whole requests: gateway
minus direct) and the gateway process's CPU time per request (from /proc; warm-up included, so
an upper bound): on a shared, loaded machine the latencies mostly measure scheduling delays
between the processes, while 1e6 / (CPU us per request) is the rate one free core sustains.
`--in-process` adds a run with upstream, gateway and client in one event loop at concurrency 1,
which takes the scheduler out and leaves the gateway's own added latency.
Targets (issue 6): added p50 < 1 ms at c=1, >= 2000 non-streaming req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cortex.gateway.local_neuron import free_loopback_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}).encode()
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": True}
).encode()


def upstream_app(chunks: int):
    """The minimal upstream: neuron lifecycle routes plus canned OpenAI answers."""
    from aiohttp import web

    usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
    answer = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": usage,
        }
    ).encode()

    def event(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    delta = {"index": 0, "delta": {"content": "tok "}, "finish_reason": None}
    chunk = event({"id": "c", "object": "chat.completion.chunk", "choices": [delta]})
    tail = event({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage})
    health = {
        "status": "ok",
        "devices": [{"id": "cpu", "name": "x", "total_bytes": 1 << 34, "free_bytes": 1 << 33}],
        "models": [{"id": MODEL, "state": "loaded", "device": "cpu", "bytes": 1, "in_flight": 0}],
    }
    models = {"object": "list", "data": [{"id": MODEL, "state": "loaded", "bytes": 1}]}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream":true' not in body.replace(b" ", b""):
            return web.Response(body=answer, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(chunk)
        await response.write(tail + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/health", lambda _: web.json_response(health))
    app.router.add_get("/models", lambda _: web.json_response(models))
    app.router.add_post("/v1/chat/completions", chat)
    return app


def run_upstream(port: int, chunks: int) -> None:
    """Serve `upstream_app` until killed."""
    from aiohttp import web

    web.run_app(upstream_app(chunks), host="127.0.0.1", port=port, access_log=None, print=None)


async def in_process(seconds: float, chunks: int) -> None:
    """Upstream, gateway and one client in one event loop, one request at a time: no
    scheduling between processes, so the added latency is the gateway's own work."""
    from aiohttp import web

    from cortex.config import CortexConfig, NeuronEntry
    from cortex.gateway.app import create_app

    async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_loopback_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, port

    upstream, up_port = await serve(upstream_app(chunks))
    config = CortexConfig()
    config.neurons = [NeuronEntry(name="up", endpoint=f"http://127.0.0.1:{up_port}")]
    gateway, gw_port = await serve(create_app(config))
    print(f"in-process, concurrency 1, {seconds}s each")
    print(f"{'mode':<10}{'direct p50':>12}{'gw p50':>9}{'added p50':>11}{'added p99':>11}  (ms)")
    try:
        for stream in (False, True):
            body = STREAM_BODY if stream else BODY
            path = "/v1/chat/completions"
            direct = sorted(await _client(f"http://127.0.0.1:{up_port}{path}", body, 1, seconds))
            via = sorted(await _client(f"http://127.0.0.1:{gw_port}{path}", body, 1, seconds))
            print(
                f"{'stream' if stream else 'json':<10}{pct(direct, 0.5):>12.3f}"
                f"{pct(via, 0.5):>9.3f}{pct(via, 0.5) - pct(direct, 0.5):>11.3f}"
                f"{pct(via, 0.99) - pct(direct, 0.99):>11.3f}"
            )
    finally:
        await gateway.cleanup()
        await upstream.cleanup()


async def _client(url: str, body: bytes, concurrency: int, seconds: float) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(end: float, record: bool) -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                if record:
                    latencies.append(time.perf_counter() - t0)

        warm = time.perf_counter() + 0.5
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
        end = time.perf_counter() + seconds
        await asyncio.gather(*(worker(end, True) for _ in range(concurrency)))
    return latencies


def measure(url: str, stream: bool, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """Run client processes against `url`; returns (req/s, sorted latencies)."""
    procs = max(1, concurrency // 32)
    per = concurrency // procs
    command = [sys.executable, __file__, "--client", url, "--concurrency", str(per)]
    command += ["--seconds", str(seconds)] + (["--stream"] if stream else [])
    children = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(procs)]
    latencies: list[float] = []
    for child in children:
        out, _ = child.communicate()
        latencies += json.loads(out)
    latencies.sort()
    return len(latencies) / seconds, latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def wait_for(url: str, check=lambda body: True, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if check(json.loads(r.read())):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument(
        "--in-process", action="store_true", help="also measure everything in one event loop"
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        return run_upstream(args.upstream, args.chunks)
    if args.client:
        body = STREAM_BODY if args.stream else BODY
        lat = asyncio.run(_client(args.client, body, args.concurrency[0], args.seconds))
        return print(json.dumps(lat))

    up_port, gw_port, metrics_port = (free_loopback_port() for _ in range(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["CORTEX_LOG_LEVEL"] = "WARNING"
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--upstream", str(up_port), "--chunks", str(args.chunks)]
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "cortex", "serve", "--neuron", f"http://127.0.0.1:{up_port}"]
        + ["--listen", f"127.0.0.1:{gw_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_for(f"http://127.0.0.1:{up_port}/health")
        wait_for(f"http://127.0.0.1:{gw_port}/health", lambda b: b["neurons"]["up"] == 1)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.seconds}s each")
        print(
            f"{'mode':<10}{'conc':>5}{'direct req/s':>14}{'gateway req/s':>15}"
            f"{'direct p50':>12}{'gw p50':>9}{'added p50':>11}{'added p99':>11}"
            f"{'gw CPU/req':>12}  (ms; CPU in us)"
        )
        for stream in (False, True):
            for conc in args.concurrency:
                d_rps, d_lat = measure(direct, stream, conc, args.seconds)
                cpu = cpu_seconds(gateway.pid)
                g_rps, g_lat = measure(via, stream, conc, args.seconds)
                # Includes the warm-up requests, which are not counted: an upper bound.
                cpu_us = (cpu_seconds(gateway.pid) - cpu) / len(g_lat) * 1e6
                print(
                    f"{'stream' if stream else 'json':<10}{conc:>5}{d_rps:>14.0f}{g_rps:>15.0f}"
                    f"{pct(d_lat, 0.5):>12.3f}{pct(g_lat, 0.5):>9.3f}"
                    f"{pct(g_lat, 0.5) - pct(d_lat, 0.5):>11.3f}"
                    f"{pct(g_lat, 0.99) - pct(d_lat, 0.99):>11.3f}{cpu_us:>12.0f}",
                    flush=True,
                )
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(10)
        upstream.wait(10)
    if args.in_process:
        asyncio.run(in_process(args.seconds, args.chunks))


if __name__ == "__main__":
    main()
