"""The Helm chart, rendered and linted by the real helm binary."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

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


@pytest.mark.parametrize("values", [(), ("watchNamespaces={team-a,team-b}", "logFormat=text")])
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
        group = resource.api_version.rpartition("/")[0]
        matching = [r for r in granted if resource.plural in r["resources"] and group in r["apiGroups"]]
        assert matching, f"no RBAC rule for {kind}"
        needed = {"create"} if kind == "Event" else {"get"} if kind == "Node" else {"get", "list", "watch"}
        assert needed <= set(matching[0]["verbs"]), kind
    nodes = [r for r in granted if "nodes" in r["resources"]]
    assert [r["verbs"] for r in nodes] == [["get"]], "nodes are only read, one at a time"

    namespaced = render("watchNamespaces={team-a,team-b}")
    assert sorted(o["metadata"]["namespace"] for o in namespaced if o["kind"] == "Role") == ["team-a", "team-b"]
    cluster_scoped = [r["resources"] for r in rules(namespaced, "ClusterRole")]
    assert cluster_scoped == [["customresourcedefinitions"], ["namespaces"], ["nodes"]]
