"""Building blocks shared by the TrainingJob and ModelService APIs.

Field docstrings become the CRD's descriptions (`kubectl explain`), so write them for users.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def preserve_unknown(description: str) -> dict[str, Any]:
    """JSON-schema extra for a field that holds an arbitrary Kubernetes sub-object."""
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "description": description}


def cel(rule: str, message: str, **extra: str) -> dict[str, Any]:
    """One CEL validation rule for `x-kubernetes-validations`."""
    return {"rule": rule, "message": message, **extra}


def immutable(field: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [cel("self == oldSelf", f"{field} is immutable")]}


_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")


def _quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2 or 4Gi")
    text = str(value)
    if not _QUANTITY.match(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity; write e.g. 500m, 2 or 4Gi")
    return text


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": _QUANTITY.pattern}],
        }
    ),
]

ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]


class LocalObjectReference(ApiModel):
    name: ObjectName
    """Name of an object in the same namespace."""


class SecretKeySelector(ApiModel):
    name: ObjectName
    """Name of the Secret, in the same namespace."""
    key: str = Field(min_length=1)
    """Key inside the Secret."""


class EnvVar(ApiModel):
    """An environment variable for the containers, as in a Pod's `env`."""

    name: str = Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    value_from: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra=preserve_unknown("A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, ...)."),
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set value or valueFrom, not both")
        return self


class Toleration(ApiModel):
    """A Kubernetes toleration, for tainted (for example GPU) nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Resources(ApiModel):
    """Compute resources of one container.

    `cpu` is a request (no CPU limit, so training and serving are never throttled);
    `memory` is both request and limit; `gpu` is requested and limited as nvidia.com/gpu.
    """

    cpu: Quantity | None = None
    """CPU request, e.g. 500m or 4."""
    memory: Quantity | None = None
    """Memory request and limit, e.g. 8Gi."""
    gpu: int = Field(default=0, ge=0, le=64)
    """Number of NVIDIA GPUs (nvidia.com/gpu); 0 runs on CPU."""
    ephemeral_storage: Quantity | None = None
    """Local scratch space request and limit, e.g. 20Gi."""


class PodOptions(ApiModel):
    """Placement and environment of one group of pods."""

    resources: Resources = Field(default_factory=Resources)
    """Compute resources of the main container."""
    env: list[EnvVar] = Field(default_factory=list)
    """Extra environment variables of the main container."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must run on, e.g. nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for tainted nodes."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra=preserve_unknown("A Kubernetes Affinity, copied to the pods.")
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        json_schema_extra={
            "items": preserve_unknown("A Kubernetes Volume."),
            "description": "Extra volumes of the pods.",
        },
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list,
        json_schema_extra={
            "items": preserve_unknown("A Kubernetes VolumeMount."),
            "description": "Where the extra volumes appear in the main container.",
        },
    )
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations of the pods."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels of the pods."""


class PvcLocation(ApiModel):
    claim_name: ObjectName
    """A PersistentVolumeClaim in the same namespace; ReadWriteMany when pods run on several nodes."""
    path: str = Field(
        default="",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!self.startsWith('/') && !self.contains('..')", "path must be relative, without '..'")
            ]
        },
    )
    """Directory inside the claim, relative to its root."""

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        if path.startswith("/") or ".." in path:
            raise ValueError("path must be relative to the claim's root, without '..'")
        return path


class StorageLocation(ApiModel):
    """Where files go: exactly one of `uri` or `pvc`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.uri) != has(self.pvc)", "set exactly one of uri or pvc"),
            ]
        }
    )

    uri: str | None = Field(default=None, pattern=r"^(s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?|file:///.*)$")
    """s3://bucket/prefix, or file:///path on a volume every pod mounts."""
    pvc: PvcLocation | None = None
    """A PersistentVolumeClaim the operator mounts into every pod."""
    secret_ref: LocalObjectReference | None = None
    """Secret whose keys become environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL, AWS_REGION) for s3:// access."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageLocation:
        if (self.uri is None) == (self.pvc is None):
            raise ValueError("set exactly one of uri or pvc")
        return self


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A Kubernetes-style condition: the latest observation of one aspect of the object."""

    model_config = ConfigDict(frozen=True)

    type: str
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """A CamelCase, machine-readable cause."""
    message: str = ""
    """What happened, in words a user can act on."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None


def conditions_schema_extra() -> dict[str, Any]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, naming the field as it is written in YAML."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(part) for part in problem["loc"])])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
