"""How a ModelService's server runs and is reached: batching, the server's port and limits, HTTPS,
authentication, and its Service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from maas_operator.api.common import ApiModel, LocalObjectReference, SecretKeySelector
from maas_operator.api.pods import Annotations
from maas_workloads import contract


class BatchingSpec(ApiModel):
    """Dynamic batching in the server: requests are combined up to maxBatchSize or maxDelayMs."""

    max_batch_size: int = Field(default=contract.DEFAULT_MAX_BATCH_SIZE, ge=1, le=65_536)
    max_delay_ms: int = Field(default=round(contract.DEFAULT_MAX_DELAY_MS), ge=0, le=10_000)
    """How long the first request of a batch waits for others."""
    max_queue_size: int = Field(default=contract.DEFAULT_MAX_QUEUE_SIZE, ge=1, le=1_000_000)
    """Requests waiting beyond this are refused at once with 429 and Retry-After."""


class TlsSpec(ApiModel):
    """Serve HTTPS only, with the certificate of a Secret of type kubernetes.io/tls."""

    secret_ref: LocalObjectReference
    """A kubernetes.io/tls Secret (keys tls.crt: the certificate chain, leaf first; tls.key: its
    unencrypted private key), e.g. one cert-manager keeps renewed. Mounted into the pods, never
    read by the operator; a renewed certificate is served to new connections without a restart
    (engine builtin; see README for vllm)."""


class ServerSpec(ApiModel):
    port: int = Field(default=contract.SERVING_PORT, ge=1024, le=65_535)
    """Container port of the server (the Service listens on 80, or on 443 with tls)."""
    timeout_seconds: int = Field(default=round(contract.DEFAULT_TIMEOUT_SECONDS), ge=1, le=3600)
    """Default per-request deadline (504 when it cannot be met); also bounds the drain on shutdown."""
    max_request_bytes: int = Field(default=contract.DEFAULT_MAX_REQUEST_BYTES, ge=1024, le=2**31 - 1)
    """Larger request bodies are refused with 413."""
    tls: TlsSpec | None = None
    """HTTPS: the probes, the Service port (https, 443), status.url and the Prometheus scrape
    annotations follow. Without it the server speaks plain HTTP."""


class AuthSpec(ApiModel):
    token_secret_ref: SecretKeySelector
    """The server requires `Authorization: Bearer <token>` with the token stored under this key."""


class ServiceOptions(ApiModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    annotations: Annotations = Field(default_factory=dict)
    """Annotations of the Service (for example for a cloud load balancer)."""
