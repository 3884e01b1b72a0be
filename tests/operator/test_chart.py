"""The Helm chart, rendered and linted by the real helm binary."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from maas_operator.config import DEFAULT_WORKERS, ENV_PREFIX, OperatorConfig
from maas_operator.election import Timing
from maas_operator.kube.client import RESOURCE_TYPES
from tests.operator.validation import assert_valid_objects

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maas-operator"


def helm() -> str:
    found = shutil.which("helm") or str(pathlib.Path(sys.executable).parent / "helm")
    assert pathlib.Path(found).exists(), "helm is missing: `make install` puts it in .venv/bin"
    return found


def render(*values: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "demo", str(CHART), "--namespace", "maas-system", "--include-crds"]
    for value in values:
        args += ["--set", value]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def test_lint_is_clean() -> None:
    result = subprocess.run([helm(), "lint", "--strict", str(CHART)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values", [(), ("watchNamespaces={team-a,team-b}", "logFormat=text"), ("replicaCount=3",)], ids=str
)
def test_rendered_objects_are_valid(values: tuple[str, ...]) -> None:
    objects = [o for o in render(*values) if o["kind"] != "CustomResourceDefinition"]
    assert {o["kind"] for o in objects} >= {"Deployment", "ServiceAccount", "ClusterRole", "Service"}
    assert_valid_objects(objects)


def test_chart_crds_are_the_generated_crds() -> None:
    for path in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text(), "run `make crds`"


def test_operator_pod_is_restricted() -> None:
    deployment = next(o for o in render() if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["args"][:2] == ["operator", "--json-logs"]


def rules(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for o in objects if o["kind"] == kind for rule in o["rules"]]


def test_rbac_is_least_privilege_and_covers_what_the_operator_manages() -> None:
    cluster_wide = render()
    granted = rules(cluster_wide, "ClusterRole")
    for rule in granted:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"], "secrets are only referenced, never read"
    for kind, resource in RESOURCE_TYPES.items():
        if kind == "Lease":  # leader election: one Lease, by a Role (test_leader_election_rbac_is_one_lease)
            assert not [r for r in granted if "leases" in r["resources"]]
            continue
        group = resource.api_version.rpartition("/")[0]
        matching = [r for r in granted if resource.plural in r["resources"] and group in r["apiGroups"]]
        assert matching, f"no RBAC rule for {kind}"
        needed = {"create"} if kind == "Event" else {"get"} if kind == "Node" else {"get", "list", "watch"}
        assert needed <= set(matching[0]["verbs"]), kind
    nodes = [r for r in granted if "nodes" in r["resources"]]
    assert [r["verbs"] for r in nodes] == [["get"]], "nodes are only read, one at a time"

    namespaced = render("watchNamespaces={team-a,team-b}")
    roles = [o for o in namespaced if o["kind"] == "Role" and not o["metadata"]["name"].endswith("-leader-election")]
    assert sorted(o["metadata"]["namespace"] for o in roles) == ["team-a", "team-b"]
    cluster_scoped = [r["resources"] for r in rules(namespaced, "ClusterRole")]
    assert cluster_scoped == [["customresourcedefinitions"], ["namespaces"], ["nodes"]]


def deployment_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Deployment")


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_every_setting_the_chart_passes_is_one_the_operator_reads() -> None:
    env = env_of(deployment_of(render("replicaCount=2")))
    fields = {ENV_PREFIX + name.upper() for name in OperatorConfig.model_fields}
    assert set(env) <= fields, set(env) - fields
    values = {name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items() if isinstance(value, str)}
    config = OperatorConfig.model_validate(values)  # what the pod would start with
    assert config.leader_election and config.election_timing() == Timing()
    assert env[ENV_PREFIX + "LEADER_ELECTION_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize(("values", "workers"), [((), DEFAULT_WORKERS), (("workers=64",), 64)])
def test_the_concurrency_is_a_chart_value(values: tuple[str, ...], workers: int) -> None:
    env = env_of(deployment_of(render(*values)))
    assert OperatorConfig.from_env({ENV_PREFIX + "WORKERS": env[ENV_PREFIX + "WORKERS"]}).workers == workers


def test_replicas_are_leader_elected_spread_and_protected_by_a_budget() -> None:
    objects = render("replicaCount=2")
    deployment = deployment_of(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (budget,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = deployment["spec"]["template"]["spec"]
    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread), "a small cluster still runs them"
    assert all(c["labelSelector"]["matchLabels"].items() <= pod_labels.items() for c in spread)
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    single = render()
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"], "a budget on one pod would block drains"
    assert "topologySpreadConstraints" not in deployment_of(single)["spec"]["template"]["spec"]
    assert env_of(deployment_of(single))[ENV_PREFIX + "LEADER_ELECTION"] == "true", "rollouts overlap two pods"


def test_several_replicas_without_leader_election_are_refused() -> None:
    args = [helm(), "template", "demo", str(CHART), "--set", "replicaCount=2", "--set", "leaderElection.enabled=false"]
    result = subprocess.run(args, check=False, capture_output=True, text=True)
    assert result.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled=true" in result.stderr
    deployment = deployment_of(render("leaderElection.enabled=false"))
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "never two operators, even in a rollout"


LEASE_VALUES = [
    ((), "maas-system", "demo-maas-operator"),
    (("leaderElection.namespace=ops", "leaderElection.leaseName=maas"), "ops", "maas"),
]


@pytest.mark.parametrize(("values", "namespace", "lease"), LEASE_VALUES)
def test_leader_election_rbac_is_one_lease(values: tuple[str, ...], namespace: str, lease: str) -> None:
    objects = render(*values)
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == namespace, "a Role in the Lease's namespace, not a ClusterRole"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update"],
        },
    ]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["metadata"]["namespace"] == namespace and binding["roleRef"]["name"] == role["metadata"]["name"]
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": "maas-system"}]
    env = env_of(deployment_of(objects))
    assert env[ENV_PREFIX + "LEADER_ELECTION_NAMESPACE"] == namespace
    assert env[ENV_PREFIX + "LEADER_ELECTION_LEASE_NAME"] == lease
    assert not [o for o in render("leaderElection.enabled=false") if o["kind"] == "Role"]
