"""Names and numbers shared by the operator and the workloads it runs.

Both sides import this module; nothing here may import anything heavier than the standard
library, because the operator image does not carry torch or Ray.
"""

from __future__ import annotations

import enum
from typing import Final, TypedDict

API_GROUP: Final = "maas.dev"
API_VERSION: Final = "v1alpha1"

# --- What the operator hands to training pods -------------------------------------------
ENV_TRAININGJOB: Final = "MAAS_TRAININGJOB"
"""The validated TrainingJob spec as JSON (camelCase field names, as in the CRD)."""
SPEC_FILE: Final = "/etc/maas/spec.json"
"""Alternative to ENV_TRAININGJOB: the same JSON mounted from a ConfigMap."""

ENV_JOB_NAME: Final = "MAAS_JOB_NAME"
ENV_JOB_NAMESPACE: Final = "MAAS_JOB_NAMESPACE"
ENV_JOB_UID: Final = "MAAS_JOB_UID"
ENV_ATTEMPT: Final = "MAAS_ATTEMPT"
"""1 for the first attempt, incremented by the operator on every retry."""
ENV_HEAD_ADDRESS: Final = "MAAS_HEAD_ADDRESS"
"""`<job>-head.<namespace>.svc:6379` inside a cluster."""
ENV_ROLE: Final = "MAAS_ROLE"
"""`head` or `worker`."""
ENV_MIN_WORKERS: Final = "MAAS_MIN_WORKERS"
ENV_WORKERS: Final = "MAAS_WORKERS"
ENV_CHECKPOINT_URI: Final = "MAAS_CHECKPOINT_URI"
ENV_OUTPUT_URI: Final = "MAAS_OUTPUT_URI"
"""`file:///...` on a mounted volume or `s3://bucket/prefix`."""

RAY_GCS_PORT: Final = 6379
RAY_DASHBOARD_PORT: Final = 8265
RAY_CLIENT_PORT: Final = 10001
PROGRESS_PORT: Final = 8090
PROGRESS_PORT_NAME: Final = "progress"
PROGRESS_PATH: Final = "/progress"
METRICS_PATH: Final = "/metrics"
ENV_PROGRESS_PORT: Final = "MAAS_PROGRESS_PORT"
"""Overrides PROGRESS_PORT (for several heads on one machine, e.g. in tests); pods use the default."""
ENV_RAY_START_ARGS: Final = "MAAS_RAY_START_ARGS"
"""Extra `ray start` arguments for the launcher, split like a shell (e.g. --object-store-memory=...)."""


class ExitCode(enum.IntEnum):
    """How a head pod's exit code is judged by the operator."""

    SUCCESS = 0
    APPLICATION_ERROR = 1
    """The user's code or the model failed: counts against `backoffLimit`."""
    CONFIGURATION_ERROR = 64
    """The spec can never work (unknown model, missing column): never retried. (EX_USAGE)"""
    INFRASTRUCTURE_ERROR = 75
    """Storage unreachable, workers never joined: retried, not charged. (EX_TEMPFAIL)"""


SIGNAL_EXIT_BASE: Final = 128
"""A container killed by signal n exits with 128 + n; the pod's reason decides who is to blame."""

TERMINATION_LOG: Final = "/dev/termination-log"
ENV_TERMINATION_LOG: Final = "MAAS_TERMINATION_LOG"
"""Overrides TERMINATION_LOG outside Kubernetes (local runs, tests)."""
TERMINATION_MESSAGE_MAX_BYTES: Final = 4096


class ArtifactReport(TypedDict):
    """One published artifact directory."""

    uri: str
    sha256: str
    """sha256 of the artifact's manifest.json, which itself lists every file's sha256."""


class VariantReport(TypedDict):
    """One requested optimized variant: published in the artifact, or not and why (status.model.variants[])."""

    name: str
    published: bool
    message: str
    """The numbers, e.g. "val_accuracy 0.9444 vs 0.9500 for the full model, a drop of 0.56 points"."""
    metrics: dict[str, float]


class ModelReport(TypedDict, total=False):
    """The published artifact, as the head reports it and `status.model` shows it."""

    uri: str
    sha256: str
    """sha256 of the artifact's manifest.json, which itself lists every file's sha256."""
    metrics: dict[str, float]
    adapter: ArtifactReport
    """A LoRA fine-tune that also published its merged model (at `uri`, the one served): the
    adapter alone, at `<uri>/adapter`."""
    variants: list[VariantReport]


class TerminationMessage(TypedDict, total=False):
    """JSON in the head container's termination log, under 4 KiB."""

    model: ModelReport
    error: str


class ProgressReport(TypedDict, total=False):
    """`GET /progress` on the head's progress port."""

    attempt: int
    epoch: int
    step: int
    totalSteps: int
    metrics: dict[str, float]
    lastCheckpoint: str | None
    heartbeatTime: str
    """RFC 3339, UTC."""


# --- Model artifacts ----------------------------------------------------------------------
MANIFEST_FILE: Final = "manifest.json"
"""Written last into the artifact directory: a reader never sees a partial artifact."""

# --- What the operator hands to serving pods ----------------------------------------------
SERVING_PORT: Final = 8080
SERVING_PORT_NAME: Final = "http"
SERVING_TLS_PORT_NAME: Final = "https"
"""The serving port's name when the server speaks HTTPS (`spec.server.tls`); probes, Service, PodMonitor follow."""
HEALTH_LIVE_PATH: Final = "/v2/health/live"
HEALTH_READY_PATH: Final = "/v2/health/ready"
ENV_MODEL_NAME: Final = "MAAS_MODEL_NAME"
ENV_MODEL_URI: Final = "MAAS_MODEL_URI"
ENV_MODEL_SHA256: Final = "MAAS_MODEL_SHA256"
ENV_MODEL_VARIANT: Final = "MAAS_MODEL_VARIANT"
"""The artifact's optimized variant to serve (spec.model.variant: int8, fp16, bf16, onnx); unset: the full model."""
ENV_PORT: Final = "MAAS_PORT"
ENV_MAX_BATCH_SIZE: Final = "MAAS_MAX_BATCH_SIZE"
ENV_MAX_DELAY_MS: Final = "MAAS_MAX_DELAY_MS"
ENV_MAX_QUEUE_SIZE: Final = "MAAS_MAX_QUEUE_SIZE"
ENV_TIMEOUT_SECONDS: Final = "MAAS_TIMEOUT_SECONDS"
ENV_MAX_REQUEST_BYTES: Final = "MAAS_MAX_REQUEST_BYTES"
ENV_MAX_BUFFERED_REQUEST_BYTES: Final = "MAAS_MAX_BUFFERED_REQUEST_BYTES"
ENV_AUTH_TOKEN: Final = "MAAS_AUTH_TOKEN"
ENV_DRAIN_SECONDS: Final = "MAAS_DRAIN_SECONDS"

# Per-pod serving signals the server exports; a ModelService may autoscale on them.
METRIC_INFLIGHT_REQUESTS: Final = "maas_inference_inflight_requests"
METRIC_REQUESTS_TOTAL: Final = "maas_inference_requests_total"
METRIC_QUEUE_DEPTH: Final = "maas_inference_queue_depth"
"""Requests waiting for a batch slot, per model: the other autoscaling signal."""

# Serving container: `python -m maas_workloads.serve` reads every setting from the
# environment, so the operator sets no arguments. Startup and readiness probes use
# HEALTH_READY_PATH (503 while loading, after a failed checksum and while draining),
# liveness uses HEALTH_LIVE_PATH; both on SERVING_PORT_NAME and never need the token.
SERVE_COMMAND: Final = ("python", "-m", "maas_workloads.serve")
ENV_HOST: Final = "MAAS_HOST"
ENV_MODEL_VERSION: Final = "MAAS_MODEL_VERSION"
"""The version the server reports and accepts under /v2/models/{name}/versions/{version}."""
ENV_AUTH_TOKEN_FILE: Final = "MAAS_AUTH_TOKEN_FILE"
"""A file holding the bearer token (a mounted Secret key); used when MAAS_AUTH_TOKEN is unset."""
ENV_DEVICE: Final = "MAAS_DEVICE"
"""`auto` (CUDA when present), `cpu`, `cuda` or `cuda:<n>`."""
ENV_LOG_LEVEL: Final = "MAAS_LOG_LEVEL"
ENV_ACCESS_LOG: Final = "MAAS_ACCESS_LOG"
"""`true`/`false`: one JSON line per request (never its body)."""
ENV_DRAIN_DELAY_SECONDS: Final = "MAAS_DRAIN_DELAY_SECONDS"
"""After SIGTERM, keep answering new requests this long while readiness already says 503,
so that Service endpoints drop the pod before it stops listening."""
ENV_MAX_HEADER_BYTES: Final = "MAAS_MAX_HEADER_BYTES"
"""Largest request line plus headers; 431 above it (checked before the parser buffers more)."""
ENV_HEADER_TIMEOUT_SECONDS: Final = "MAAS_HEADER_TIMEOUT_SECONDS"
"""Deadline for a request's headers, from its first byte (or the connection's accept): 408 or close."""
ENV_BODY_TIMEOUT_SECONDS: Final = "MAAS_BODY_TIMEOUT_SECONDS"
"""Deadline for a request's body, from the end of its headers: 408."""
ENV_KEEP_ALIVE_TIMEOUT_SECONDS: Final = "MAAS_KEEP_ALIVE_TIMEOUT_SECONDS"
ENV_MAX_CONNECTIONS: Final = "MAAS_MAX_CONNECTIONS"
ENV_MODEL_CACHE_DIR: Final = "MAAS_MODEL_CACHE_DIR"
"""Where an s3:// or https:// model is downloaded; mount an emptyDir at MODEL_CACHE_MOUNT."""
ENV_THREADS: Final = "OMP_NUM_THREADS"
"""Honoured for torch's intra-op threads; set it to the container's CPU limit."""
MODEL_CACHE_MOUNT: Final = "/var/cache/maas/models"
PVC_MOUNT_ROOT: Final = "/mnt/maas"
"""`pvc://<claim>/<path>` is read from `<PVC_MOUNT_ROOT>/<claim>/<path>`: mount the claim there."""
ENV_PVC_MOUNT_ROOT: Final = "MAAS_PVC_MOUNT_ROOT"
"""Overrides PVC_MOUNT_ROOT for training pods outside Kubernetes (`maas run`, tests)."""

DEFAULT_MAX_BATCH_SIZE: Final = 32
DEFAULT_MAX_DELAY_MS: Final = 2.0
DEFAULT_MAX_QUEUE_SIZE: Final = 256
"""Requests (not rows) waiting for the model; beyond it the server answers 429 at once."""
DEFAULT_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
BUFFERED_REQUESTS_PER_BUDGET: Final = 4
"""The default budget for request bodies held in memory at once, across all connections: this many
bodies of the largest size (256 MiB by default)."""
DEFAULT_DRAIN_SECONDS: Final = 30.0
"""Upper bound on the whole drain; terminationGracePeriodSeconds should exceed it."""
DEFAULT_DRAIN_DELAY_SECONDS: Final = 2.0
DEFAULT_MAX_HEADER_BYTES: Final = 32 * 1024
"""Between Node.js's 16 KiB and Envoy's 60 KiB: room for long bearer tokens (JWTs) and tracing headers."""
DEFAULT_HEADER_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS: Final = 60.0
"""nginx's client_body_timeout; here it bounds the whole body, not the gap between reads."""
DEFAULT_KEEP_ALIVE_TIMEOUT_SECONDS: Final = 75.0
"""Longer than common load balancers' idle timeouts (AWS ALB 60 s), so that they close first:
a server closing an idle connection races with a client sending on it."""
DEFAULT_MAX_CONNECTIONS: Final = 1024

# --- HTTPS (spec.server.tls) ----------------------------------------------------------------
# The operator mounts the user's `kubernetes.io/tls` Secret (never reading it) at TLS_MOUNT and
# points the server at its two keys; the server reloads a rotated pair without a restart.
ENV_TLS_CERT_FILE: Final = "MAAS_TLS_CERT_FILE"
"""PEM certificate chain (leaf first); with ENV_TLS_KEY_FILE the server speaks HTTPS only."""
ENV_TLS_KEY_FILE: Final = "MAAS_TLS_KEY_FILE"
ENV_TLS_RELOAD_SECONDS: Final = "MAAS_TLS_RELOAD_SECONDS"
"""How often the server checks the two files for a new certificate (a rotated Secret)."""
DEFAULT_TLS_RELOAD_SECONDS: Final = 10.0
"""Small next to the kubelet's own delay in updating a mounted Secret (its sync period, about a minute)."""
TLS_MOUNT: Final = "/etc/maas/tls"
TLS_CERT_KEY: Final = "tls.crt"
TLS_KEY_KEY: Final = "tls.key"
"""The keys of a `kubernetes.io/tls` Secret, which become the files under TLS_MOUNT."""

# --- Causal language models (OpenAI API, vLLM's HTTP contract) ------------------------------
# The built-in server speaks the OpenAI API when the artifact's manifest is `hf-causal-lm`;
# the same routes, metrics and auth header as vLLM's OpenAI server, so either engine serves.
LLM_HEALTH_PATH: Final = "/health"
"""200 once the model is loaded and warmed up, 503 before and while draining (both engines)."""
ENV_MAX_MODEL_LEN: Final = "MAAS_MAX_MODEL_LEN"
ENV_MAX_NUM_SEQS: Final = "MAAS_MAX_NUM_SEQS"
ENV_KV_CACHE_BYTES: Final = "MAAS_KV_CACHE_BYTES"
ENV_BLOCK_SIZE: Final = "MAAS_BLOCK_SIZE"
ENV_MAX_NUM_BATCHED_TOKENS: Final = "MAAS_MAX_NUM_BATCHED_TOKENS"
ENV_DTYPE: Final = "MAAS_DTYPE"
FETCH_COMMAND: Final = ("python", "-m", "maas_workloads.fetch")
"""The init container of LLM pods: fetch and verify the model into the cache, then the engine starts."""
ENV_FETCH_DESTINATION: Final = "MAAS_FETCH_DESTINATION"
ENV_LORA_ADAPTERS: Final = "MAAS_LORA_ADAPTERS"
"""JSON list of {name, uri, sha256}: adapters fetched to `<destination>-lora-<name>`."""
DEFAULT_MAX_NUM_SEQS: Final = 32
DEFAULT_KV_CACHE_BYTES: Final = 1 << 30
"""1 GiB, as the vLLM CPU build's VLLM_CPU_KVCACHE_SPACE=1 that bounded it on a 2-core machine."""
DEFAULT_BLOCK_SIZE: Final = 32
DEFAULT_MAX_NUM_BATCHED_TOKENS: Final = 512
METRIC_LLM_WAITING: Final = "vllm:num_requests_waiting"
"""Requests waiting for a sequence slot: the autoscaling signal for LLMs (vLLM production stack: 5 per pod)."""
METRIC_LLM_KV_CACHE_USAGE: Final = "vllm:kv_cache_usage_perc"
"""Fraction (0..1) of the KV cache held by running sequences."""

# --- LLM serving metrics -------------------------------------------------------------------
# vLLM's OpenAI server exports these (label VLLM_MODEL_LABEL on each); every LLM engine a
# ModelService runs (builtin and vllm) exports the same names, so the chart's alerts and
# dashboards and any HPA rule serve both. Family names as prometheus_client takes them: a
# counter `x` is exposed as `x_total`, a histogram `x` as `x_bucket`, `x_sum`, `x_count`.
# Source: vLLM's metrics documentation (v1 engine); the LLM server imports this table.
VLLM_MODEL_LABEL: Final = "model_name"
VLLM_METRICS: Final[dict[str, str]] = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
}
"""Metric family name -> Prometheus type. `vllm:request_success` also carries `finished_reason`."""
