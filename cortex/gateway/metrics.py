"""Prometheus metrics of the gateway (README: "Metrics"), served on `metrics_listen`.

Names are exactly the design's. Labels: `model` and `neuron` wherever a request or an action
has them (empty string before routing decided), plus `api` (`chat.completions`, `completions`,
`messages`, `count_tokens`, `models`, `fleet`, `other`) and `status` (HTTP status) on
`cortex_requests_total`, `reason` on errors (the cortex error code, `upstream_broken`,
`client_disconnect`) and evictions (`capacity`, `idle`), and `device` on memory gauges.
Fleet gauges (`cortex_neuron_up`, `cortex_model_loaded`, `cortex_model_in_flight`, device
memory) are computed from fleet state at scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cortex.gateway.fleet import Fleet

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
MN = ("model", "neuron")

# `_created` series double the output and no dashboard reads them.
disable_created_metrics()


class _FleetCollector(Collector):
    """Gauges read from the fleet at scrape time."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cortex_neuron_up", "1 if the neuron answers polls", labels=["neuron"]
        )
        loaded = GaugeMetricFamily("cortex_model_loaded", "1 if loaded on the neuron", labels=MN)
        in_flight = GaugeMetricFamily(
            "cortex_model_in_flight", "Requests in flight through the gateway", labels=MN
        )
        total = GaugeMetricFamily(
            "cortex_device_memory_total_bytes", "Device memory", labels=["neuron", "device"]
        )
        free = GaugeMetricFamily(
            "cortex_device_memory_free_bytes", "Free device memory", labels=["neuron", "device"]
        )
        for neuron in self.fleet:
            up.add_metric([neuron.name], 1.0 if neuron.up else 0.0)
            for place in neuron.models.values():
                if place.state == "loaded":
                    loaded.add_metric([place.id, neuron.name], 1.0)
                if place.state == "loaded" or place.in_flight:
                    in_flight.add_metric([place.id, neuron.name], float(place.in_flight))
            for device in neuron.devices.values():
                total.add_metric([neuron.name, device.id], float(device.total_bytes))
                free.add_metric([neuron.name, device.id], float(device.free_bytes))
        yield from (up, loaded, in_flight, total, free)


class Metrics:
    """Every gateway metric, in a registry of its own (several gateways may share a process)."""

    def __init__(self, fleet: Fleet) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cortex_requests_total",
            "Requests answered",
            ["api", "status", "model", "neuron"],
            registry=r,
        )
        self.errors = Counter(
            "cortex_request_errors_total", "Failed requests", ["reason", *MN], registry=r
        )
        self.duration = Histogram(
            "cortex_request_duration_seconds",
            "Request duration",
            MN,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "cortex_time_to_first_token_seconds",
            "Time to the first streamed token",
            MN,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tps = Histogram(
            "cortex_tokens_per_second",
            "Completion tokens per second after the first",
            MN,
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("cortex_prompt_tokens_total", "Prompt tokens", MN, registry=r)
        self.completion_tokens = Counter(
            "cortex_completion_tokens_total", "Completion tokens", MN, registry=r
        )
        self.cached_tokens = Counter(
            "cortex_cached_prompt_tokens_total", "Prompt tokens served from cache", MN, registry=r
        )
        self.cold_starts = Counter(
            "cortex_cold_starts_total", "Loads the gateway started for a request", MN, registry=r
        )
        self.load_duration = Histogram(
            "cortex_model_load_duration_seconds",
            "Model load time",
            MN,
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "cortex_evictions_total", "Models unloaded by the gateway", ["reason", *MN], registry=r
        )
        r.register(_FleetCollector(fleet))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def of(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: prometheus_client's lookup is slow per request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def usage(self, model: str, neuron: str, usage: dict | None) -> int:
        """Count tokens from an OpenAI `usage` object; returns the completion tokens."""
        if not isinstance(usage, dict):
            return 0
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        if prompt:
            self.of(self.prompt_tokens, model, neuron).inc(prompt)
        if completion:
            self.of(self.completion_tokens, model, neuron).inc(completion)
        if cached:
            self.of(self.cached_tokens, model, neuron).inc(cached)
        return completion

    def app(self, middlewares: Sequence[Middleware] = ()) -> web.Application:
        """The `/metrics` application for the metrics port (with `middlewares`, e.g. auth)."""

        async def handle(_: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

        app = web.Application(middlewares=middlewares)
        app.router.add_get("/metrics", handle)
        return app
