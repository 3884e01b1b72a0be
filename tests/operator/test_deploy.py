"""deploy/: the one-file install and the other generated files stay what their sources render."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import yaml

from tests.operator.validation import assert_valid_objects

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_generated_files_match_the_chart_and_their_sources() -> None:
    """install.yaml (helm template of the chart), the argocd-cm patch and the dashboards."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_deploy.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_yaml_is_the_whole_install_in_one_file() -> None:
    objects = [o for o in yaml.safe_load_all((REPO / "deploy" / "install.yaml").read_text()) if o]
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == "maas-system"
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    crds = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition")
    assert crds == ["modelservices.maas.dev", "trainingjobs.maas.dev"]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"} <= kinds
    assert not kinds & {"PrometheusRule", "PodMonitor", "ServiceMonitor", "ConfigMap"}, "defaults only"
    namespaced = [o for o in objects if o["kind"] in {"Deployment", "ServiceAccount", "Service"}]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"maas-system"}
    chart = yaml.safe_load((REPO / "charts" / "maas-operator" / "Chart.yaml").read_text())
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{chart['appVersion']}")
    assert_valid_objects([o for o in objects if o["kind"] != "CustomResourceDefinition"])
