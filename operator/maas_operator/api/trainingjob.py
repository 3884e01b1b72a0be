"""The TrainingJob API (maas.dev/v1alpha1): spec and status."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from maas_operator.api.common import (
    ApiModel,
    Condition,
    LocalObjectReference,
    ObjectName,
    StorageLocation,
    cel,
    conditions_schema_extra,
)
from maas_operator.api.names import max_name_length, name_rules
from maas_operator.api.pods import PodOptions, pod_rules
from maas_operator.api.trainer import TrainerSpec
from maas_operator.api.validation import DNS_LABEL_MAX_LENGTH, LABEL_VALUE, Rule
from maas_operator.api.variants import OUTPUT_VARIANT_RULES
from maas_workloads.artifact import VariantName

KIND = "TrainingJob"
PLURAL = "trainingjobs"
MAX_WORKERS = 1000
LONGEST_CHILD_SUFFIX = f"-worker-{MAX_WORKERS - 1}"
"""The longest suffix of a child's name: `-head` (Pod, Service) and `-ray` (NetworkPolicy) are shorter."""
NAME_RULES = name_rules(KIND, LONGEST_CHILD_SUFFIX)
MAX_NAME_LENGTH = max_name_length(LONGEST_CHILD_SUFFIX)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
IMMUTABLE_FIELDS = ("image", "trainer", "command", "args", "workers", "head", "checkpoint", "output")
"""What an attempt's pods are built from: a change would make the next attempt a different run."""
_LIST_FIELDS = ("command", "args")


class WorkerSpec(PodOptions):
    """The worker pods: one Ray Train worker (one process, its GPUs) per pod."""

    model_config = ConfigDict(
        json_schema_extra=pod_rules(
            cel(
                "!has(self.minReplicas) || self.minReplicas <= self.replicas",
                "minReplicas must be less than or equal to replicas",
                fieldPath=".minReplicas",
            )
        )
    )

    replicas: int = Field(default=1, ge=1, le=MAX_WORKERS)
    """Worker pods to run."""
    min_replicas: int | None = Field(default=None, ge=1, le=MAX_WORKERS)
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


class OutputSpec(StorageLocation):
    """Where the model artifact is published, and which optimized variants are published with it."""

    variants: list[VariantName] = Field(
        default_factory=list, max_length=4, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Optimized copies published next to the full model, each measured on the validation split:
    int8 (dynamic int8 quantization of Linear layers), fp16 and bf16 (cast), onnx (run by ONNX
    Runtime). A ModelService picks one with spec.model.variant."""
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=100)
    """Publish only the variants that cost at most this much: validation accuracy points for
    classifiers (1 allows 95% -> 94%); for causal LMs, the largest ratio of the variant's validation
    perplexity to the full model's (1.05 allows 5% more). Unset: every variant is published, with
    its measured cost."""

    @model_validator(mode="after")
    def _distinct(self) -> OutputSpec:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError("variants: each variant may be listed once")
        return self


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
    priority_class_name: ObjectName | None = None
    scheduler_name: ObjectName | None = None
    queue_name: str | None = Field(default=None, max_length=DNS_LABEL_MAX_LENGTH, pattern=f"^{LABEL_VALUE}$")
    """Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label on the pods."""


def _immutable(field: str) -> Rule:
    """A transition rule at the spec: the field may be neither changed, nor added, nor removed."""
    if field in _LIST_FIELDS:
        rule = f"(has(self.{field}) ? self.{field} : []) == (has(oldSelf.{field}) ? oldSelf.{field} : [])"
    else:
        rule = f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
    return Rule(
        rule,
        f"{field} is immutable: it cannot be set, changed or removed once the TrainingJob exists",
        lambda pair: getattr(pair[0], field) == getattr(pair[1], field),
        field_path=f".{field}",
    )


IMMUTABLE_RULES = [_immutable(field) for field in IMMUTABLE_FIELDS]
QLORA_NEEDS_GPU = Rule(
    "!has(self.trainer) || !has(self.trainer.causalLM) || !has(self.trainer.causalLM.method) || "
    "self.trainer.causalLM.method != 'qlora' || (has(self.workers) && has(self.workers.resources) "
    "&& has(self.workers.resources.gpu) && self.workers.resources.gpu > 0)",
    "trainer.causalLM.method: qlora needs GPU workers (workers.resources.gpu): bitsandbytes quantizes to 4 bits "
    "on CUDA only",
    lambda spec: (
        spec.trainer is None
        or spec.trainer.causal_lm is None
        or spec.trainer.causal_lm.method != "qlora"
        or spec.workers.resources.gpu > 0
    ),
    field_path=".trainer.causalLM.method",
)
QUEUE_LABEL = Rule(
    " && ".join(
        f"!(has(self.{group}) && has(self.{group}.labels) && '{KUEUE_QUEUE_LABEL}' in self.{group}.labels)"
        for group in ("head", "workers")
    ),
    f"labels: {KUEUE_QUEUE_LABEL} is set on every pod from runPolicy.queueName; set that instead",
    lambda spec: KUEUE_QUEUE_LABEL not in spec.head.labels and KUEUE_QUEUE_LABEL not in spec.workers.labels,
)


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
                QUEUE_LABEL.schema(),
                QLORA_NEEDS_GPU.schema(),
                *(rule.schema() for rule in OUTPUT_VARIANT_RULES),
                *(rule.schema() for rule in IMMUTABLE_RULES),
            ]
        }
    )

    image: str | None = Field(default=None, min_length=1)
    """Container image of the head and workers; the operator's default training image when empty."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    service_account_name: ObjectName | None = None
    trainer: TrainerSpec | None = None
    """The built-in trainer. Set this or command."""
    command: list[str] = Field(default_factory=list)
    """Your own Ray driver, run on the head (e.g. [python, /app/train.py]). Set this or trainer."""
    args: list[str] = Field(default_factory=list)
    workers: WorkerSpec = Field(default_factory=WorkerSpec)
    head: PodOptions = Field(default_factory=PodOptions)
    """The Ray head pod: it runs the driver, not training steps."""
    checkpoint: CheckpointSpec | None = None
    """Without it, a restarted attempt starts from scratch."""
    output: OutputSpec
    """Where the model artifact is published, with its optimized variants."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """The only part of the spec that may change while the TrainingJob exists."""

    @model_validator(mode="after")
    def _one_entrypoint(self) -> TrainingJobSpec:
        if (self.trainer is None) == (not self.command):
            raise ValueError("set exactly one of trainer (the built-in trainer) or command (your own driver)")
        if self.args and not self.command:
            raise ValueError("args need a command")
        QUEUE_LABEL.enforce(self)
        QLORA_NEEDS_GPU.enforce(self)
        for rule in OUTPUT_VARIANT_RULES:
            rule.enforce(self)
        return self


def immutable_changes(accepted: TrainingJobSpec, edited: TrainingJobSpec) -> list[str]:
    """The CRD's transition rules in Python: one message per immutable field `edited` changes.

    `accepted` is the spec the current run was built from (e.g. the head pod's MAAS_TRAININGJOB);
    an empty list means the edit may take effect.
    """
    return [rule.message for rule in IMMUTABLE_RULES if not rule.check((accepted, edited))]


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


class ArtifactReference(ApiModel):
    uri: str
    sha256: str
    """sha256 of the artifact's manifest.json."""


class VariantStatus(ApiModel):
    """One requested optimized variant (spec.output.variants)."""

    name: VariantName
    published: bool
    """False when it cost more than output.maxAccuracyDrop, or could not be made."""
    message: str = ""
    """Its cost against the full model, with the numbers, or why it was not published."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Measured on the validation split after conversion, e.g. val_accuracy and val_accuracy_drop (points)."""


class ModelStatus(ApiModel):
    """The published artifact."""

    uri: str
    sha256: str
    """sha256 of the artifact's manifest.json."""
    metrics: dict[str, float] = Field(default_factory=dict)
    adapter: ArtifactReference | None = None
    """A LoRA fine-tune's adapter alone, when the model at uri is the base with the adapter merged in."""
    variants: list[VariantStatus] | None = None
    """What became of each requested variant; a ModelService serves a published one by name. Absent
    when the job asked for none (omitted, as Kubernetes omits empty optional lists)."""


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
