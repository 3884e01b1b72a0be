"""`spec.server.tls`: refused alike by the CRD and pydantic when malformed; a mounted (never read)
Secret, HTTPS probes, an https Service port and scrape annotations for both engines; the init
container and plain-HTTP services untouched."""

from __future__ import annotations

import datetime
import os
import pathlib
from typing import Any

import pytest
import yaml

from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus, ServedModel
from maas_operator.builders import llm, tls
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_operator.status.modelservice import ModelServiceView, Observed, plan_modelservice
from maas_workloads import contract
from tests.operator.test_admission import assert_both_refuse, refusals
from tests.operator.test_modelservice_api import IMAGE, MODEL, OWNER, children, with_changes
from tests.operator.validation import assert_valid_objects

GOLDEN = pathlib.Path(__file__).parent / "golden" / "modelservice-digits-tls.yaml"
TLS = {"server.tls": {"secretRef": {"name": "digits-tls"}}}
SECRET_VOLUME = {"name": "maas-tls", "secret": {"secretName": "digits-tls", "defaultMode": 0o440}}
MOUNT = {"name": "maas-tls", "mountPath": "/etc/maas/tls", "readOnly": True}
LLM = {"generation": {}, "model": {"uri": "s3://models/assistant/v1"}, "autoscaling": None, "replicas": 1}


def pod_spec(changes: dict[str, Any]) -> dict[str, Any]:
    spec = ModelServiceSpec.model_validate(with_changes(changes))
    return build.deployment(OWNER, spec, MODEL, "stable", IMAGE, None)["spec"]["template"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"server.tls": {}}, "spec.server.tls"),  # no secretRef
        ({"server.tls": {"secretRef": {"name": "Digits_TLS"}}}, "spec.server.tls.secretRef.name"),
        ({"server.tls": {"secretRef": {"name": "x", "key": "tls.crt"}}}, "spec.server.tls.secretRef.key"),
    ],
)
def test_a_malformed_tls_reference_is_refused_by_both(changes: dict[str, Any], field: str) -> None:
    for answer in refusals("ModelService", with_changes(changes)):
        assert answer.startswith(f"{field}"), answer


@pytest.mark.parametrize(
    ("changes", "message", "field"),
    [
        (
            {
                "volumes": [{"name": "certs", "emptyDir": {}}],
                "volumeMounts": [{"name": "certs", "mountPath": "/etc/maas/tls"}],
            },
            "/etc/maas/tls (the server's certificate)",
            "spec.volumeMounts",
        ),
        (
            {
                "volumes": [{"name": "c", "emptyDir": {}}],
                "volumeMounts": [{"name": "c", "mountPath": "/etc/maas/tls/ca"}],
            },
            "are the operator's: mount elsewhere",
            "spec.volumeMounts",
        ),
        ({"volumes": [{"name": "maas-tls", "emptyDir": {}}]}, "are the operator's own volumes", "spec.volumes"),
        ({"env": [{"name": contract.ENV_TLS_KEY_FILE, "value": "/k"}]}, "variables of the pods' contract", "spec.env"),
    ],
)
def test_collisions_with_the_certificate_are_refused_alike(changes: dict[str, Any], message: str, field: str) -> None:
    assert_both_refuse("ModelService", {**TLS, **changes}, message, field)


def test_golden_manifests() -> None:
    rendered = yaml.safe_dump_all(children(with_changes(TLS)), sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 after an intended change"


@pytest.mark.parametrize(
    "changes",
    [
        TLS,
        {**TLS, "autoscaling": None, "replicas": 1, "auth": None},
        {**TLS, **LLM},
        {**TLS, **LLM, "engine": "vllm", "resources.gpu": 1},
    ],
)
def test_children_are_valid_kubernetes_objects(changes: dict[str, Any]) -> None:
    assert_valid_objects(children(with_changes(changes)))


def test_the_builtin_server_gets_the_mounted_secret_and_is_probed_over_https() -> None:
    template = pod_spec(TLS)
    pod, container = template["spec"], template["spec"]["containers"][0]
    assert SECRET_VOLUME in pod["volumes"] and MOUNT in container["volumeMounts"]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert env[contract.ENV_TLS_CERT_FILE] == "/etc/maas/tls/tls.crt"
    assert env[contract.ENV_TLS_KEY_FILE] == "/etc/maas/tls/tls.key"
    assert container["ports"] == [{"name": "https", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS" and container[probe]["httpGet"]["port"] == "https"
    assert template["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    service = build.service(OWNER, ModelServiceSpec.model_validate(with_changes(TLS)))
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "appProtocol": "https"}
    ]


def test_a_plain_server_is_rendered_as_before() -> None:
    """No scheme field, annotation or volume that would change the pod template of existing services."""
    template = pod_spec({})
    container = template["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": contract.HEALTH_READY_PATH, "port": "http"}
    assert "prometheus.io/scheme" not in template["metadata"]["annotations"]
    assert tls.VOLUME not in {volume["name"] for volume in template["spec"]["volumes"]}
    assert not {contract.ENV_TLS_CERT_FILE, contract.ENV_TLS_KEY_FILE} & {v["name"] for v in container["env"]}


def test_both_llm_engines_serve_https_and_the_fetch_container_is_unaffected() -> None:
    builtin = pod_spec({**TLS, **LLM})["spec"]
    vllm = pod_spec({**TLS, **LLM, "engine": "vllm"})["spec"]
    for pod in (builtin, vllm):
        (fetch,) = pod["initContainers"]
        assert MOUNT not in fetch["volumeMounts"]
        assert not any(variable["name"].startswith("MAAS_TLS") for variable in fetch["env"])
        server = pod["containers"][0]
        assert MOUNT in server["volumeMounts"] and SECRET_VOLUME in pod["volumes"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["httpGet"] == {"path": contract.LLM_HEALTH_PATH, "port": "https", "scheme": "HTTPS"}
    env = {variable["name"] for variable in builtin["containers"][0]["env"]}
    assert {contract.ENV_TLS_CERT_FILE, contract.ENV_TLS_KEY_FILE} <= env
    server = vllm["containers"][0]
    assert server["command"] == list(llm.VLLM_COMMAND)
    args = server["args"]
    assert args[args.index("--ssl-certfile") + 1] == "/etc/maas/tls/tls.crt"
    assert args[args.index("--ssl-keyfile") + 1] == "/etc/maas/tls/tls.key"
    assert "--enable-ssl-refresh" in args
    assert not any(variable["name"].startswith("MAAS_TLS") for variable in server["env"])


def test_status_url_says_https() -> None:
    spec = ModelServiceSpec.model_validate(with_changes({**TLS, "model": {"uri": MODEL.uri}}))
    view = ModelServiceView(Owner("ModelService", "digits", "team-a", "uid"), 1, spec, None, ModelServiceStatus())
    plan = plan_modelservice(view, Observed(training_jobs={}), datetime.datetime.now(datetime.UTC), IMAGE)
    assert plan.status.url == "https://digits.team-a.svc"
    assert plan.status.model == ServedModel(uri=MODEL.uri)
