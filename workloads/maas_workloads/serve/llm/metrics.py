"""Prometheus metrics of the LLM server: vLLM's names and labels, plus the maas_ serving signals.

vLLM's names (`vllm:*`, label `model_name`, and `engine`) let the dashboards, alerts and
HPA rules written for vLLM read this server unchanged; the maas_ ones are those every
ModelService pod exports (contract.py), so `autoscaling.metric: inflight` works here too.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from maas_workloads.contract import (
    METRIC_INFLIGHT_REQUESTS,
    METRIC_LLM_KV_CACHE_USAGE,
    METRIC_LLM_WAITING,
    METRIC_QUEUE_DEPTH,
    METRIC_REQUESTS_TOTAL,
    VLLM_MODEL_LABEL,
)

ENGINE = "0"
"""vLLM labels every series with its engine index; one engine per server here."""
# vLLM's buckets for these histograms (vllm/v1/metrics/loggers.py), so recorded quantiles compare.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
_REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class LLMMetrics:
    """All series of one served model, with label children resolved once."""

    def __init__(self, model_name: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._model = model_name
        vllm = [VLLM_MODEL_LABEL, "engine"]
        labels = (model_name, ENGINE)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, vllm, registry=self.registry)

        self._running = gauge("vllm:num_requests_running", "Sequences in the engine (prefill or decode).")
        self._waiting = gauge(METRIC_LLM_WAITING, "Sequences waiting for a slot or for KV-cache blocks.")
        self._kv_usage = gauge(METRIC_LLM_KV_CACHE_USAGE, "Fraction of the KV cache held by sequences (0..1).")
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first token.",
            vllm,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        ).labels(*labels)
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between two tokens of a sequence.",
            vllm,
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        ).labels(*labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            vllm,
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        ).labels(*labels)
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request waited for a sequence slot.",
            vllm,
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        ).labels(*labels)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens prefilled.", vllm, registry=self.registry)
        self.prompt_tokens = self.prompt_tokens.labels(*labels)
        generation = Counter("vllm:generation_tokens", "Tokens generated.", vllm, registry=self.registry)
        self.generation_tokens = generation.labels(*labels)
        self._success = Counter(
            "vllm:request_success",
            "Requests finished, by finish reason.",
            [*vllm, "finished_reason"],
            registry=self.registry,
        )
        self._requests = Counter(
            METRIC_REQUESTS_TOTAL.removesuffix("_total"),
            "Requests by model, protocol and HTTP status code.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            METRIC_INFLIGHT_REQUESTS,
            "Generation requests received and not yet answered.",
            ["model"],
            registry=self.registry,
        ).labels(model_name)
        self._queue_depth = Gauge(
            METRIC_QUEUE_DEPTH, "Requests waiting for a sequence slot.", ["model"], registry=self.registry
        )
        self.load_time = Gauge(
            "maas_inference_model_load_seconds",
            "Time to verify, load and warm up the model.",
            ["model"],
            registry=self.registry,
        ).labels(model_name)
        self.ready = Gauge(
            "maas_inference_model_ready",
            "1 when the model is loaded and the server takes requests, else 0.",
            ["model"],
            registry=self.registry,
        ).labels(model_name)
        self._labels = labels

    def watch(self, running: Callable[[], float], waiting: Callable[[], float], kv: Callable[[], float]) -> None:
        """Read the gauges from the engine at scrape time."""
        self._running.labels(*self._labels).set_function(running)
        self._waiting.labels(*self._labels).set_function(waiting)
        self._kv_usage.labels(*self._labels).set_function(kv)
        self._queue_depth.labels(self._model).set_function(waiting)

    def finished(self, reason: str) -> None:
        self._success.labels(*self._labels, reason).inc()

    def request(self, code: int) -> None:
        self._requests.labels(self._model, "openai", str(code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
