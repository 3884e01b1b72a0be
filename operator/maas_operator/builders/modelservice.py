"""The children of a ModelService: Deployments (stable, canary), Service, HPA, PDB.

Pure functions of the spec and the model to serve. Every manifest carries a hash of itself
in an annotation, so the planner can tell "already as wanted" from "needs an apply" without
comparing against server-side defaults.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from maas_operator.api.modelservice import AutoscalingSpec, ModelServiceSpec, ServedModel
from maas_operator.api.quantity import whole_cpus
from maas_operator.builders import llm, tls
from maas_operator.builders.meta import Owner, child_labels, child_metadata, selector_labels
from maas_operator.builders.pods import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TMP,
    OperatorVolume,
    container_resources,
    env_list,
    placement,
    volumes_and_mounts,
)
from maas_workloads import contract

Track = Literal["stable", "canary"]
LABEL_TRACK = f"{contract.API_GROUP}/track"
COMPONENT = "server"
ANNOTATION_SPEC_HASH = f"{contract.API_GROUP}/spec-hash"
ANNOTATION_MODEL_URI = f"{contract.API_GROUP}/model-uri"
ANNOTATION_MODEL_SHA256 = f"{contract.API_GROUP}/model-sha256"
PRE_STOP_SECONDS = 5
"""Endpoints controllers and load balancers stop sending new requests within this time."""
SHUTDOWN_MARGIN_SECONDS = 5
PROBE_PERIOD_SECONDS = 5
INFLIGHT_METRIC = contract.METRIC_INFLIGHT_REQUESTS
RPS_METRIC = "maas_inference_requests_per_second"
"""A per-pod rate the metrics adapter derives from maas_inference_requests_total (see README)."""
WAITING_METRIC = "vllm_num_requests_waiting"
KV_CACHE_METRIC = "vllm_kv_cache_usage_perc"
"""vLLM's gauges as the custom metrics API names them: prometheus-adapter renames `vllm:` to
`vllm_` (a colon cannot appear in that API's paths; see README for the rule)."""
MODEL_CACHE = OperatorVolume({"name": "maas-model-cache", "emptyDir": {}}, contract.MODEL_CACHE_MOUNT)


def deployment_name(owner: Owner, track: Track) -> str:
    return owner.name if track == "stable" else f"{owner.name}-canary"


def service_url(owner: Owner, spec: ModelServiceSpec) -> str:
    """The Service's in-cluster URL: https (port 443) with `server.tls`, else http (port 80)."""
    scheme = "https" if tls.enabled(spec) else "http"
    return f"{scheme}://{owner.name}.{owner.namespace}.svc"


def serving_selector(owner: Owner) -> dict[str, str]:
    """Every serving pod of the ModelService, both tracks: the Service and PDB select these."""
    return {**selector_labels(owner), "app.kubernetes.io/component": COMPONENT}


def track_selector(owner: Owner, track: Track) -> dict[str, str]:
    return {**serving_selector(owner), LABEL_TRACK: track}


def with_spec_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest, annotated with the sha256 of its own content."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_SPEC_HASH] = digest[:32]
    return manifest


def spec_hash(manifest: dict[str, Any] | None) -> str | None:
    if manifest is None:
        return None
    return ((manifest.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)


def model_annotations(model: ServedModel) -> dict[str, str]:
    """On the pod template: a different model changes the template and so rolls the Deployment."""
    annotations = {ANNOTATION_MODEL_URI: model.uri}
    if model.sha256:
        annotations[ANNOTATION_MODEL_SHA256] = model.sha256
    return annotations


def model_location(model: ServedModel) -> tuple[str, list[OperatorVolume]]:
    """The URI the server loads, with the read-only volume a pvc:// model needs."""
    if not model.uri.startswith("pvc://"):
        return model.uri, []
    claim, _, path = model.uri.removeprefix("pvc://").partition("/")
    mount_path = f"{contract.PVC_MOUNT_ROOT}/{claim}"
    volume = {"name": "maas-model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    uri = f"file://{mount_path}/{path.strip('/')}".rstrip("/")
    return uri, [OperatorVolume(volume, mount_path, {"readOnly": True})]


def _omp_threads(spec: ModelServiceSpec) -> str | None:
    """torch's intra-op threads follow the CPU request (any quantity), not the node's core count."""
    return None if spec.resources.cpu is None else str(whole_cpus(spec.resources.cpu))


def _server_env(owner: Owner, spec: ModelServiceSpec, model: ServedModel, uri: str) -> dict[str, str]:
    env = {
        contract.ENV_MODEL_NAME: owner.name,
        contract.ENV_MODEL_URI: uri,
        contract.ENV_PORT: str(spec.server.port),
        contract.ENV_MAX_BATCH_SIZE: str(spec.batching.max_batch_size),
        contract.ENV_MAX_DELAY_MS: str(spec.batching.max_delay_ms),
        contract.ENV_MAX_QUEUE_SIZE: str(spec.batching.max_queue_size),
        contract.ENV_TIMEOUT_SECONDS: str(spec.server.timeout_seconds),
        contract.ENV_MAX_REQUEST_BYTES: str(spec.server.max_request_bytes),
        contract.ENV_DRAIN_SECONDS: str(spec.server.timeout_seconds),
        # The preStop sleep already keeps the pod serving while endpoints drop it.
        contract.ENV_DRAIN_DELAY_SECONDS: "0",
        contract.ENV_DEVICE: "cuda" if spec.resources.gpu else "cpu",
        contract.ENV_MODEL_CACHE_DIR: contract.MODEL_CACHE_MOUNT,
        **tls.server_env(spec),
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
    }
    if model.sha256:
        env[contract.ENV_MODEL_SHA256] = model.sha256
    if model.variant:
        env[contract.ENV_MODEL_VARIANT] = model.variant
    threads = _omp_threads(spec)
    if threads:
        env[contract.ENV_THREADS] = threads
    return env


def _http_probe(spec: ModelServiceSpec, path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": tls.http_get(spec, path),
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _topology_spread(selector: dict[str, str]) -> list[dict[str, Any]]:
    """One pod per node where possible (hard), spread over zones (best effort)."""

    def spread(topology_key: str, when_unsatisfiable: str) -> dict[str, Any]:
        return {
            "maxSkew": 1,
            "topologyKey": topology_key,
            "whenUnsatisfiable": when_unsatisfiable,
            "labelSelector": {"matchLabels": dict(selector)},
            "matchLabelKeys": ["pod-template-hash"],
        }

    return [
        {**spread("kubernetes.io/hostname", "DoNotSchedule"), "nodeTaintsPolicy": "Honor"},
        spread("topology.kubernetes.io/zone", "ScheduleAnyway"),
    ]


def pod_template(
    owner: Owner, spec: ModelServiceSpec, model: ServedModel, track: Track, default_image: str
) -> dict[str, Any]:
    uri, model_volumes = model_location(model)
    volumes, mounts = volumes_and_mounts([TMP, MODEL_CACHE, *model_volumes, *tls.volume(spec)], spec)
    selector = track_selector(owner, track)
    container: dict[str, Any] = {
        "name": "server",
        "image": spec.image or default_image,
        "command": list(contract.SERVE_COMMAND),
        "ports": [{"name": tls.port_name(spec), "containerPort": spec.server.port, "protocol": "TCP"}],
        "env": env_list(_server_env(owner, spec, model, uri), spec.env),
        "resources": container_resources(spec.resources),
        # Ready only once the model is loaded, verified and warmed up; a slow download gets
        # the whole progress deadline before the kubelet gives up on the container.
        "startupProbe": _http_probe(
            spec,
            contract.HEALTH_READY_PATH,
            PROBE_PERIOD_SECONDS,
            math.ceil(spec.rollout.progress_deadline_seconds / PROBE_PERIOD_SECONDS),
            2,
        ),
        "readinessProbe": _http_probe(spec, contract.HEALTH_READY_PATH, PROBE_PERIOD_SECONDS, 2, 2),
        "livenessProbe": _http_probe(spec, contract.HEALTH_LIVE_PATH, 10, 3, 5),
        # Keep serving while endpoints drop this pod, then the server drains what is in flight.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.auth is not None:
        secret = spec.auth.token_secret_ref
        container["env"].append(
            {"name": contract.ENV_AUTH_TOKEN, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}
        )
    if model.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": model.secret_ref.name}}]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "terminationGracePeriodSeconds": PRE_STOP_SECONDS + spec.server.timeout_seconds + SHUTDOWN_MARGIN_SECONDS,
        "topologySpreadConstraints": _topology_spread(selector),
        "volumes": volumes,
        "enableServiceLinks": False,
        **placement(spec),
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [ref.to_wire() for ref in spec.image_pull_secrets]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    # The user's prometheus.io/* win (e.g. scrape: "false" under a PodMonitor); maas.dev/* are refused at admission.
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.server.port),
        "prometheus.io/path": contract.METRICS_PATH,
        **tls.scrape_annotations(spec),
        **spec.annotations,
        **model_annotations(model),
    }
    labels = child_labels(owner, COMPONENT, {**spec.labels, LABEL_TRACK: track})
    if spec.is_llm:
        llm.serve_llm(owner, spec, model, pod_spec, uri, model_volumes, default_image)
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def deployment(
    owner: Owner,
    spec: ModelServiceSpec,
    model: ServedModel,
    track: Track,
    default_image: str,
    replicas: int | None,
) -> dict[str, Any]:
    """`replicas` None leaves the count to the HorizontalPodAutoscaler (we do not own the field)."""
    body: dict[str, Any] = {
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": track_selector(owner, track)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": spec.rollout.max_surge, "maxUnavailable": spec.rollout.max_unavailable},
        },
        "template": pod_template(owner, spec, model, track, default_image),
    }
    if replicas is not None:
        body = {"replicas": replicas, **body}
    return with_spec_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": child_metadata(owner, deployment_name(owner, track), COMPONENT, {LABEL_TRACK: track}),
            "spec": body,
        }
    )


def replica_count(owner: Owner, track: Track, replicas: int) -> dict[str, Any]:
    """Only a Deployment's spec.replicas: applied by REPLICAS_FIELD_MANAGER while an HPA takes over the count."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(owner, track), "namespace": owner.namespace},
        "spec": {"replicas": replicas},
    }


def service(owner: Owner, spec: ModelServiceSpec) -> dict[str, Any]:
    metadata = child_metadata(owner, owner.name, COMPONENT, annotations=spec.service.annotations or None)
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": spec.service.type,
                "selector": serving_selector(owner),
                "ports": [
                    {
                        "name": tls.port_name(spec),
                        "port": tls.service_port(spec),
                        "targetPort": tls.port_name(spec),
                        "protocol": "TCP",
                        "appProtocol": tls.port_name(spec),
                    }
                ],
            },
        }
    )


def _hpa_metric(autoscaling: AutoscalingSpec, llm_service: bool) -> dict[str, Any]:
    target = autoscaling.effective_target(llm_service)
    metric = autoscaling.effective_metric(llm_service)
    if metric == "cpu":
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
        }
    names = {"inflight": INFLIGHT_METRIC, "rps": RPS_METRIC, "waiting": WAITING_METRIC, "kvCache": KV_CACHE_METRIC}
    # vLLM's KV-cache gauge is a fraction (0..1): a target of 80 percent is 800m.
    value = f"{target * 10}m" if metric == "kvCache" else str(target)
    return {
        "type": "Pods",
        "pods": {"metric": {"name": names[metric]}, "target": {"type": "AverageValue", "averageValue": value}},
    }


def horizontal_pod_autoscaler(
    owner: Owner, autoscaling: AutoscalingSpec, *, llm_service: bool = False
) -> dict[str, Any]:
    """`llm_service`: the ModelService serves a causal LM, whose default metric is the waiting queue."""
    body: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(owner, "stable")},
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [_hpa_metric(autoscaling, llm_service)],
    }
    if autoscaling.behavior:
        body["behavior"] = dict(autoscaling.behavior)
    return with_spec_hash(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": child_metadata(owner, owner.name, COMPONENT),
            "spec": body,
        }
    )


def pod_disruption_budget(owner: Owner, spec: ModelServiceSpec) -> dict[str, Any] | None:
    """None when no budget is wanted: one replica at most, and none asked for."""
    disruption = spec.disruption
    if disruption is None and spec.max_replicas <= 1:
        return None
    body: dict[str, Any] = {
        "selector": {"matchLabels": serving_selector(owner)},
        # A crash-looping pod must not block node drains.
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    if disruption is not None and disruption.min_available is not None:
        body["minAvailable"] = disruption.min_available
    else:
        chosen = disruption.max_unavailable if disruption is not None else None
        body["maxUnavailable"] = 1 if chosen is None else chosen
    return with_spec_hash(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": child_metadata(owner, owner.name, COMPONENT),
            "spec": body,
        }
    )


def canary_replicas(stable_replicas: int, weight: int) -> int:
    """Canary pods so that canary / (stable + canary) is as close to weight% as whole pods allow."""
    return max(1, round(stable_replicas * weight / (100 - weight)))
