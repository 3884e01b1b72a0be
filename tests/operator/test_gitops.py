"""GitOps health: the Argo CD Lua checks in deploy/argocd/, run by a real Lua 5.1 interpreter (the
language version of Argo CD's gopher-lua, with only the libraries Argo CD opens), and kstatus'
verdict (what Flux's healthChecks use), both on statuses the operator's own planners produce."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus, ServedModel
from maas_operator.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from maas_operator.builders.meta import Owner
from maas_operator.status import modelservice as ms
from maas_operator.status import trainingjob as tj
from maas_operator.status.plan import Plan, written_manifests
from maas_operator.status.pods import PodView
from tests.operator import kstatus

REPO = pathlib.Path(__file__).resolve().parents[2]
ARGOCD = REPO / "deploy" / "argocd"
T0 = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=datetime.UTC)
GENERATION = 1


def run_health_lua(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run a health script as Argo CD does: `obj` global, base/table/package libraries only."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.execute("for _, name in ipairs({'string', 'math', 'io', 'os', 'debug', 'coroutine'}) do _G[name] = nil end")
    lua.execute("getmetatable('').__index = nil")  # no ("x"):method() either: gopher-lua has no string library
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(script)
    return {str(k): str(v) for k, v in result.items()}


def body(kind: str, spec: dict[str, Any], status: TrainingJobStatus | ModelServiceStatus | None) -> dict[str, Any]:
    """The object as the API server (and so Argo CD) returns it, status serialised as the operator writes it."""
    obj: dict[str, Any] = {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "digits", "namespace": "team-a", "generation": GENERATION},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return obj


# --- TrainingJob statuses, from plan_trainingjob -------------------------------------------------------
TJ_OWNER = Owner("TrainingJob", "digits", "team-a", "uid-tj")
HEAD, W0, W1 = "digits-head", "digits-worker-0", "digits-worker-1"


def tj_spec(**run_policy: Any) -> dict[str, Any]:
    return {
        "trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}},
        "workers": {"replicas": 2, "resources": {"gpu": 1}},
        "output": {"uri": "s3://models/digits"},
        "runPolicy": run_policy,
    }


def pod(name: str, phase: str = "Running", **kwargs: Any) -> PodView:
    role = "head" if name.endswith("head") else "worker"
    index = None if role == "head" else int(name.rsplit("-", 1)[1])
    return PodView(name=name, role=role, attempt=1, index=index, phase=phase, ready=phase == "Running", **kwargs)


def tj_plan(
    status: TrainingJobStatus | None,
    pods: list[PodView],
    spec: dict[str, Any],
    at: datetime.datetime = T0,
    error: str | None = None,
) -> TrainingJobStatus:
    parsed = None if error else TrainingJobSpec.model_validate(spec)
    view = tj.TrainingJobView(TJ_OWNER, GENERATION, parsed, error, status or TrainingJobStatus())
    result: Plan[TrainingJobStatus] = tj.plan_trainingjob(view, tj.Observed(pods), at, "image:test")
    return result.status_after or result.status


def tj_running(spec: dict[str, Any]) -> TrainingJobStatus:
    return tj_plan(tj_plan(None, [], spec), [pod(HEAD), pod(W0), pod(W1)], spec)


def tj_created() -> dict[str, Any]:
    return body("TrainingJob", tj_spec(), tj_plan(None, [], tj_spec()))


def tj_running_body() -> dict[str, Any]:
    return body("TrainingJob", tj_spec(), tj_running(tj_spec()))


def tj_unschedulable() -> dict[str, Any]:
    waiting = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pods = [pod(HEAD), pod(W0, "Pending", unschedulable=waiting), pod(W1, "Pending", unschedulable=waiting)]
    return body("TrainingJob", tj_spec(), tj_plan(tj_plan(None, [], tj_spec()), pods, tj_spec()))


def tj_restarting() -> dict[str, Any]:
    failed = pod(HEAD, "Failed", exit_code=1, message='{"error": "loss became NaN"}')
    return body("TrainingJob", tj_spec(), tj_plan(tj_running(tj_spec()), [failed, pod(W0), pod(W1)], tj_spec()))


def tj_succeeded() -> dict[str, Any]:
    model = {"uri": "s3://models/digits/v1", "sha256": "c" * 64, "metrics": {"val_accuracy": 0.97}}
    head = pod(HEAD, "Succeeded", exit_code=0, message=json.dumps({"model": model}))
    return body("TrainingJob", tj_spec(), tj_plan(tj_running(tj_spec()), [head, pod(W0), pod(W1)], tj_spec()))


def tj_failed() -> dict[str, Any]:
    status = tj_running(tj_spec()).model_copy(update={"charged_failures": 3})
    head = pod(HEAD, "Failed", exit_code=1, message='{"error": "CUDA error: device-side assert"}')
    return body("TrainingJob", tj_spec(), tj_plan(status, [head, pod(W0), pod(W1)], tj_spec()))


def tj_configuration_error() -> dict[str, Any]:
    head = pod(HEAD, "Failed", exit_code=64, message='{"error": "unknown dataset column"}')
    return body("TrainingJob", tj_spec(), tj_plan(tj_running(tj_spec()), [head, pod(W0), pod(W1)], tj_spec()))


def tj_invalid() -> dict[str, Any]:
    return body("TrainingJob", tj_spec(), tj_plan(None, [], tj_spec(), error="spec.workers.replicas: must be >= 1"))


def tj_suspended() -> dict[str, Any]:
    spec = tj_spec(suspend=True)
    return body("TrainingJob", spec, tj_plan(tj_running(tj_spec()), [pod(HEAD), pod(W0), pod(W1)], spec))


def tj_stalled() -> dict[str, Any]:
    spec = tj_spec(stallTimeoutSeconds=60)
    later = T0 + datetime.timedelta(seconds=120)
    return body("TrainingJob", spec, tj_plan(tj_running(spec), [pod(HEAD), pod(W0), pod(W1)], spec, at=later))


def tj_stale_generation() -> dict[str, Any]:
    obj = tj_succeeded()
    obj["metadata"]["generation"] = GENERATION + 1  # e.g. runPolicy edited, not yet seen by the operator
    return obj


def tj_new() -> dict[str, Any]:
    return body("TrainingJob", tj_spec(), None)


# --- ModelService statuses, from plan_modelservice -----------------------------------------------------
MS_OWNER = Owner("ModelService", "digits", "team-a", "uid-ms")
V1 = ServedModel(uri="s3://models/digits/v1", sha256="1" * 64)
V2 = ServedModel(uri="s3://models/digits/v2", sha256="2" * 64)


def ms_spec(model: ServedModel = V1, **changes: Any) -> dict[str, Any]:
    return {"model": {"uri": model.uri, "sha256": model.sha256}, "replicas": 2, **changes}


def ms_plan(
    spec: dict[str, Any],
    status: ModelServiceStatus | None = None,
    children: ms.Children | None = None,
    jobs: dict[str, dict[str, Any] | None] | None = None,
    error: str | None = None,
) -> Plan[ModelServiceStatus]:
    parsed = None if error else ModelServiceSpec.model_validate(spec)
    view = ms.ModelServiceView(MS_OWNER, GENERATION, parsed, error, status or ModelServiceStatus())
    return ms.plan_modelservice(view, ms.Observed(children or ms.Children(), jobs or {}), T0, "image:test")


def rolled_out(manifest: dict[str, Any], available: int | None = None, **status: Any) -> dict[str, Any]:
    """Play the Deployment controller: the manifest with its pods rolled out."""
    observed = json.loads(json.dumps(manifest))
    observed["metadata"]["generation"] = 1
    replicas = observed["spec"].get("replicas", 1)
    count = replicas if available is None else available
    observed["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": count,
        "availableReplicas": count,
        **status,
    }
    return observed


def serving(spec: dict[str, Any]) -> tuple[ModelServiceStatus, ms.Children]:
    first = ms_plan(spec)
    created = {manifest["kind"]: manifest for manifest in written_manifests(first)}
    children = ms.Children(
        deployment=rolled_out(created["Deployment"]),
        service=created["Service"],
        disruption_budget=created.get("PodDisruptionBudget"),
        autoscaler=created.get("HorizontalPodAutoscaler"),
    )
    return ms_plan(spec, first.status, children).status, children


def serving_pod(model: ServedModel, waiting: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "digits-7d9-x2",
            "labels": {"maas.dev/track": "stable"},
            "annotations": {"maas.dev/model-uri": model.uri, "maas.dev/model-sha256": model.sha256},
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "server", "restartCount": 4, "state": {"waiting": {"reason": waiting}}}],
        },
    }


def new_model_rolling(auto_rollback: bool = True) -> tuple[dict[str, Any], ModelServiceStatus, ms.Children]:
    """Serving V1, then the spec names V2: the Deployment is half way through rolling it out."""
    status, children = serving(ms_spec(V1))
    spec = ms_spec(V2, rollout={"autoRollback": auto_rollback})
    moving = ms_plan(spec, status, children)
    wanted = next(a.manifest for a in moving.actions if a.manifest["kind"] == "Deployment")  # type: ignore[union-attr]
    rolling = rolled_out(wanted, updatedReplicas=1)
    return spec, moving.status, ms.Children(**{**children.__dict__, "deployment": rolling})


def job(phase: str, model: ServedModel | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if model is not None:
        status["model"] = {"uri": model.uri, "sha256": model.sha256}
    if phase == "Failed":
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    return {"metadata": {"name": "digits", "uid": "uid-tj"}, "spec": {}, "status": status}


REF = {"model": {"trainingJobRef": {"name": "digits"}}, "replicas": 2}


def ms_created() -> dict[str, Any]:
    created = ms_plan(ms_spec())  # its children written: the status after them
    return body("ModelService", ms_spec(), created.status_after or created.status)


def ms_ready() -> dict[str, Any]:
    return body("ModelService", ms_spec(), serving(ms_spec())[0])


def ms_rolling_out() -> dict[str, Any]:
    spec, moving, children = new_model_rolling()
    return body("ModelService", spec, ms_plan(spec, moving, children).status)


def ms_waiting_for_job() -> dict[str, Any]:
    return body("ModelService", REF, ms_plan(REF, jobs={"digits": job("Running")}).status)


def ms_job_missing() -> dict[str, Any]:
    return body("ModelService", REF, ms_plan(REF, jobs={"digits": None}).status)


def ms_job_failed() -> dict[str, Any]:
    return body("ModelService", REF, ms_plan(REF, jobs={"digits": job("Failed")}).status)


def ms_checksum_mismatch() -> dict[str, Any]:
    spec = {**REF, "model": {"trainingJobRef": {"name": "digits"}, "sha256": "f" * 64}}
    return body("ModelService", spec, ms_plan(spec, jobs={"digits": job("Succeeded", V1)}).status)


def ms_rolled_back() -> dict[str, Any]:
    spec, moving, children = new_model_rolling()
    crashing = ms.Children(**{**children.__dict__, "pods": [serving_pod(V2, "CrashLoopBackOff")]})
    return body("ModelService", spec, ms_plan(spec, moving, crashing).status)


def ms_failed_without_rollback() -> dict[str, Any]:
    spec, moving, children = new_model_rolling(auto_rollback=False)
    stuck = ms.Children(**{**children.__dict__, "pods": [serving_pod(V2, "ImagePullBackOff")]})
    return body("ModelService", spec, ms_plan(spec, moving, stuck).status)


def ms_lost_a_pod() -> dict[str, Any]:
    status, children = serving(ms_spec())
    assert children.deployment is not None
    children.deployment["status"]["availableReplicas"] = 1
    return body("ModelService", ms_spec(), ms_plan(ms_spec(), status, children).status)


def ms_scaled_to_zero() -> dict[str, Any]:
    spec = ms_spec(replicas=0)
    return body("ModelService", spec, serving(spec)[0])


def ms_invalid() -> dict[str, Any]:
    return body("ModelService", ms_spec(), ms_plan(ms_spec(), error="spec.model: Field required").status)


def ms_stale_generation() -> dict[str, Any]:
    obj = ms_ready()
    obj["metadata"]["generation"] = GENERATION + 1  # a new model pushed to Git, not yet seen
    return obj


def ms_new() -> dict[str, Any]:
    return body("ModelService", ms_spec(), None)


# --- The expectations: (scenario, Argo CD health, message fragment, kstatus) -----------------------------
Scenario = tuple[Callable[[], dict[str, Any]], str, str, str]
TRAININGJOB: list[Scenario] = [
    (tj_new, "Progressing", "waiting for the operator", "Current"),  # kstatus cannot tell before a status
    (tj_created, "Progressing", "Starting", "InProgress"),
    (tj_running_body, "Progressing", "Running", "InProgress"),
    (tj_unschedulable, "Progressing", "Insufficient nvidia.com/gpu", "InProgress"),
    (tj_restarting, "Progressing", "loss became NaN", "InProgress"),
    (tj_succeeded, "Healthy", "model published at s3://models/digits/v1", "Current"),
    (tj_failed, "Degraded", "BackoffLimitExceeded", "Failed"),
    (tj_configuration_error, "Degraded", "unknown dataset column", "Failed"),
    (tj_invalid, "Degraded", "InvalidSpec", "Failed"),
    (tj_suspended, "Suspended", "runPolicy.suspend", "Current"),
    (tj_stalled, "Degraded", "no progress heartbeat", "Failed"),
    (tj_stale_generation, "Progressing", "generation 2", "InProgress"),
]
MODELSERVICE: list[Scenario] = [
    (ms_new, "Progressing", "waiting for the operator", "Current"),
    (ms_created, "Progressing", "Creating", "InProgress"),
    (ms_ready, "Healthy", "2/2 pods available", "Current"),
    (ms_rolling_out, "Progressing", "RollingOut", "InProgress"),
    (ms_waiting_for_job, "Progressing", "TrainingJobNotSucceeded", "InProgress"),
    (ms_job_missing, "Missing", "TrainingJobNotFound", "InProgress"),
    (ms_job_failed, "Degraded", "TrainingJobFailed", "Failed"),
    (ms_checksum_mismatch, "Degraded", "ChecksumMismatch", "Failed"),
    (ms_rolled_back, "Degraded", "CrashLoopBackOff", "Failed"),
    (ms_failed_without_rollback, "Degraded", "ImagePullBackOff", "Failed"),
    (ms_lost_a_pod, "Progressing", "InsufficientReplicas", "InProgress"),
    (ms_scaled_to_zero, "Suspended", "replicas is 0", "Current"),
    (ms_invalid, "Degraded", "InvalidSpec", "Failed"),
    (ms_stale_generation, "Progressing", "generation 2", "InProgress"),
]


def assert_kstatus_conditions_exclusive(obj: dict[str, Any]) -> None:
    """kstatus takes the first abnormal-true condition it meets: both True would make the list order decide."""
    found = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
    assert not (found.get("Reconciling") == "True" and found.get("Stalled") == "True"), found
    if "status" in obj:
        assert {"Reconciling", "Stalled"} <= set(found), "both kstatus conditions are always written"


def ids(scenarios: list[Scenario]) -> list[str]:
    return [scenario[0].__name__ for scenario in scenarios]


@pytest.mark.parametrize(("scenario", "health", "fragment", "verdict"), TRAININGJOB, ids=ids(TRAININGJOB))
def test_trainingjob_health(scenario: Callable[[], dict[str, Any]], health: str, fragment: str, verdict: str) -> None:
    obj = scenario()
    result = run_health_lua((ARGOCD / "trainingjob-health.lua").read_text(), obj)
    assert result["status"] == health and fragment in result["message"], result
    assert kstatus.compute(obj) == verdict, obj.get("status", {}).get("conditions")
    assert_kstatus_conditions_exclusive(obj)


@pytest.mark.parametrize(("scenario", "health", "fragment", "verdict"), MODELSERVICE, ids=ids(MODELSERVICE))
def test_modelservice_health(scenario: Callable[[], dict[str, Any]], health: str, fragment: str, verdict: str) -> None:
    obj = scenario()
    result = run_health_lua((ARGOCD / "modelservice-health.lua").read_text(), obj)
    assert result["status"] == health and fragment in result["message"], result
    assert kstatus.compute(obj) == verdict, obj.get("status", {}).get("conditions")
    assert_kstatus_conditions_exclusive(obj)


def test_argocd_snippet_carries_the_scripts_under_argocd_keys() -> None:
    """The argocd-cm patch is what users apply: it must hold exactly the tested scripts."""
    patch = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"] == {
        "resource.customizations.health.maas.dev_TrainingJob": (ARGOCD / "trainingjob-health.lua").read_text(),
        "resource.customizations.health.maas.dev_ModelService": (ARGOCD / "modelservice-health.lua").read_text(),
    }


def test_the_lua_sandbox_is_as_strict_as_argo_cds() -> None:
    """A script that used the string library would pass here but fail in Argo CD: make sure it fails here."""
    with pytest.raises(Exception, match="string"):
        run_health_lua("return {status = string.upper('x')}", {})
