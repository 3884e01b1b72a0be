"""The ModelService API (maas.dev/v1alpha1): spec and status."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from maas_operator.api import trainingjob
from maas_operator.api.common import (
    MODEL_URI_PATTERN,
    SHA256_PATTERN,
    ApiModel,
    Condition,
    LocalObjectReference,
    ObjectName,
    cel,
    conditions_schema_extra,
    preserve_unknown,
)
from maas_operator.api.llm import Engine, GenerationSpec, ModelCacheSpec, VllmSpec
from maas_operator.api.names import max_name_length, name_rules
from maas_operator.api.pods import PodOptions, pod_rules
from maas_operator.api.serving import AuthSpec, BatchingSpec, ServerSpec, ServiceOptions
from maas_operator.api.validation import DNS1035_LABEL, Rule, enforcer, full_match, int_or_string
from maas_operator.api.variants import VARIANT_RULES
from maas_workloads.artifact import VariantName

KIND = "ModelService"
PLURAL = "modelservices"
CANARY_SUFFIX = "-canary"
LONGEST_CHILD_SUFFIX = CANARY_SUFFIX
"""The canary Deployment, `<name>-canary`, has the longest name the operator derives. (The names
Kubernetes derives from it for ReplicaSets and Pods may be longer: generateName shortens those,
and a Pod's hostname is cut to 63 characters by the kubelet, so they never make a child invalid.)"""
NAME_RULES = name_rules(KIND, LONGEST_CHILD_SUFFIX)
MAX_NAME_LENGTH = max_name_length(LONGEST_CHILD_SUFFIX)


def _count_or_percent(percent: str, message: str) -> Rule:
    return Rule(
        f"type(self) == int ? self >= 0 : self.matches('^{percent}%$')",
        message,
        lambda value: value >= 0 if isinstance(value, int) else full_match(f"{percent}%", value),
    )


COUNT_OR_PERCENT = _count_or_percent("[0-9]+", "must be a number of pods (e.g. 1) or a percentage (e.g. 25%)")
COUNT_OR_PERCENT_UP_TO_100 = _count_or_percent(
    "0*([0-9]|[1-9][0-9]|100)", "must be a number of pods (e.g. 1) or a percentage of at most 100% (e.g. 25%)"
)
"""Deployments refuse a maxUnavailable, PodDisruptionBudgets any bound, above 100%."""
Surge = Annotated[
    int | str,
    AfterValidator(enforcer([COUNT_OR_PERCENT])),
    Field(json_schema_extra=int_or_string([COUNT_OR_PERCENT], 16)),
]
Unavailable = Annotated[
    int | str,
    AfterValidator(enforcer([COUNT_OR_PERCENT_UP_TO_100])),
    Field(json_schema_extra=int_or_string([COUNT_OR_PERCENT_UP_TO_100], 16)),
]


def _is_zero(field: str) -> str:
    return f"(type(self.{field}) == int ? self.{field} == 0 : self.{field}.matches('^0+%$'))"


NOT_BOTH_ZERO = Rule(
    f"!({_is_zero('maxSurge')} && {_is_zero('maxUnavailable')})",
    "rollout.maxSurge and rollout.maxUnavailable cannot both be 0",
    lambda rollout: (
        not all(
            value == 0 if isinstance(value, int) else full_match("0+%", value)
            for value in (rollout.max_surge, rollout.max_unavailable)
        )
    ),
)


class TrainingJobReference(ApiModel):
    name: str = Field(min_length=1, max_length=trainingjob.MAX_NAME_LENGTH, pattern=f"^{DNS1035_LABEL}$")
    """A TrainingJob in the same namespace; its status.model is served once it has succeeded."""


class ModelSource(ApiModel):
    """What to serve: exactly one of `uri` or `trainingJobRef`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.uri) != has(self.trainingJobRef)", "set exactly one of uri or trainingJobRef"),
            ]
        }
    )

    uri: str | None = Field(default=None, pattern=MODEL_URI_PATTERN)
    """The artifact directory: s3://bucket/prefix, file:///path on a volume you mount,
    pvc://<claim>/<path> (mounted read-only by the operator), or https://host/path."""
    training_job_ref: TrainingJobReference | None = None
    """Serve the artifact of this TrainingJob; a retrained job rolls out automatically."""
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    """Pin: the server refuses an artifact whose manifest.json has another sha256."""
    secret_ref: LocalObjectReference | None = None
    """Secret whose keys become environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL, AWS_REGION) for s3:// models; with trainingJobRef, the job's output Secret
    is used when this is empty."""
    variant: VariantName | None = None
    """Serve this optimized variant of the artifact (see TrainingJob output.variants): int8, fp16,
    bf16 or onnx for tensor models, int8 for causal LMs. Default: the full model."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.uri is None) == (self.training_job_ref is None):
            raise ValueError("set exactly one of uri or trainingJobRef")
        return self


AutoscalingMetric = Literal["cpu", "inflight", "rps", "waiting", "kvCache"]
DEFAULT_TARGETS: dict[str, int] = {"cpu": 70, "inflight": 8, "rps": 100, "waiting": 5, "kvCache": 80}
"""waiting: 5 requests per pod, the vLLM production stack's threshold; kvCache: 80 percent."""


class AutoscalingSpec(ApiModel):
    """Scale with load through a HorizontalPodAutoscaler (autoscaling/v2)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must be less than or equal to maxReplicas",
                    fieldPath=".minReplicas",
                ),
                cel(
                    "!has(self.target) || !has(self.metric) || !(self.metric in ['cpu', 'kvCache']) "
                    "|| self.target <= 100",
                    "a cpu or kvCache target is a percentage: at most 100",
                    fieldPath=".target",
                ),
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    metric: AutoscalingMetric | None = None
    """cpu: average CPU utilization of the requested CPU. inflight: requests in flight per pod
    (maas_inference_inflight_requests). rps: requests per second per pod
    (maas_inference_requests_per_second). waiting: requests waiting for a sequence slot per pod
    (vllm:num_requests_waiting, both LLM engines). kvCache: KV-cache usage in percent
    (vllm:kv_cache_usage_perc). All but cpu are Pods metrics and need a metrics adapter such
    as prometheus-adapter (see README). Default: waiting for LLMs (spec.generation or engine
    vllm), cpu otherwise."""
    target: int | None = Field(default=None, ge=1, le=1_000_000)
    """Target per pod: a utilization percentage for cpu (default 70), requests in flight for
    inflight (default 8), requests per second for rps (default 100), waiting requests for
    waiting (default 5), a usage percentage for kvCache (default 80)."""
    behavior: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra=preserve_unknown("HorizontalPodAutoscalerBehavior: scaleUp/scaleDown policies, copied."),
    )

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be less than or equal to maxReplicas ({self.max_replicas})"
            )
        if self.metric in ("cpu", "kvCache") and self.target is not None and self.target > 100:
            raise ValueError("a cpu or kvCache target is a percentage: at most 100")
        return self

    def effective_metric(self, llm: bool) -> str:
        """The metric scaled on: the one set, else the waiting queue for LLMs (never CPU), else cpu."""
        if self.metric is not None:
            return self.metric
        return "waiting" if llm else "cpu"

    def effective_target(self, llm: bool) -> int:
        return self.target if self.target is not None else DEFAULT_TARGETS[self.effective_metric(llm)]


class CanarySpec(ApiModel):
    """A candidate model served next to the stable one, in its own Deployment."""

    model: ModelSource
    weight: int = Field(default=10, ge=1, le=99)
    """Share of traffic, in percent, approximated by the ratio of canary to stable pods
    (at least one canary pod); status.canary.trafficPercent shows the achieved share."""
    auto_promote_after_seconds: int | None = Field(default=None, ge=0)
    """Promote once the canary has been ready without restarts this long; empty keeps it
    until you edit the spec."""


class RolloutSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [NOT_BOTH_ZERO.schema()]})

    max_surge: Surge = "25%"
    """Extra pods during a rollout."""
    max_unavailable: Unavailable = 0
    """Pods that may be unavailable during a rollout."""
    progress_deadline_seconds: int = Field(default=600, ge=30, le=86_400)
    """A rollout not available within this time has failed (ProgressDeadlineExceeded)."""
    auto_rollback: bool = True
    """Return to the previous model when a rollout fails or its pods crash-loop."""
    canary: CanarySpec | None = None

    @model_validator(mode="after")
    def _not_both_zero(self) -> RolloutSpec:
        NOT_BOTH_ZERO.enforce(self)
        return self


class DisruptionSpec(ApiModel):
    """The PodDisruptionBudget: at most one of minAvailable or maxUnavailable."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.minAvailable) && has(self.maxUnavailable))",
                    "set minAvailable or maxUnavailable, not both",
                )
            ]
        }
    )

    min_available: Unavailable | None = None
    """Pods that must stay available during node drains."""
    max_unavailable: Unavailable | None = None
    """Pods that may be down at once during node drains."""

    @model_validator(mode="after")
    def _at_most_one(self) -> DisruptionSpec:
        if self.min_available is not None and self.max_unavailable is not None:
            raise ValueError("set minAvailable or maxUnavailable, not both")
        return self


class ModelServiceSpec(PodOptions):
    """An autoscaled inference Deployment behind a Service, serving one model artifact."""

    model_config = ConfigDict(
        json_schema_extra=pod_rules(
            cel(
                "!(has(self.replicas) && has(self.autoscaling))",
                "set replicas or autoscaling, not both",
                fieldPath=".replicas",
            ),
            cel(
                "!has(self.autoscaling) || (has(self.autoscaling.metric) ? self.autoscaling.metric != 'cpu' : "
                "(has(self.generation) || (has(self.engine) && self.engine == 'vllm'))) || "
                "(has(self.resources) && has(self.resources.cpu))",
                "autoscaling on cpu needs resources.cpu: utilization is measured against the request",
                fieldPath=".autoscaling",
            ),
            *(rule.schema() for rule in VARIANT_RULES),
            cel(
                "!has(self.generation) || !has(self.generation.loraAdapters) || "
                "size(self.generation.loraAdapters) == 0 || (has(self.engine) && self.engine == 'vllm')",
                "generation.loraAdapters needs engine: vllm (the builtin engine serves merged models)",
                fieldPath=".generation.loraAdapters",
            ),
        )
    )

    model: ModelSource
    image: str | None = Field(default=None, min_length=1)
    """Server image; the operator's default serving image when empty."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    service_account_name: ObjectName | None = None
    replicas: int | None = Field(default=None, ge=0, le=1000)
    """A fixed number of pods (default 1). Set this or autoscaling."""
    autoscaling: AutoscalingSpec | None = None
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    auth: AuthSpec | None = None
    """Require a bearer token on every endpoint but health; without it the server is open."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    disruption: DisruptionSpec | None = None
    """Defaults to maxUnavailable: 1 whenever more than one replica may run."""
    service: ServiceOptions = Field(default_factory=ServiceOptions)
    priority_class_name: ObjectName | None = None
    engine: Engine | None = None
    """builtin: our server (transformers' continuous batching for LLMs; CPU or CUDA). vllm: vLLM's
    OpenAI server image, causal LMs only. Default: vllm for an LLM (spec.generation set) on GPUs,
    builtin otherwise (every CPU ModelService, and every tensor model)."""
    generation: GenerationSpec | None = None
    """Set for a causal language model (OpenAI API); its limits map onto either engine."""
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    model_cache: ModelCacheSpec = Field(default_factory=ModelCacheSpec)
    """Where an LLM's model is fetched and verified before the engine starts."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelServiceSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set replicas or autoscaling, not both")
        if (
            self.autoscaling is not None
            and self.autoscaling.effective_metric(self.is_llm) == "cpu"
            and self.resources.cpu is None
        ):
            raise ValueError("autoscaling on cpu needs resources.cpu: utilization is measured against the request")
        for rule in VARIANT_RULES:
            rule.enforce(self)
        if self.generation is not None and self.generation.lora_adapters and self.engine != "vllm":
            raise ValueError("generation.loraAdapters needs engine: vllm (the builtin engine serves merged models)")
        return self

    @property
    def is_llm(self) -> bool:
        """A causal LM served over the OpenAI API (the operator cannot open the artifact to tell)."""
        return self.generation is not None or self.engine == "vllm"

    @property
    def effective_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        return "vllm" if self.generation is not None and self.resources.gpu else "builtin"

    @property
    def fixed_replicas(self) -> int:
        return 1 if self.replicas is None else self.replicas

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.fixed_replicas


# --- Status -------------------------------------------------------------------------------

Phase = Literal["Pending", "Progressing", "Ready", "ScaledToZero", "Degraded", "Failed"]


class TrainingJobSource(ApiModel):
    name: str
    uid: str | None = None


class ServedModel(ApiModel):
    uri: str
    sha256: str | None = None
    """sha256 of the artifact's manifest.json, when known (pinned, or from the TrainingJob)."""
    training_job: TrainingJobSource | None = None
    """The TrainingJob that produced it, for trainingJobRef."""
    secret_ref: LocalObjectReference | None = None
    """Secret with the credentials to fetch it (its keys become environment variables)."""
    variant: VariantName | None = None
    """The optimized variant served (spec.model.variant); empty: the full model."""


class FailedModel(ServedModel):
    reason: str
    """Why its rollout failed (ProgressDeadlineExceeded, CrashLoopBackOff, ...)."""


class ReplicasStatus(ApiModel):
    desired: int = 0
    ready: int = 0
    updated: int = 0
    """Pods running the current pod template (the current model)."""
    available: int = 0


CanaryPhase = Literal["Progressing", "Ready", "Promoted", "Failed"]


class CanaryStatus(ApiModel):
    model: ServedModel
    phase: CanaryPhase
    weight: int
    """Requested share of traffic, in percent."""
    traffic_percent: int = 0
    """Achieved share: canary pods over all serving pods."""
    replicas: int = 0
    ready: int = 0
    restarts: int = 0
    """Container restarts of the canary pods; a new restart starts the promotion clock again."""
    ready_since: str | None = None
    """Since when every canary pod has been ready without restarts."""
    reason: str | None = None
    """Why the canary failed."""
    message: str = ""


class ModelServiceStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    """Summary for printer columns; read conditions for the full story."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=conditions_schema_extra())
    url: str | None = None
    """In-cluster URL of the Service (OIP v2 under /v2, KServe v1 under /v1)."""
    replicas: ReplicasStatus = Field(default_factory=ReplicasStatus)
    model: ServedModel | None = None
    """The model the stable Deployment serves, or is rolling out."""
    previous_model: ServedModel | None = None
    """The model served before; a failed rollout returns to it."""
    failed_model: FailedModel | None = None
    """A model whose rollout failed and was rolled back; not retried until the spec names another."""
    canary: CanaryStatus | None = None
