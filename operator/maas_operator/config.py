"""Operator settings, read from MAAS_OPERATOR_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maas_operator.election import Timing

ENV_PREFIX = "MAAS_OPERATOR_"
DEFAULT_IMAGE = "ghcr.io/maas-dev/maas-workloads:0.1.0"
DEFAULT_WORKERS = 32


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    training_image: str = DEFAULT_IMAGE
    """Image of TrainingJob pods that do not name one."""
    serving_image: str = DEFAULT_IMAGE
    """Image of ModelService pods that do not name one."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    resync_seconds: float = Field(default=10.0, gt=0)
    """How often every object is re-evaluated (deadlines, progress polling, TTL)."""
    workers: int = Field(default=DEFAULT_WORKERS, ge=1, le=1000)
    """Objects reconciled at once (never one object twice at once); each writes its independent
    children concurrently. A reconcile mostly waits on the API server, so 32 keeps a burst of
    thousands of objects to seconds against an API server answering in ~10 ms, with at most a
    few hundred requests in flight, which the API server's flow control (APF) queues fairly
    beside other clients. The `maas operator --workers` flag wins over this setting."""
    progress_url_template: str = "http://{service}.{namespace}.svc:{port}{path}"
    """Where a TrainingJob's head serves its progress; {service} {namespace} {port} {path}."""
    progress_timeout_seconds: float = Field(default=3.0, gt=0)
    restart_backoff_seconds: float = Field(default=10.0, ge=0)
    """Wait before a TrainingJob's next attempt, doubled per failed attempt (Kubernetes Jobs: 10 s)."""
    restart_backoff_max_seconds: float = Field(default=360.0, ge=0)
    """At most this long between attempts (Kubernetes Jobs: 6 minutes)."""
    force_delete_after_seconds: float = Field(default=60.0, ge=0)
    """A pod of an ended attempt still Terminating this long past its grace period, on a NotReady or
    unreachable node, is force-deleted so that the next attempt can start."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Prometheus /metrics; 0 disables."""
    health_port: int = Field(default=8081, ge=0, le=65535)
    """kopf's /healthz liveness endpoint; 0 disables."""
    # Leader election (handlers/leadership.py); defaults are client-go's (election.Timing).
    leader_election: bool = False
    """Reconcile only while holding the Lease below, so that several replicas can run (the chart turns it on)."""
    leader_election_lease_name: str = "maas-operator"
    leader_election_namespace: str = ""
    """Namespace of the Lease; empty: the pod's own namespace."""
    leader_election_identity: str = ""
    """This replica's holderIdentity, unique among the replicas; empty: the host name (the pod's name)."""
    leader_election_lease_duration_seconds: int = Field(default=Timing.lease_duration_seconds, ge=1)
    leader_election_renew_deadline_seconds: float = Field(default=Timing.renew_deadline_seconds, gt=0)
    leader_election_retry_period_seconds: float = Field(default=Timing.retry_period_seconds, gt=0)

    @model_validator(mode="after")
    def _election_timing(self) -> OperatorConfig:
        try:
            self.election_timing()
        except ValueError as error:
            names = "LEASE_DURATION_SECONDS > RENEW_DEADLINE_SECONDS > 1.2 x RETRY_PERIOD_SECONDS"
            raise ValueError(f"{ENV_PREFIX}LEADER_ELECTION_*: {error}; set them so that {names}") from None
        return self

    def election_timing(self) -> Timing:
        """Raises ValueError when the three durations are out of order."""
        return Timing(
            self.leader_election_lease_duration_seconds,
            self.leader_election_renew_deadline_seconds,
            self.leader_election_retry_period_seconds,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        source = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = source.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = tuple(part for part in raw.split(",") if part) if name == "namespaces" else raw
        return cls.model_validate(values)
