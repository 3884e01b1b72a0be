"""The operator's Prometheus metrics (all prefixed maas_)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "maas_reconcile_total",
    "Reconciles by kind and result (ok, error).",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "maas_reconcile_duration_seconds",
    "Time spent in one reconcile, API calls included.",
    ["kind", "result"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
OBJECTS_BY_PHASE = Gauge(
    "maas_objects",
    "Custom resources known to this operator, by kind and phase.",
    ["kind", "phase"],
    registry=REGISTRY,
)
TRAININGJOB_RESTARTS = Counter(
    "maas_trainingjob_restarts_total",
    "TrainingJob attempts that ended and were retried or failed, by reason and whether charged.",
    ["reason", "charged"],
    registry=REGISTRY,
)
TRAININGJOB_WORKER_RESTARTS = Counter(
    "maas_trainingjob_worker_restarts_total",
    "Worker pods recreated inside an attempt.",
    registry=REGISTRY,
)
TRAININGJOB_TIME_TO_RUNNING = Histogram(
    "maas_trainingjob_time_to_running_seconds",
    "From a TrainingJob's creation to its first attempt running.",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
TRAININGJOB_DURATION = Histogram(
    "maas_trainingjob_duration_seconds",
    "From a TrainingJob's start to its end, by outcome.",
    ["outcome"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
    registry=REGISTRY,
)
MODELSERVICE_ROLLOUTS = Counter(
    "maas_modelservice_rollouts_total",
    "Changes of the model a ModelService's stable Deployment serves, by reason (NewModel, CanaryPromoted, Rollback).",
    ["reason"],
    registry=REGISTRY,
)
MODELSERVICE_ROLLBACKS = Counter(
    "maas_modelservice_rollbacks_total",
    "Failed rollouts that were rolled back (target stable) or removed (target canary), by reason.",
    ["target", "reason"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "maas_api_errors_total",
    "Failed Kubernetes API calls by HTTP status (0 when the server was unreachable).",
    ["status"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "maas_leader",
    "1 while this replica reconciles: it holds the leader Lease (always, without leader election); else 0.",
    registry=REGISTRY,
)
LEADER_TRANSITIONS = Counter(
    "maas_leader_transitions_total",
    "Times this replica started leading (summed over the replicas: how often the leader changed).",
    registry=REGISTRY,
)

EVENTS_DROPPED = Counter(
    "maas_events_dropped_total",
    "Kubernetes Events not posted because the backlog of Events to post was full.",
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Expose /metrics on a background thread; port 0 disables it."""
    if port:
        start_http_server(port, registry=REGISTRY)
