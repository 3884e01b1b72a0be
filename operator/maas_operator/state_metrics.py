"""Per-object state of every TrainingJob and ModelService as Prometheus metrics, read at scrape time.

The kube-state-metrics pattern: the operator already holds each object's latest status, so
alerts and dashboards can name the object (labels `namespace` and `trainingjob` or
`modelservice`) without another exporter. Scrape the operator with `honor_labels` (the chart's
ServiceMonitor sets it), or Prometheus renames `namespace` to `exported_namespace`.

| metric | type | labels |
|---|---|---|
| `maas_trainingjob_status_condition` | gauge, 1 | namespace, trainingjob, type, status, reason |
| `maas_trainingjob_gpus` | gauge | namespace, trainingjob: `nvidia.com/gpu` its pods request |
| `maas_trainingjob_status_restarts_total` | counter | attempts after the first (`status.attempt` - 1) |
| `maas_trainingjob_status_worker_restarts_total` | counter | `status.workerRestarts` |
| `maas_modelservice_status_condition` | gauge, 1 | namespace, modelservice, type, status, reason |
| `maas_modelservice_status_replicas` | gauge | namespace, modelservice, state (desired, ready, updated, available) |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from maas_operator.api.modelservice import KIND as MODELSERVICE
from maas_operator.api.trainingjob import KIND as TRAININGJOB

REPLICA_STATES = ("desired", "ready", "updated", "available")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def requested_gpus(spec: Mapping[str, Any]) -> float:
    """GPUs (`resources.gpu`, i.e. nvidia.com/gpu) of the head plus every worker pod."""
    workers = spec.get("workers") or {}
    head = spec.get("head") or {}
    per_worker = _number((workers.get("resources") or {}).get("gpu"))
    return _number(workers.get("replicas", 1)) * per_worker + _number((head.get("resources") or {}).get("gpu"))


def families(objects: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """The state metrics of `objects` (custom resource bodies with their status); pure."""
    label = {TRAININGJOB: "trainingjob", MODELSERVICE: "modelservice"}
    conditions = {
        kind: GaugeMetricFamily(
            f"maas_{name}_status_condition",
            f"The conditions in each {kind}'s status (1 per condition), with their status and reason.",
            labels=["namespace", name, "type", "status", "reason"],
        )
        for kind, name in label.items()
    }
    gpus = GaugeMetricFamily(
        "maas_trainingjob_gpus",
        "nvidia.com/gpu requested by a TrainingJob's pods.",
        labels=["namespace", "trainingjob"],
    )
    restarts = CounterMetricFamily(
        "maas_trainingjob_status_restarts",
        "Attempts of a TrainingJob after its first (retries and resumes).",
        labels=["namespace", "trainingjob"],
    )
    worker_restarts = CounterMetricFamily(
        "maas_trainingjob_status_worker_restarts",
        "Worker pods of a TrainingJob recreated inside an attempt (status.workerRestarts).",
        labels=["namespace", "trainingjob"],
    )
    replicas = GaugeMetricFamily(
        "maas_modelservice_status_replicas",
        "A ModelService's stable pods by state (status.replicas).",
        labels=["namespace", "modelservice", "state"],
    )
    for obj in objects:
        kind = obj.get("kind", "")
        if kind not in label:
            continue
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        identity = [str(metadata.get("namespace", "")), str(metadata.get("name", ""))]
        for condition in status.get("conditions") or []:
            values = [str(condition.get(key, "")) for key in ("type", "status", "reason")]
            conditions[kind].add_metric([*identity, *values], 1)
        if kind == TRAININGJOB:
            gpus.add_metric(identity, requested_gpus(obj.get("spec") or {}))
            restarts.add_metric(identity, max(0.0, _number(status.get("attempt")) - 1))
            worker_restarts.add_metric(identity, _number(status.get("workerRestarts")))
        else:
            counts = status.get("replicas") or {}
            for state in REPLICA_STATES:
                replicas.add_metric([*identity, state], _number(counts.get(state)))
    return [*conditions.values(), gpus, restarts, worker_restarts, replicas]


class StateCollector(Collector):
    """Collects `families` of whatever `objects` returns at the moment of each scrape."""

    def __init__(self, objects: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._objects = objects

    def collect(self) -> Iterator[Metric]:
        yield from families(self._objects())
