"""What users set on the pods next to the operator's own: refused alike by the CRD and pydantic,
or merged the way a user expects; the builders never produce two volumes of one name, two mounts
at one path, two variables of one name, nor a child name the API server refuses."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

import pytest

from maas_operator.api import modelservice, pods, trainingjob
from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.api.quantity import whole_cpus
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.api.validation import DNS1035_LABEL, full_match
from maas_operator.builders import modelservice as ms_build
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import attempt_children
from maas_operator.status.modelservice import ModelServiceView, Observed, plan_modelservice
from maas_operator.status.plan import written_manifests
from tests.operator import test_api, test_modelservice_api
from tests.operator.test_admission import assert_both_refuse
from tests.operator.test_api import changed
from tests.operator.validation import assert_valid_objects

IMAGE = "registry.example/maas-workloads:test"
MODEL = ServedModel(uri="pvc://store/digits/v1", sha256="a" * 64)
VOLUME = {"name": "scratch", "emptyDir": {"sizeLimit": "8Gi"}}


def tj_pods(changes: dict[str, Any], name: str = "digits") -> list[dict[str, Any]]:
    spec = TrainingJobSpec.model_validate(changed(test_api.example_spec(), changes))
    return attempt_children(Owner("TrainingJob", name, "team-a", "uid"), spec, 1, IMAGE)


def ms_children(changes: dict[str, Any], name: str = "digits") -> list[dict[str, Any]]:
    spec = ModelServiceSpec.model_validate(changed(test_modelservice_api.example_spec(), changes))
    owner = Owner("ModelService", name, "team-a", "uid")
    assert spec.autoscaling is not None
    budget = ms_build.pod_disruption_budget(owner, spec)
    return [
        ms_build.deployment(owner, spec, MODEL, "stable", IMAGE, None),
        ms_build.deployment(owner, spec, MODEL, "canary", IMAGE, 1),
        ms_build.service(owner, spec),
        ms_build.horizontal_pod_autoscaler(owner, spec.autoscaling),
        *([budget] if budget else []),
    ]


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [o["spec"] for o in objects if o["kind"] == "Pod"]
    return found + [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]


def assert_no_duplicates(objects: list[dict[str, Any]]) -> None:
    for pod in pod_specs(objects):
        container = pod["containers"][0]
        for what, names in (
            ("volume", [v["name"] for v in pod["volumes"]]),
            ("mount path", [m["mountPath"] for m in container["volumeMounts"]]),
            ("env var", [e["name"] for e in container["env"]]),
        ):
            assert not [n for n, c in Counter(names).items() if c > 1], f"duplicate {what}: {names}"
        assert {m["name"] for m in container["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}


# --- refused alike --------------------------------------------------------------------------
MOUNT = {"name": "scratch", "mountPath": "/data"}
REFUSED = [
    ({"workers.env": [{"name": "MAAS_ATTEMPT", "value": "9"}]}, "variables of the pods' contract", "env"),
    ({"workers.env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "names must be unique", "env"),
    ({"workers.volumes": [{"name": "maas-tmp", "emptyDir": {}}]}, "are the operator's own volumes", "volumes"),
    ({"workers.volumes": [VOLUME, VOLUME]}, "names must be unique", "volumes"),
    ({"workers.volumes": [{"name": "Scratch_1", "emptyDir": {}}]}, "at most 63 lowercase letters", "volumes"),
    (
        {"workers.volumes": [VOLUME], "workers.volumeMounts": [{**MOUNT, "mountPath": "/mnt/maas"}]},
        "are the operator's: mount elsewhere",
        "volumeMounts",
    ),
    (
        {"workers.volumes": [VOLUME], "workers.volumeMounts": [{**MOUNT, "mountPath": "/mnt/maas/x"}]},
        "are the operator's",
        "volumeMounts",
    ),
    (
        {"workers.volumes": [VOLUME], "workers.volumeMounts": [{**MOUNT, "mountPath": "/dev/termination-log"}]},
        "are the operator's",
        "volumeMounts",
    ),
    (
        {"workers.volumes": [VOLUME], "workers.volumeMounts": [MOUNT, {**MOUNT, "readOnly": True}]},
        "mountPaths must be unique",
        "volumeMounts",
    ),
    (
        {"workers.volumeMounts": [{"name": "maas-tmp", "mountPath": "/x"}]},
        "every volumeMount must name one of volumes",
        "volumeMounts",
    ),
]


@pytest.mark.parametrize(("changes", "message", "field"), REFUSED)
def test_collisions_are_refused_alike(changes: dict[str, Any], message: str, field: str) -> None:
    assert_both_refuse("TrainingJob", changes, message, f"spec.workers.{field}")


def test_a_modelservice_mount_must_name_its_volume() -> None:
    changes = {"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    assert_both_refuse("ModelService", changes, "every volumeMount must name one of volumes", "spec.volumeMounts")


@pytest.mark.parametrize("name", sorted(pods.RESERVED_ENV))
def test_every_reserved_variable_is_refused_on_a_modelservice(name: str) -> None:
    assert_both_refuse(
        "ModelService", {"env": [{"name": name, "value": "x"}]}, "variables of the pods' contract", "spec.env"
    )


# --- merged as a user expects ---------------------------------------------------------------
def container(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["containers"][0])


def test_a_users_bigger_dev_shm_and_tmp_replace_the_operators() -> None:
    shm = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    changes = {
        "workers.volumes": [shm, VOLUME],
        "workers.volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": "/tmp"}],
    }
    objects = tj_pods(changes)
    worker = next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "digits-worker-0")["spec"]
    assert shm in worker["volumes"] and {"name": "shm", "mountPath": "/dev/shm"} in container(worker)["volumeMounts"]
    assert not {"maas-shm", "maas-tmp"} & {v["name"] for v in worker["volumes"]}
    head = next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "digits-head")["spec"]
    assert {"maas-shm", "maas-tmp"} <= {v["name"] for v in head["volumes"]}  # only the workers asked
    assert_no_duplicates(objects)
    assert_valid_objects(objects)


def test_a_users_persistent_model_cache_replaces_the_operators() -> None:
    cache = {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}}
    changes = {"volumes": [cache], "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/maas/models"}]}
    objects = ms_children(changes)
    pod = pod_specs(objects)[0]
    assert cache in pod["volumes"] and "maas-model-cache" not in {v["name"] for v in pod["volumes"]}
    assert_no_duplicates(objects)
    assert_valid_objects(objects)


def test_user_defaults_win_but_reserved_variables_cannot_be_set() -> None:
    env = [{"name": "OMP_NUM_THREADS", "value": "8"}, {"name": "HOME", "value": "/work"}]
    pod = pod_specs(ms_children({"env": env, "resources.cpu": "2"}))[0]
    values = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert values["OMP_NUM_THREADS"] == "8" and values["HOME"] == "/work"


def test_a_users_prometheus_annotations_win_and_maas_annotations_stay_the_operators() -> None:
    deployment = ms_children({"annotations": {"prometheus.io/scrape": "false", "team": "ml"}})[0]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false" and annotations["team"] == "ml"
    assert annotations[ms_build.ANNOTATION_MODEL_URI] == MODEL.uri


EVERYTHING = {
    "volumes": [VOLUME],
    "volumeMounts": [{"name": "scratch", "mountPath": "/data", "subPath": "x"}],
    "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "HOME", "value": "/data"}],
    "labels": {"team": "ml", "example.com/cost-center": "42"},
    "annotations": {"example.com/note": "hi"},
    "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute", "tolerationSeconds": 60}
    ],
}


def test_builders_never_duplicate_and_objects_stay_valid() -> None:
    tj = tj_pods(
        {**{f"workers.{k}": v for k, v in EVERYTHING.items()}, **{f"head.{k}": v for k, v in EVERYTHING.items()}}
    )
    ms = ms_children(EVERYTHING)
    for objects in (tj, ms):
        assert_no_duplicates(objects)
        assert_valid_objects(objects)


def test_every_variable_label_and_annotation_the_operator_sets_is_classified() -> None:
    """A new operator-set name must be reserved (refused from users) or overridable: decided, not left to chance."""
    objects = (
        tj_pods({"runPolicy.queueName": "q"})
        + ms_children({"resources.cpu": "1", "auth": None})
        + ms_children({"server.tls": {"secretRef": {"name": "tls"}}})
    )
    operator_env = {e["name"] for pod in pod_specs(objects) for e in container(pod)["env"]}
    assert operator_env <= pods.RESERVED_ENV | pods.USER_OVERRIDABLE_ENV
    contract_knobs = {"MAAS_PROGRESS_PORT", "MAAS_TERMINATION_LOG", "MAAS_AUTH_TOKEN"}
    assert operator_env | contract_knobs >= pods.RESERVED_ENV
    metadata = [o["metadata"] for o in objects] + [
        o["spec"]["template"]["metadata"] for o in objects if o["kind"] == "Deployment"
    ]
    for meta in metadata:
        for key in meta.get("labels", {}):
            assert (
                key in pods.RESERVED_LABEL_KEYS or key.startswith("maas.dev/") or key == trainingjob.KUEUE_QUEUE_LABEL
            )
        for key in meta.get("annotations", {}):
            assert key.startswith(("maas.dev/", "prometheus.io/")), key


# --- derived names --------------------------------------------------------------------------
def test_every_child_of_the_longest_allowed_names_is_a_dns_label() -> None:
    job = "j" * trainingjob.MAX_NAME_LENGTH
    names = [o["metadata"]["name"] for o in tj_pods({"workers.replicas": trainingjob.MAX_WORKERS}, job)]
    assert f"{job}-worker-{trainingjob.MAX_WORKERS - 1}" in names and f"{job}-ray" in names
    service = "s" * modelservice.MAX_NAME_LENGTH
    objects = ms_children({}, service)
    names += [o["metadata"]["name"] for o in objects]
    assert f"{service}-canary" in names
    for name in names:
        assert full_match(DNS1035_LABEL, name) and len(name) <= 63, name
    assert max(len(name) for name in names) == 63  # the limits are tight, not merely safe


# --- any quantity, no crash -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("cpu", "threads"), [("2G", "2000000000"), ("1.5", "2"), ("500m", "1"), ("1e3", "1000"), (4, "4"), ("1.5m", "1")]
)
def test_any_cpu_quantity_renders_and_plans(cpu: str | int, threads: str) -> None:
    spec = ModelServiceSpec.model_validate(
        changed(test_modelservice_api.example_spec(), {"resources.cpu": cpu, "model": {"uri": "s3://models/digits"}})
    )
    view = ModelServiceView(
        Owner("ModelService", "digits", "a", "uid"), 1, spec, None, modelservice.ModelServiceStatus()
    )
    plan = plan_modelservice(view, Observed(training_jobs={}), datetime.datetime.now(datetime.UTC), IMAGE)
    deployment = next(manifest for manifest in written_manifests(plan) if manifest["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == threads == str(whole_cpus(str(cpu)))
