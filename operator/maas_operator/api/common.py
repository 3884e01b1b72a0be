"""Building blocks shared by the TrainingJob and ModelService APIs.

Field docstrings become the CRD's descriptions (`kubectl explain`), so write them for users.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from maas_operator.api.validation import DNS1123_SUBDOMAIN, DNS1123_SUBDOMAIN_MAX_LENGTH


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
        # The CRD types are strict (an integer field refuses "1"): so are the models.
        strict=True,
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


ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=DNS1123_SUBDOMAIN_MAX_LENGTH, pattern=f"^{DNS1123_SUBDOMAIN}$"),
]
"""The name of another object (Secret, claim, PriorityClass, ...): a DNS-1123 subdomain."""


class LocalObjectReference(ApiModel):
    name: ObjectName
    """Name of an object in the same namespace."""


class SecretKeySelector(ApiModel):
    name: ObjectName
    """Name of the Secret, in the same namespace."""
    key: str = Field(min_length=1)
    """Key inside the Secret."""


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
    """One line per problem, naming the field as the API server does (`spec.workers.env[2].name`)."""
    lines = []
    for problem in error.errors():
        path = prefix + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
