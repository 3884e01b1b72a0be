"""The TrainingJob API (maas.dev/v1alpha1): spec and status."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from maas_operator.api.common import (
    ApiModel,
    Condition,
    LocalObjectReference,
    PodOptions,
    StorageLocation,
    cel,
    conditions_schema_extra,
    immutable,
)
from maas_operator.api.trainer import TrainerSpec

KIND = "TrainingJob"
PLURAL = "trainingjobs"
MAX_NAME_LENGTH = 45
"""Leaves room for `-worker-NNNN` and the Ray head Service inside the 63-character DNS label."""


class WorkerSpec(PodOptions):
    """The worker pods: one Ray Train worker (one process, its GPUs) per pod."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.minReplicas) || self.minReplicas <= self.replicas",
                    "minReplicas must be less than or equal to replicas",
                    fieldPath=".minReplicas",
                )
            ]
        }
    )

    replicas: int = Field(default=1, ge=1, le=1000)
    """Worker pods to run."""
    min_replicas: int | None = Field(default=None, ge=1, le=1000)
    """The run starts, and keeps going, with at least this many workers; defaults to replicas."""

    @model_validator(mode="after")
    def _min_not_above_replicas(self) -> WorkerSpec:
        if self.min_replicas is not None and self.min_replicas > self.replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be less than or equal to replicas ({self.replicas})"
            )
        return self

    @property
    def effective_min_replicas(self) -> int:
        return self.replicas if self.min_replicas is None else self.min_replicas


class CheckpointSpec(StorageLocation):
    """Where checkpoints live, how often they are taken and how many are kept."""

    every_epochs: int | None = Field(default=None, ge=1)
    """Checkpoint every N epochs (the default, with N=1, when everySteps is not set)."""
    every_steps: int | None = Field(default=None, ge=1)
    """Checkpoint every N optimizer steps."""
    keep: int = Field(default=3, ge=1, le=1000)
    """Checkpoints kept; older ones are deleted once a newer one is complete."""


class RunPolicy(ApiModel):
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Failed attempts charged to the application before the run is Failed. Platform failures
    (preemption, eviction, node loss) are retried without charge."""
    max_platform_retries: int = Field(default=10, ge=0, le=1000)
    """Attempts ended by the platform (preemption, eviction, node loss, exit 75) retried before
    the run is Failed (PlatformRetryLimitExceeded): they cost no backoffLimit, but still end."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Longest the run may take from its start, across attempts; then Failed (DeadlineExceeded)."""
    startup_deadline_seconds: int = Field(default=600, ge=1)
    """Longest an attempt may wait for all its pods to run; then Failed (StartupDeadlineExceeded)."""
    stall_timeout_seconds: int | None = Field(default=None, ge=10)
    """Without a progress heartbeat for this long, the Stalled condition turns True."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the TrainingJob itself this long after it succeeded or failed."""
    clean_pod_policy: Literal["All", "Running", "None"] = "Running"
    """Pods deleted at the end: All, Running (keeps the finished head pod for its logs), or None."""
    suspend: bool = False
    """true deletes the pods and holds the run; false resumes it without charging an attempt."""
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    queue_name: str | None = None
    """Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label on the pods."""


class TrainingJobSpec(ApiModel):
    """A distributed PyTorch training run on a Ray cluster of pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.trainer) != (has(self.command) && size(self.command) > 0)",
                    "set exactly one of trainer (the built-in trainer) or command (your own driver)",
                ),
                cel(
                    "!has(self.args) || size(self.args) == 0 || (has(self.command) && size(self.command) > 0)",
                    "args need a command",
                    fieldPath=".args",
                ),
            ]
        }
    )

    image: str | None = Field(default=None, min_length=1, json_schema_extra=immutable("image"))
    """Container image of the head and workers; the operator's default training image when empty."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    service_account_name: str | None = None
    trainer: TrainerSpec | None = Field(default=None, json_schema_extra=immutable("trainer"))
    """The built-in trainer. Set this or command."""
    command: list[str] = Field(default_factory=list, json_schema_extra=immutable("command"))
    """Your own Ray driver, run on the head (e.g. [python, /app/train.py]). Set this or trainer."""
    args: list[str] = Field(default_factory=list, json_schema_extra=immutable("args"))
    workers: WorkerSpec = Field(default_factory=WorkerSpec, json_schema_extra=immutable("workers"))
    head: PodOptions = Field(default_factory=PodOptions, json_schema_extra=immutable("head"))
    """The Ray head pod: it runs the driver, not training steps."""
    checkpoint: CheckpointSpec | None = Field(default=None, json_schema_extra=immutable("checkpoint"))
    """Without it, a restarted attempt starts from scratch."""
    output: StorageLocation = Field(json_schema_extra=immutable("output"))
    """Where the model artifact is published."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)

    @model_validator(mode="after")
    def _one_entrypoint(self) -> TrainingJobSpec:
        if (self.trainer is None) == (not self.command):
            raise ValueError("set exactly one of trainer (the built-in trainer) or command (your own driver)")
        if self.args and not self.command:
            raise ValueError("args need a command")
        return self


# --- Status -------------------------------------------------------------------------------

Phase = Literal["Pending", "Starting", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]


class WorkersStatus(ApiModel):
    desired: int = 0
    ready: int = 0
    """Worker pods running and ready."""


class Failure(ApiModel):
    """One ended attempt."""

    attempt: int
    reason: str
    exit_code: int | None = None
    message: str = ""
    time: str
    charged: bool
    """Whether it counted against backoffLimit (application failures do, platform failures do not)."""


class ProgressStatus(ApiModel):
    epoch: int | None = None
    step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    last_checkpoint: str | None = None
    heartbeat_time: str | None = None
    summary: str | None = None
    """Short human summary for the printer column, e.g. "42% (step 420/1000)"."""


class ModelStatus(ApiModel):
    """The published artifact."""

    uri: str
    sha256: str
    """sha256 of the artifact's manifest.json."""
    metrics: dict[str, float] = Field(default_factory=dict)


MAX_FAILURES_KEPT = 10


class TrainingJobStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    """Summary for printer columns; read conditions for the full story."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=conditions_schema_extra())
    attempt: int = 0
    """Current attempt, from 1; written before the attempt's pods are created."""
    start_time: str | None = None
    attempt_start_time: str | None = None
    attempt_running_time: str | None = None
    """When the current attempt first had its head and minReplicas workers running."""
    completion_time: str | None = None
    head_service: str | None = None
    """In-cluster address of the Ray head (GCS, dashboard on 8265, progress on 8090)."""
    workers: WorkersStatus = Field(default_factory=WorkersStatus)
    worker_restarts: int = 0
    """Worker pods recreated inside attempts."""
    charged_failures: int = 0
    """Failures counted against backoffLimit."""
    platform_failures: int = 0
    """Failures the platform caused (not charged), counted against runPolicy.maxPlatformRetries."""
    failures: list[Failure] = Field(default_factory=list, max_length=MAX_FAILURES_KEPT)
    """The latest ended attempts, newest last."""
    progress: ProgressStatus | None = None
    model: ModelStatus | None = None
