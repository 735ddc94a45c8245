"""/metrics in Prometheus text format: per-block queues, batches, KV pages; residency; latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from blockllm.runtime.request import Request

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector:
    def __init__(self, aengine):
        self.aengine = aengine

    def collect(self):
        snap = self.aengine.snapshot  # published by the engine thread after each step
        families = [
            ("blockllm_block_queue_depth", "requests queued at a block", "queues"),
            ("blockllm_block_batch_tokens", "tokens in the block's last batch", "last_batch"),
            ("blockllm_block_batch_limit_tokens", "the block's batch limit", "limits"),
            ("blockllm_kv_pages_used", "KV pages in use", "kv_pages_used")]
        for name, doc, field in families:
            g = GaugeMetricFamily(name, doc, labels=["block"])
            for k, n in snap[field].items():
                g.add_metric([str(k)], n)
            yield g
        yield GaugeMetricFamily("blockllm_resident_bytes", "block weight bytes on the devices",
                                value=snap["resident_bytes"])
        yield GaugeMetricFamily("blockllm_requests_running", "admitted requests",
                                value=snap["running"])
        yield GaugeMetricFamily("blockllm_requests_waiting", "requests not yet admitted",
                                value=snap["waiting"])
        for name, value in snap["counters"].items():
            yield CounterMetricFamily(f"blockllm_{name}", f"engine {name}", value=value)


class Metrics:
    def __init__(self, aengine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(aengine))
        self.e2e = Histogram("blockllm_request_latency_seconds", "arrival to last token",
                             ["model", "cold"], buckets=_BUCKETS, registry=self.registry)
        self.ttft = Histogram("blockllm_time_to_first_token_seconds", "arrival to first token",
                              ["model", "cold"], buckets=_BUCKETS, registry=self.registry)
        aengine.finish_hooks.append(self.observe)

    def observe(self, req: Request) -> None:
        if not req.token_times:
            return
        labels = (req.model, str(req.cold).lower())
        self.ttft.labels(*labels).observe(req.token_times[0] - req.arrival)
        self.e2e.labels(*labels).observe(req.token_times[-1] - req.arrival)

    def render(self) -> bytes:
        return generate_latest(self.registry)
