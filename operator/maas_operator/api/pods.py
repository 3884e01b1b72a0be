"""What a spec says about its pods: resources, environment, placement, volumes, labels.

Everything a user sets here ends up in a pod the operator builds next to its own containers,
volumes, variables and labels. The rules below refuse at admission what the API server would
refuse later, or what would silently break the pods' contract; where a user would expect their
setting to win, the builders merge instead (builders/pods.py `volumes_and_mounts`, `env_list`).
README.md, "What you may set on the pods", has the table of every decision.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from maas_operator.api import quantity, validation
from maas_operator.api.common import ApiModel, preserve_unknown
from maas_operator.api.validation import (
    ANNOTATIONS_SIZE,
    DNS1123_LABEL,
    LABEL_VALUE,
    LABEL_VALUES,
    MAX_ENV,
    MAX_LIST_ITEMS,
    QUALIFIED_KEYS,
    Rule,
    cel_list,
    cel_matches,
    enforcer,
    full_match,
    int_or_string,
    is_qualified_name,
    map_schema,
    reserved_keys,
)
from maas_workloads import contract

OPERATOR_VOLUME_PREFIX = "maas-"
SCRATCH_MOUNT_PATHS = ("/tmp", "/dev/shm", contract.MODEL_CACHE_MOUNT)
"""Where the operator mounts scratch volumes; a user's mount at one of them replaces the operator's."""
RESERVED_MOUNT_ROOTS = {
    contract.PVC_MOUNT_ROOT: "storage claims and pvc:// models",
    contract.TLS_MOUNT: "the server's certificate",
}
"""Where the operator mounts volumes of its own; a user's mount at or under one of them is refused."""
RESERVED_MOUNT_PATHS = (contract.TERMINATION_LOG,)
RESERVED_ENV = frozenset(
    {
        contract.ENV_TRAININGJOB,
        contract.ENV_JOB_NAME,
        contract.ENV_JOB_NAMESPACE,
        contract.ENV_JOB_UID,
        contract.ENV_ATTEMPT,
        contract.ENV_ROLE,
        contract.ENV_HEAD_ADDRESS,
        contract.ENV_WORKERS,
        contract.ENV_MIN_WORKERS,
        contract.ENV_CHECKPOINT_URI,
        contract.ENV_OUTPUT_URI,
        contract.ENV_PROGRESS_PORT,
        contract.ENV_TERMINATION_LOG,
        contract.ENV_MODEL_NAME,
        contract.ENV_MODEL_URI,
        contract.ENV_MODEL_SHA256,
        contract.ENV_PORT,
        contract.ENV_MAX_BATCH_SIZE,
        contract.ENV_MAX_DELAY_MS,
        contract.ENV_MAX_QUEUE_SIZE,
        contract.ENV_TIMEOUT_SECONDS,
        contract.ENV_MAX_REQUEST_BYTES,
        contract.ENV_AUTH_TOKEN,
        contract.ENV_DRAIN_SECONDS,
        contract.ENV_DRAIN_DELAY_SECONDS,
        contract.ENV_DEVICE,
        contract.ENV_MODEL_CACHE_DIR,
        contract.ENV_TLS_CERT_FILE,
        contract.ENV_TLS_KEY_FILE,
    }
)
"""The pods' contract with the operator: set from the spec (or fixed), never by `env`."""
USER_OVERRIDABLE_ENV = frozenset({"HOME", "PYTHONUNBUFFERED", contract.ENV_THREADS})
"""Defaults the operator sets that a user's `env` entry of the same name replaces."""
RESERVED_LABEL_KEYS = frozenset(
    {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
    }
)
OPERATOR_KEY_PREFIX = f"{contract.API_GROUP}/"

LABEL_RULES = [
    QUALIFIED_KEYS,
    LABEL_VALUES,
    reserved_keys(RESERVED_LABEL_KEYS, (OPERATOR_KEY_PREFIX,), "they select and own the children"),
]
ANNOTATION_RULES = [
    QUALIFIED_KEYS,
    ANNOTATIONS_SIZE,
    reserved_keys(frozenset(), (OPERATOR_KEY_PREFIX,), "they carry the spec and model hashes"),
]
NODE_SELECTOR_RULES = [QUALIFIED_KEYS, LABEL_VALUES]


Labels = Annotated[
    dict[str, str],
    AfterValidator(enforcer(LABEL_RULES)),
    Field(json_schema_extra=map_schema(LABEL_RULES, validation.DNS_LABEL_MAX_LENGTH)),
]
Annotations = Annotated[
    dict[str, str], AfterValidator(enforcer(ANNOTATION_RULES)), Field(json_schema_extra=map_schema(ANNOTATION_RULES))
]
NodeSelector = Annotated[
    dict[str, str],
    AfterValidator(enforcer(NODE_SELECTOR_RULES)),
    Field(json_schema_extra=map_schema(NODE_SELECTOR_RULES, validation.DNS_LABEL_MAX_LENGTH)),
]

Quantity = Annotated[
    str,
    BeforeValidator(quantity.check_positive),
    Field(json_schema_extra=int_or_string([quantity.POSITIVE], quantity.MAX_LENGTH)),
]
"""A positive Kubernetes quantity: an integer or a string in the CRD (x-kubernetes-int-or-string)."""


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


TOLERATION_RULES = [
    Rule(
        f"!has(self.key) || self.key == '' || ({cel_matches('self.key', validation.QUALIFIED_NAME)} && "
        f"{cel_matches('self.key', validation.QUALIFIED_PREFIX_LENGTH)})",
        validation.KEY_MESSAGE,
        lambda t: not t.key or is_qualified_name(t.key),
    ),
    Rule(
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "an empty key needs operator Exists",
        lambda t: bool(t.key) or t.operator == "Exists",
    ),
    Rule(
        "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && self.value != '')",
        "operator Exists takes no value",
        lambda t: not (t.operator == "Exists" and t.value),
    ),
    Rule(
        f"!has(self.value) || {cel_matches('self.value', LABEL_VALUE)}",
        f"value: {validation.LABEL_VALUE_MESSAGE}",
        lambda t: t.value is None or full_match(LABEL_VALUE, t.value),
    ),
    Rule(
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds needs effect NoExecute",
        lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
    ),
]


class Toleration(ApiModel):
    """A Kubernetes toleration, for tainted (for example GPU) nodes."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [r.schema() for r in TOLERATION_RULES]})

    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=validation.DNS_LABEL_MAX_LENGTH)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        for rule in TOLERATION_RULES:
            rule.enforce(self)
        return self


class Volume(ApiModel):
    """A Kubernetes Volume of the pods (any volume source), named as the mounts refer to it."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    name: str = Field(max_length=validation.DNS_LABEL_MAX_LENGTH)


class VolumeMount(ApiModel):
    """Where one of `volumes` appears in the main container (readOnly, subPath, ... as in Kubernetes)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    name: str = Field(max_length=validation.DNS_LABEL_MAX_LENGTH)
    mount_path: str = Field(min_length=1, max_length=4096)


def _reserved_path(path: str) -> bool:
    under = any(path == root or path.startswith(f"{root}/") for root in RESERVED_MOUNT_ROOTS)
    return under or path in RESERVED_MOUNT_PATHS


def _cel_not_under(root: str) -> str:
    return f"m.mountPath != '{root}' && !m.mountPath.startsWith('{root}/')"


def _names(items: list[Any], attribute: str) -> list[str]:
    return [getattr(item, attribute) for item in items]


VOLUME_RULES = [
    Rule(
        f"self.all(v, {cel_matches('v.name', DNS1123_LABEL)})",
        "names must be at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        lambda volumes: all(full_match(DNS1123_LABEL, name) for name in _names(volumes, "name")),
    ),
    Rule(
        f"self.all(v, !v.name.startsWith('{OPERATOR_VOLUME_PREFIX}'))",
        f"names starting with {OPERATOR_VOLUME_PREFIX} are the operator's own volumes; name yours otherwise",
        lambda volumes: not any(name.startswith(OPERATOR_VOLUME_PREFIX) for name in _names(volumes, "name")),
    ),
    Rule(
        "self.all(v, self.exists_one(w, w.name == v.name))",
        "names must be unique",
        lambda volumes: len(set(_names(volumes, "name"))) == len(volumes),
    ),
]
MOUNT_RULES = [
    Rule(
        f"self.all(m, {' && '.join(_cel_not_under(root) for root in RESERVED_MOUNT_ROOTS)}"
        f" && !(m.mountPath in {cel_list(RESERVED_MOUNT_PATHS)}))",
        f"{', '.join(f'{root} ({what})' for root, what in RESERVED_MOUNT_ROOTS.items())} and "
        f"{', '.join(RESERVED_MOUNT_PATHS)} are the operator's: mount elsewhere",
        lambda mounts: not any(_reserved_path(path) for path in _names(mounts, "mount_path")),
    ),
    Rule(
        "self.all(m, self.exists_one(n, n.mountPath == m.mountPath))",
        "mountPaths must be unique",
        lambda mounts: len(set(_names(mounts, "mount_path"))) == len(mounts),
    ),
]
ENV_RULES = [
    Rule(
        f"self.all(e, !(e.name in {cel_list(RESERVED_ENV)}))",
        "the MAAS_* variables of the pods' contract are set by the operator from the spec; "
        f"remove {', '.join(sorted(RESERVED_ENV))}",
        lambda env: not RESERVED_ENV.intersection(_names(env, "name")),
    ),
    Rule(
        "self.all(e, self.exists_one(f, f.name == e.name))",
        "names must be unique",
        lambda env: len(set(_names(env, "name"))) == len(env),
    ),
]
MOUNTS_NAME_VOLUMES = Rule(
    "!has(self.volumeMounts) || "
    "self.volumeMounts.all(m, has(self.volumes) && self.volumes.exists(v, v.name == m.name))",
    "every volumeMount must name one of volumes",
    lambda pair: set(_names(pair[0], "name")) <= set(_names(pair[1], "name")),
    field_path=".volumeMounts",
)
"""Checked on (volumeMounts, volumes); the CEL rule sits on the pod options, which hold both."""


def pod_rules(*more: dict[str, Any]) -> dict[str, Any]:
    """The CRD rules of pod options, with `more` of a subclass (whose model_config replaces ours)."""
    return {"x-kubernetes-validations": [MOUNTS_NAME_VOLUMES.schema(), *more]}


def _list_schema(rules: list[Rule], max_items: int) -> dict[str, Any]:
    return {"maxItems": max_items, "x-kubernetes-validations": [rule.schema() for rule in rules]}


EnvList = Annotated[
    list[EnvVar], AfterValidator(enforcer(ENV_RULES)), Field(json_schema_extra=_list_schema(ENV_RULES, MAX_ENV))
]
Volumes = Annotated[
    list[Volume],
    AfterValidator(enforcer(VOLUME_RULES)),
    Field(json_schema_extra=_list_schema(VOLUME_RULES, MAX_LIST_ITEMS)),
]
VolumeMounts = Annotated[
    list[VolumeMount],
    AfterValidator(enforcer(MOUNT_RULES)),
    Field(json_schema_extra=_list_schema(MOUNT_RULES, MAX_LIST_ITEMS)),
]


class PodOptions(ApiModel):
    """Placement and environment of one group of pods."""

    model_config = ConfigDict(json_schema_extra=pod_rules())

    resources: Resources = Field(default_factory=Resources)
    """Compute resources of the main container."""
    env: EnvList = Field(default_factory=list)
    """Extra environment variables of the main container."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """Node labels the pods must run on, e.g. nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """Tolerations for tainted nodes."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra=preserve_unknown("A Kubernetes Affinity, copied to the pods.")
    )
    volumes: Volumes = Field(default_factory=list)
    """Extra volumes of the pods."""
    volume_mounts: VolumeMounts = Field(default_factory=list)
    """Where the extra volumes appear in the main container; a mount at /tmp or /dev/shm (or a
    ModelService's model cache) replaces the operator's scratch volume there."""
    annotations: Annotations = Field(default_factory=dict)
    """Extra annotations of the pods."""
    labels: Labels = Field(default_factory=dict)
    """Extra labels of the pods."""

    @field_validator("volume_mounts")
    @classmethod
    def _mounts_name_volumes(cls, mounts: list[VolumeMount], info: ValidationInfo) -> list[VolumeMount]:
        """POD_RULES, reported at volumeMounts as the CRD's fieldPath does (volumes are validated first)."""
        MOUNTS_NAME_VOLUMES.enforce((mounts, info.data.get("volumes", [])))
        return mounts
