"""The chart's Grafana dashboards, built with Grafana's own SDK (grafana-foundation-sdk).

`dashboards()` returns {file name: dashboard JSON}; scripts/render_deploy.py writes them to
charts/maas-operator/dashboards/, which the chart turns into sidecar ConfigMaps. Every query
names only metrics the project exports (tests/operator/test_monitoring.py checks each one
against the real registries): the operator's (maas_operator.metrics, state_metrics), the
training head's progress server, the inference server, and vLLM's names from
maas_workloads.contract.VLLM_METRICS. Series carry `namespace`, and `trainingjob` or
`modelservice` as the chart's PodMonitors and the operator's state metrics label them.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto")


def graph(title: str, unit: str, *targets: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(width)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def single(title: str, unit: str, target: prometheus.Dataquery, width: int = 6) -> stat.Panel:
    return stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(width).with_target(target)


def quantiles(metric: str, by: str, selector: str, levels: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[Any]:
    """histogram_quantile of `metric` at each level, one series per `by` value."""
    return [
        query(
            f"histogram_quantile({level}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{{{{{by}}}}} p{round(level * 100)}",
        )
        for level in levels
    ]


def variable(name: str, label: str, source: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({source}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def board(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["maas"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )


def training() -> dashboard.Dashboard:
    job = 'namespace=~"$namespace", trainingjob=~"$trainingjob"'
    return (
        board("maas-training", "MaaS / Training", "TrainingJobs: loss, throughput, progress, checkpoints, restarts.")
        .with_variable(variable("namespace", "Namespace", "maas_train_step"))
        .with_variable(variable("trainingjob", "TrainingJob", 'maas_train_step{namespace=~"$namespace"}'))
        .with_row(dashboard.Row("Progress"))
        .with_panel(graph("Training loss", "none", query(f"maas_train_loss{{{job}}}", "{{trainingjob}}")))
        .with_panel(graph("Reported metrics", "none", query(f"maas_train_metric{{{job}}}", "{{trainingjob}} {{name}}")))
        .with_panel(
            graph(
                "Throughput",
                "none",
                query(f"maas_train_samples_per_second{{{job}}}", "{{trainingjob}} samples/s"),
                query(f"rate(maas_train_steps_total{{{job}}}[{RATE}])", "{{trainingjob}} steps/s"),
            )
        )
        .with_panel(
            graph(
                "Progress",
                "percentunit",
                query(f"maas_train_step{{{job}}} / maas_train_total_steps{{{job}}}", "{{trainingjob}}"),
            )
        )
        .with_row(dashboard.Row("Health"))
        .with_panel(
            graph(
                "Checkpoint commit time",
                "s",
                *quantiles("maas_train_checkpoint_duration_seconds", "trainingjob", job, (0.5, 0.95)),
            )
        )
        .with_panel(
            graph(
                "Seconds since the last progress heartbeat",
                "s",
                query(f"time() - maas_train_heartbeat_timestamp_seconds{{{job}}}", "{{trainingjob}}"),
            )
        )
        .with_panel(
            graph(
                "Restarts in the last hour",
                "none",
                query(f"increase(maas_trainingjob_status_restarts_total{{{job}}}[1h])", "{{trainingjob}} attempts"),
                query(
                    f"increase(maas_trainingjob_status_worker_restarts_total{{{job}}}[1h])", "{{trainingjob}} workers"
                ),
            )
        )
        .with_panel(
            graph(
                "Waiting to be scheduled (GPUs requested)",
                "none",
                query(
                    f"maas_trainingjob_gpus{{{job}}} and on (namespace, trainingjob) "
                    f"maas_trainingjob_status_condition{{{job}, "
                    'type="Running", status="False", reason="Unschedulable"}',
                    "{{trainingjob}}",
                ),
            )
        )
    )


def serving() -> dashboard.Dashboard:
    svc = 'namespace=~"$namespace", modelservice=~"$modelservice"'
    return (
        board("maas-serving", "MaaS / Serving", "ModelServices: traffic, latency, batching, queue, replicas.")
        .with_variable(variable("namespace", "Namespace", "maas_inference_requests_total"))
        .with_variable(
            variable("modelservice", "ModelService", 'maas_inference_requests_total{namespace=~"$namespace"}')
        )
        .with_row(dashboard.Row("Traffic"))
        .with_panel(
            graph(
                "Requests per second by status code",
                "reqps",
                query(f"sum by (modelservice, code) (rate(maas_inference_requests_total{{{svc}}}[{RATE}]))"),
            )
        )
        .with_panel(
            graph(
                "Request latency",
                "s",
                *quantiles("maas_inference_request_duration_seconds", "modelservice", svc),
            )
        )
        .with_panel(
            graph(
                "Time in the batching queue and in the model (p99)",
                "s",
                *quantiles("maas_inference_queue_duration_seconds", "modelservice", svc, (0.99,)),
                *quantiles("maas_inference_compute_duration_seconds", "modelservice", svc, (0.99,)),
            )
        )
        .with_panel(
            graph(
                "Batch size",
                "none",
                query(
                    f"sum by (modelservice) (rate(maas_inference_batch_size_sum{{{svc}}}[{RATE}]))"
                    f" / sum by (modelservice) (rate(maas_inference_batch_size_count{{{svc}}}[{RATE}]))",
                    "{{modelservice}} mean",
                ),
                *quantiles("maas_inference_batch_size", "modelservice", svc, (0.9,)),
            )
        )
        .with_row(dashboard.Row("Capacity"))
        .with_panel(
            graph(
                "In flight and queued",
                "none",
                query(
                    f"sum by (modelservice) (maas_inference_inflight_requests{{{svc}}})", "{{modelservice}} in flight"
                ),
                query(f"sum by (modelservice) (maas_inference_queue_depth{{{svc}}})", "{{modelservice}} queued"),
            )
        )
        .with_panel(
            graph(
                "Replicas",
                "none",
                query(f"maas_modelservice_status_replicas{{{svc}}}", "{{modelservice}} {{state}}"),
                query(f"sum by (modelservice) (maas_inference_model_ready{{{svc}}})", "{{modelservice}} model ready"),
            )
        )
        .with_panel(
            graph(
                "Connections, and refusals before the application",
                "none",
                query(f"sum by (modelservice) (maas_http_connections{{{svc}}})", "{{modelservice}} open connections"),
                query(
                    f"sum by (modelservice, reason) (rate(maas_http_rejected_total{{{svc}}}[{RATE}]))",
                    "{{modelservice}} refused/s: {{reason}}",
                ),
                query(
                    f'sum by (modelservice) (increase(maas_http_tls_reloads_total{{{svc}, result="failure"}}[1h]))',
                    "{{modelservice}} failed certificate reloads (1 h)",
                ),
            )
        )
        .with_panel(
            graph(
                "Request bodies held in memory (budget: --max-buffered-request-bytes)",
                "bytes",
                query(
                    f"max by (modelservice) (maas_http_buffered_request_bytes{{{svc}}})",
                    "{{modelservice}} busiest pod",
                ),
            )
        )
        .with_panel(
            single(
                "Rejected (429) share",
                "percentunit",
                query(
                    f'sum(rate(maas_inference_requests_total{{{svc}, code="429"}}[{RATE}]))'
                    f" / sum(rate(maas_inference_requests_total{{{svc}}}[{RATE}]))"
                ),
            )
        )
        .with_panel(
            single(
                "Server error (5xx) share",
                "percentunit",
                query(
                    f'sum(rate(maas_inference_requests_total{{{svc}, code=~"5.."}}[{RATE}]))'
                    f" / sum(rate(maas_inference_requests_total{{{svc}}}[{RATE}]))"
                ),
            )
        )
        .with_panel(
            single(
                "Model load time (max)",
                "s",
                query(f"max(maas_inference_model_load_seconds{{{svc}}})"),
            )
        )
    )


def llm() -> dashboard.Dashboard:
    sel = 'namespace=~"$namespace", modelservice=~"$modelservice", model_name=~"$model_name"'
    return (
        board("maas-llm", "MaaS / LLM serving", "LLM ModelServices (builtin or vLLM engine), by vLLM's metric names.")
        .with_variable(variable("namespace", "Namespace", "vllm:num_requests_running"))
        .with_variable(variable("modelservice", "ModelService", 'vllm:num_requests_running{namespace=~"$namespace"}'))
        .with_variable(variable("model_name", "Model", 'vllm:num_requests_running{modelservice=~"$modelservice"}'))
        .with_row(dashboard.Row("Latency"))
        .with_panel(
            graph("Time to first token", "s", *quantiles("vllm:time_to_first_token_seconds", "model_name", sel))
        )
        .with_panel(
            graph("Inter-token latency", "s", *quantiles("vllm:inter_token_latency_seconds", "model_name", sel))
        )
        .with_panel(
            graph(
                "End-to-end request latency and queue time (p95)",
                "s",
                *quantiles("vllm:e2e_request_latency_seconds", "model_name", sel, (0.95,)),
                *quantiles("vllm:request_queue_time_seconds", "model_name", sel, (0.95,)),
            )
        )
        .with_panel(
            graph(
                "Tokens per second",
                "none",
                query(
                    f"sum by (model_name) (rate(vllm:generation_tokens_total{{{sel}}}[{RATE}]))",
                    "{{model_name}} generated",
                ),
                query(
                    f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{sel}}}[{RATE}]))", "{{model_name}} prompt"
                ),
            )
        )
        .with_row(dashboard.Row("Engine"))
        .with_panel(
            graph(
                "Requests running and waiting",
                "none",
                query(f"sum by (model_name) (vllm:num_requests_running{{{sel}}})", "{{model_name}} running"),
                query(f"sum by (model_name) (vllm:num_requests_waiting{{{sel}}})", "{{model_name}} waiting"),
            )
        )
        .with_panel(
            graph(
                "KV cache usage",
                "percentunit",
                query(f"max by (model_name, pod) (vllm:kv_cache_usage_perc{{{sel}}})", "{{model_name}} {{pod}}"),
            )
        )
        .with_panel(
            graph(
                "Finished requests by reason",
                "reqps",
                query(
                    f"sum by (model_name, finished_reason) (rate(vllm:request_success_total{{{sel}}}[{RATE}]))",
                    "{{model_name}} {{finished_reason}}",
                ),
            )
        )
    )


def operator() -> dashboard.Dashboard:
    return (
        board(
            "maas-operator",
            "MaaS / Operator",
            "The operator: objects, reconciles, API errors, leader, restarts, rollouts.",
        )
        .with_row(dashboard.Row("Objects"))
        .with_panel(graph("Objects by kind and phase", "none", query("sum by (kind, phase) (maas_objects)")))
        .with_panel(
            graph(
                "Reconciles per second",
                "ops",
                query(f"sum by (kind, result) (rate(maas_reconcile_total[{RATE}]))"),
            )
        )
        .with_panel(
            graph("Reconcile duration", "s", *quantiles("maas_reconcile_duration_seconds", "kind", "", (0.5, 0.99)))
        )
        .with_panel(
            graph(
                "Kubernetes API errors per second",
                "ops",
                query(f"sum by (status) (rate(maas_api_errors_total[{RATE}]))"),
            )
        )
        .with_panel(
            graph(
                "Leader (1: the replica that reconciles) and leader changes per hour",
                "none",
                query("max by (pod) (maas_leader)", "{{pod}}"),
                query("sum(increase(maas_leader_transitions_total[1h]))", "leader changes"),
            )
        )
        .with_row(dashboard.Row("Outcomes"))
        .with_panel(
            graph(
                "TrainingJob restarts per hour",
                "none",
                query("sum by (reason, charged) (increase(maas_trainingjob_restarts_total[1h]))"),
                query("sum(increase(maas_trainingjob_worker_restarts_total[1h]))", "worker pods"),
            )
        )
        .with_panel(
            graph(
                "TrainingJob time to running (p90) and duration (p50)",
                "s",
                query(
                    "histogram_quantile(0.9, sum by (le) "
                    f"(rate(maas_trainingjob_time_to_running_seconds_bucket[{RATE}])))",
                    "to running p90",
                ),
                query(
                    "histogram_quantile(0.5, sum by (outcome, le) "
                    f"(rate(maas_trainingjob_duration_seconds_bucket[{RATE}])))",
                    "{{outcome}} p50",
                ),
            )
        )
        .with_panel(
            graph(
                "ModelService rollouts and rollbacks per hour",
                "none",
                query("sum by (reason) (increase(maas_modelservice_rollouts_total[1h]))", "rollout {{reason}}"),
                query(
                    "sum by (target, reason) (increase(maas_modelservice_rollbacks_total[1h]))",
                    "rollback {{target}} {{reason}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Objects with a problem",
                "none",
                query(
                    'sum by (type, reason) (maas_trainingjob_status_condition{type=~"Failed|Stalled", status="True"})',
                    "TrainingJob {{type}} {{reason}}",
                ),
                query(
                    'sum by (type, reason) (maas_modelservice_status_condition{type=~"Degraded|RolledBack", '
                    'status="True"})',
                    "ModelService {{type}} {{reason}}",
                ),
            )
        )
    )


def _with_layout(built: Any) -> dict[str, Any]:
    """The dashboard as JSON, panels placed left to right and top to bottom (Grafana does not)."""
    document: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    x = y = row_height = 0
    for panel in document.get("panels", []):
        pos = panel.setdefault("gridPos", {})
        width, height = pos.get("w", 24), pos.get("h", 1)
        if panel.get("type") == "row" or x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        pos.update({"x": x, "y": y, "w": width, "h": height})
        if panel.get("type") == "row":
            y, row_height = y + height, 0
            continue
        x, row_height = x + width, max(row_height, height)
        for index, target in enumerate(panel.get("targets", [])):
            target["refId"] = chr(ord("A") + index)  # Grafana tells a panel's queries apart by refId
    return document


def dashboards() -> dict[str, str]:
    """File name -> dashboard JSON (sorted keys, two-space indent, trailing newline)."""
    built: dict[str, Builder[Any]] = {
        "training.json": training(),
        "serving.json": serving(),
        "llm.json": llm(),
        "operator.json": operator(),
    }
    return {name: json.dumps(_with_layout(b.build()), indent=2, sort_keys=True) + "\n" for name, b in built.items()}
