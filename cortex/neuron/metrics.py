"""Prometheus metrics of one neuron (`GET /metrics`), every series labelled by `model`.

Counters and the TTFT histogram are updated by the request path as tokens flow, so they keep
counting across unloads. Gauges that describe the engine's current state (running, waiting,
KV cache usage, prefix cache hits) are read from each worker's `stats()` at scrape time by a
custom collector, so they never go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# model id -> the engine's EngineStats for it.
StatsSource = Callable[[], dict[str, Any]]


class _EngineCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily(
            "neuron_requests_running", "Sequences in the running batch", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "neuron_requests_waiting", "Sequences queued for admission", labels=["model"]
        )
        usage = GaugeMetricFamily(
            "neuron_kv_cache_usage_ratio", "Share of KV cache blocks in use", labels=["model"]
        )
        hits = CounterMetricFamily(
            "neuron_prefix_cache_hits",
            "Prompt tokens served from the prefix cache",
            labels=["model"],
        )
        for model, stats in self.source().items():
            running.add_metric([model], stats.running)
            waiting.add_metric([model], stats.waiting)
            total = stats.kv_blocks_total or 1
            usage.add_metric([model], stats.kv_blocks_used / total)
            hits.add_metric([model], stats.prefix_hits)
        return [running, waiting, usage, hits]


class NeuronMetrics:
    """The neuron's metric registry (one per app, so tests can run several in a process)."""

    def __init__(self, stats_source: StatsSource) -> None:
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.prompt_tokens = Counter(
            "neuron_prompt_tokens", "Prompt tokens processed", labels, registry=self.registry
        )
        self.generation_tokens = Counter(
            "neuron_generation_tokens", "Tokens generated", labels, registry=self.registry
        )
        self.requests = Counter(
            "neuron_requests",
            "Generation requests answered, by HTTP status",
            ["model", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "neuron_time_to_first_token_seconds",
            "Seconds from request to first generated token",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "neuron_model_load_seconds",
            "Seconds the last load of the model took",
            labels,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(stats_source))

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)
