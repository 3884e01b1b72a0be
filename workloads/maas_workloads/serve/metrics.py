"""Prometheus metrics of the inference server, on its own registry (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from maas_workloads.contract import METRIC_INFLIGHT_REQUESTS, METRIC_QUEUE_DEPTH, METRIC_REQUESTS_TOTAL

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        # `*_created` series double the exposition and tell an autoscaler nothing.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            METRIC_REQUESTS_TOTAL.removesuffix("_total"),
            "Inference requests by model, protocol (v1, v2) and HTTP status code.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "maas_inference_request_duration_seconds",
            "Time from the request's arrival to its response, inference requests only.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "maas_inference_queue_duration_seconds",
            "Time a request waited in the batching queue before its batch ran.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "maas_inference_compute_duration_seconds",
            "Time one batch spent in the model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "maas_inference_batch_size",
            "Rows per batch the model ran.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            METRIC_INFLIGHT_REQUESTS,
            "Inference requests received and not yet answered.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            METRIC_QUEUE_DEPTH,
            "Inference requests waiting for a batch.",
            ["model"],
            registry=self.registry,
        )
        self.load_time = Gauge(
            "maas_inference_model_load_seconds",
            "Time to fetch, verify, load and warm up the model.",
            ["model"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "maas_inference_model_ready",
            "1 when the model is loaded and the server takes requests, else 0.",
            ["model"],
            registry=self.registry,
        )

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """The metrics of one model, with label children resolved once instead of per request."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics = metrics
        self._model = model
        self._requests: dict[tuple[str, int], Counter] = {}
        self._latency = {protocol: metrics.latency.labels(model, protocol) for protocol in ("v1", "v2")}
        self.queue_time = metrics.queue_time.labels(model)
        self.compute_time = metrics.compute_time.labels(model)
        self.batch_size = metrics.batch_size.labels(model)
        self.inflight = metrics.inflight.labels(model)
        self.load_time = metrics.load_time.labels(model)
        self.ready = metrics.ready.labels(model)

    def watch_queue_depth(self, depth: Callable[[], float]) -> None:
        self._metrics.queue_depth.labels(self._model).set_function(depth)

    def observe_request(self, protocol: str, code: int, seconds: float) -> None:
        counter = self._requests.get((protocol, code))
        if counter is None:
            counter = self._requests[protocol, code] = self._metrics.requests.labels(self._model, protocol, str(code))
        counter.inc()
        self._latency[protocol].observe(seconds)
