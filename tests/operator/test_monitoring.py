"""The chart's monitoring: PrometheusRule checked and unit-tested by the real promtool, dashboards and
rules naming only metrics the project really exports, PodMonitors that select the operator's pods,
and the operator's per-object state metrics."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from maas_operator import metrics as operator_metrics
from maas_operator import state_metrics
from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.builders import modelservice as build_service
from maas_operator.builders import trainingjob as build_job
from maas_operator.builders.meta import Owner
from maas_workloads import contract
from maas_workloads.serve.http.connections import Connections
from maas_workloads.serve.http.settings import HTTP_FLAGS, TlsSettings, http_settings, parse_options
from maas_workloads.serve.http.tls import CertificateStore
from maas_workloads.serve.metrics import Metrics as ServingMetrics
from maas_workloads.train.progress import ProgressState
from tests.operator.test_chart import CHART, helm, render
from tests.workloads.serve.certificates import Authority, SecretVolume

TESTS = pathlib.Path(__file__).resolve().parent / "monitoring"
EVERY_TOGGLE = (
    "prometheusRule.enabled=true",
    "workloadMonitors.enabled=true",
    "grafana.dashboards.enabled=true",
    "metrics.serviceMonitor.enabled=true",
)


def promtool() -> str:
    found = shutil.which("promtool") or str(pathlib.Path(sys.executable).parent / "promtool")
    assert pathlib.Path(found).exists(), "promtool is missing: scripts/install-tools.sh puts it in .venv/bin"
    return found


def rule_groups(*values: str) -> list[dict[str, Any]]:
    rule = next(o for o in render(*values, "prometheusRule.enabled=true") if o["kind"] == "PrometheusRule")
    return list(rule["spec"]["groups"])


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted((CHART / "dashboards").glob("*.json"))}


# --- what the project exports --------------------------------------------------------------------------
def exposed_names(families: Iterable[Metric]) -> set[str]:
    """Sample names Prometheus stores for these families (a counter `x` is `x_total`, ...)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
    return {family.name + suffix for family in families for suffix in suffixes.get(family.type, [""])}


def http_layer_metrics(directory: pathlib.Path) -> set[str]:
    """What both inference servers' shared HTTP layer exports (connections, refusals, TLS reloads)."""
    registry = CollectorRegistry()
    volume = SecretVolume(directory / "tls", Authority().issue())
    settings = http_settings(parse_options([], {}, prog="serve", description="", flags=HTTP_FLAGS), {})
    Connections(settings, lambda status, message: b"", None, registry)
    CertificateStore(TlsSettings(volume.cert_file, volume.key_file, reload_seconds=10), registry)
    return exposed_names(registry.collect())


def exported_metrics(directory: pathlib.Path) -> dict[str, set[str]]:
    """Every sample name, by exporter, from the real registries (and vLLM's names from the contract)."""
    vllm = [Metric(name, "", kind) for name, kind in contract.VLLM_METRICS.items()]
    return {
        "inference servers' HTTP layer": http_layer_metrics(directory),
        "operator": exposed_names(operator_metrics.REGISTRY.collect()) | exposed_names(state_metrics.families([])),
        "training head": exposed_names(ProgressState(attempt=1).registry.collect()),
        "inference server": exposed_names(ServingMetrics().registry.collect()),
        "LLM server (vLLM names)": exposed_names(vllm),
    }


GRAFANA_VARIABLES = re.compile(r"\$(__rate_interval|__interval|__range)\b")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects, by the real PromQL parser (Grafana's range
    variables replaced by a duration first)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {expr}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(GRAFANA_VARIABLES.sub("5m", expr)), visit)
    return names


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    targets = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    sources = [
        re.fullmatch(r"label_values\((.+), \w+\)", v["query"]).group(1)  # type: ignore[union-attr]
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    return targets + sources


@pytest.mark.slow  # renders the chart with helm
def test_every_rule_and_dashboard_query_names_an_exported_metric(tmp_path: pathlib.Path) -> None:
    exported = exported_metrics(tmp_path)
    known = set().union(*exported.values())
    queries = {f"rule {r['alert']}": r["expr"] for group in rule_groups() for r in group["rules"]}
    for file, board in dashboards().items():
        queries.update({f"{file} query {i}": expr for i, expr in enumerate(dashboard_queries(board))})
    used: set[str] = set()
    for where, expr in queries.items():
        names = metric_names(expr)
        assert not names - known, f"{where} names metrics nobody exports: {sorted(names - known)}"
        used |= names
    # Each exporter's signals are on some dashboard or alert.
    for exporter, names in exported.items():
        assert names & used, f"nothing shows the {exporter}'s metrics"


def test_the_name_check_catches_a_misspelled_metric(tmp_path: pathlib.Path) -> None:
    assert metric_names("sum(rate(maas_inference_request_total[$__rate_interval]))") == {"maas_inference_request_total"}
    known = set().union(*exported_metrics(tmp_path).values())
    assert "maas_inference_request_total" not in known and "maas_inference_requests_total" in known


# --- promtool -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rules_pass_promtool_check_and_unit_tests(tmp_path: pathlib.Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    shutil.copy(TESTS / "alerts.test.yaml", tmp_path)
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts.test.yaml"]):
        result = subprocess.run([promtool(), *command], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for group in rule_groups() for r in group["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (TESTS / "alerts.test.yaml").read_text()))
    assert alerts == tested, f"alerts without a promtool unit test: {sorted(alerts - tested)}"


@pytest.mark.slow
def test_thresholds_are_values() -> None:
    thresholds = "prometheusRule.thresholds"
    groups = rule_groups(f"{thresholds}.gpuPendingMinutes=45", f"{thresholds}.latencyP99Seconds=0.25")
    rules = {r["alert"]: r for group in groups for r in group["rules"]}
    assert rules["MaasTrainingJobPendingForGPUs"]["for"] == "45m"
    assert rules["MaasModelServiceLatencyHigh"]["expr"].rstrip().endswith("> 0.25")


# --- the chart with every toggle on ---------------------------------------------------------------------
@pytest.mark.slow
def test_chart_with_every_monitoring_toggle_lints_and_renders() -> None:
    result = subprocess.run(
        [helm(), "lint", "--strict", str(CHART), *(arg for v in EVERY_TOGGLE for arg in ("--set", v))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    objects = render(*EVERY_TOGGLE)
    kinds = sorted(o["kind"] for o in objects if o["apiVersion"].startswith("monitoring.coreos.com"))
    assert kinds == ["PodMonitor", "PodMonitor", "PrometheusRule", "ServiceMonitor"]
    service_monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True  # state metrics carry `namespace`
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    assert len(maps) == len(dashboards())
    for config_map in maps.values():
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        (name, text), *_ = config_map["data"].items()
        assert json.loads(text) == dashboards()[name]
    default = {o["kind"] for o in render()}
    assert not default & {"PodMonitor", "PrometheusRule", "ServiceMonitor", "ConfigMap"}, "monitoring is opt-in"


@pytest.mark.slow
def test_pod_monitors_select_the_pods_the_operator_creates() -> None:
    monitors = {o["metadata"]["name"].rsplit("-", 1)[1]: o for o in render(*EVERY_TOGGLE) if o["kind"] == "PodMonitor"}
    job = Owner("TrainingJob", "digits", "team-a", "uid-1")
    job_spec = TrainingJobSpec.model_validate(
        {"trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}}, "output": {"uri": "s3://models/digits"}}
    )
    service = Owner("ModelService", "digits", "team-a", "uid-2")
    served = ServedModel(uri="s3://models/digits", sha256="1" * 64)

    def serving(**server: Any) -> dict[str, Any]:
        spec = ModelServiceSpec.model_validate({"model": {"uri": "s3://models/digits"}, "server": server})
        return build_service.deployment(service, spec, served, "stable", "image", 1)["spec"]["template"]  # type: ignore[no-any-return]

    pods = [
        ("training", build_job.head_pod(job, job_spec, 1, "image"), "http"),
        ("serving", serving(), "http"),
        ("serving", serving(tls={"secretRef": {"name": "digits-tls"}}), "https"),  # Prometheus follows the port
    ]
    worker = build_job.worker_pod(job, job_spec, 1, 0, "image")
    for workload, pod, scheme in pods:
        spec = monitors[workload]["spec"]
        labels = pod["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), workload
        ports = {port["name"] for container in pod["spec"]["containers"] for port in container.get("ports", [])}
        (endpoint,) = [endpoint for endpoint in spec["podMetricsEndpoints"] if endpoint["port"] in ports]
        assert endpoint.get("scheme", "http") == scheme, workload
        assert ("tlsConfig" in endpoint) == (scheme == "https")
        owner_label = endpoint["relabelings"][0]["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
        assert owner_label in {re.sub(r"[^a-zA-Z0-9_]", "_", key) for key in labels}, workload
    assert not monitors["training"]["spec"]["selector"]["matchLabels"].items() <= worker["metadata"]["labels"].items()
    assert monitors["training"]["spec"]["namespaceSelector"] == {"any": True}
    scoped = render(*EVERY_TOGGLE, "watchNamespaces={team-a,team-b}")
    selectors = [o["spec"]["namespaceSelector"] for o in scoped if o["kind"] == "PodMonitor"]
    assert selectors == [{"matchNames": ["team-a", "team-b"]}] * 2


# --- dashboards -------------------------------------------------------------------------------------------
def test_dashboards_are_well_formed() -> None:
    boards = dashboards()
    assert set(boards) == {"training.json", "serving.json", "llm.json", "operator.json"}
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        for panel in board["panels"]:
            position = panel["gridPos"]
            assert position["x"] >= 0 and position["x"] + position["w"] <= 24, (name, panel.get("title"))
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            targets = panel["targets"]
            assert targets and len({t["refId"] for t in targets}) == len(targets), (name, panel["title"])
            for target in targets:
                for variable in re.findall(r"\$(\w+)", target["expr"]):
                    assert variable.startswith("__") or variable in variables, (name, panel["title"], variable)


# --- state metrics ------------------------------------------------------------------------------------------
def test_state_metrics_name_each_object() -> None:
    objects = [
        {
            "kind": "TrainingJob",
            "metadata": {"namespace": "team-a", "name": "llama"},
            "spec": {"workers": {"replicas": 4, "resources": {"gpu": 2}}, "head": {"resources": {"gpu": 1}}},
            "status": {
                "attempt": 3,
                "workerRestarts": 2,
                "conditions": [{"type": "Running", "status": "False", "reason": "Unschedulable"}],
            },
        },
        {
            "kind": "ModelService",
            "metadata": {"namespace": "team-b", "name": "chat"},
            "status": {"replicas": {"desired": 3, "ready": 2}, "conditions": [{"type": "Ready", "status": "True"}]},
        },
    ]
    registry = CollectorRegistry()
    registry.register(state_metrics.StateCollector(lambda: objects))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    job = (("namespace", "team-a"), ("trainingjob", "llama"))
    assert samples["maas_trainingjob_gpus", job] == 9
    assert samples["maas_trainingjob_status_restarts_total", job] == 2
    assert samples["maas_trainingjob_status_worker_restarts_total", job] == 2
    condition = (*job[:1], ("reason", "Unschedulable"), ("status", "False"), job[1], ("type", "Running"))
    assert samples["maas_trainingjob_status_condition", condition] == 1
    service = (("modelservice", "chat"), ("namespace", "team-b"))
    assert samples["maas_modelservice_status_replicas", (*service, ("state", "desired"))] == 3
    assert samples["maas_modelservice_status_replicas", (*service, ("state", "available"))] == 0
