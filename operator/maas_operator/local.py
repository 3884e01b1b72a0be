"""`maas run`: a TrainingJob, then a ModelService serving its model, on this machine.

No cluster needed. The pods come from the operator's own builders and planner; this module
plays the kubelet (with `local_kubelet`): it starts each container's command as a local process
with the container's environment, changing only what differs outside a cluster (addresses,
ports, volumes under a work directory, Secrets read from the same files).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from maas_operator import local_llm
from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import attempt_children, storage_wiring
from maas_operator.local_kubelet import LocalKubelet, RunError, free_port, local_kubelet, secrets_of
from maas_operator.local_progress import ProgressDisplay
from maas_operator.local_report import (
    Example,
    describe_answer,
    fits,
    held_out_example,
    inference_request,
    where_things_are,
)
from maas_operator.status.modelservice import ModelServiceView, Observed, plan_modelservice
from maas_operator.status.plan import written_manifests
from maas_workloads import contract

NAMESPACE = "local"
READY_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 2.0


def _get_json(url: str, token: str | None = None, body: Any = None, context: ssl.SSLContext | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return json.loads(response.read())


def train(kubelet: LocalKubelet, document: Mapping[str, Any], image: str) -> dict[str, Any]:
    """Run the first attempt of a TrainingJob; its `status`, as the operator would record it."""
    metadata = document.get("metadata") or {}
    owner = Owner("TrainingJob", metadata.get("name", "local"), NAMESPACE, str(uuid.uuid4()))
    spec = TrainingJobSpec.model_validate(document.get("spec") or {})
    pods = [child for child in attempt_children(owner, spec, 1, image) if child["kind"] == "Pod"]
    gcs_port, progress_port = free_port(), free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        head = name.endswith("-head")
        env = kubelet.environment(container)
        env.update(
            {
                contract.ENV_HEAD_ADDRESS: f"127.0.0.1:{gcs_port}",
                contract.ENV_PROGRESS_PORT: str(progress_port),
                contract.ENV_TERMINATION_LOG: str(kubelet.workdir / f"{name}.termination-log"),
                contract.ENV_RAY_START_ARGS: _ray_start_args(head),
                contract.ENV_PVC_MOUNT_ROOT: str(kubelet.volumes),
                "HOME": str(kubelet.workdir),
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        processes[name] = kubelet.start(name, container, env)
    head_name = pods[0]["metadata"]["name"]
    head = processes[head_name]
    display = ProgressDisplay(kubelet.out)
    while head.poll() is None:
        time.sleep(POLL_SECONDS)
        try:
            display.update(_get_json(f"http://127.0.0.1:{progress_port}{contract.PROGRESS_PATH}"))
        except (OSError, ValueError):
            continue
    display.finish()
    for name, process in processes.items():
        if name != head_name:
            kubelet.stop(process)
    log = kubelet.workdir / f"{head_name}.termination-log"
    message = json.loads(log.read_text()) if log.exists() else {}
    if head.returncode != contract.ExitCode.SUCCESS:
        detail = message.get("error") or f"see {kubelet.workdir / (head_name + '.log')}"
        raise RunError(f"training failed with exit code {head.returncode}: {detail}")
    model = message.get("model") or {}
    kubelet.say(f"trained: {model.get('uri')} (sha256 {model.get('sha256')}), metrics {model.get('metrics')}")
    for variant in model.get("variants") or []:
        published = "published" if variant.get("published") else "not published"
        kubelet.say(f"variant {variant.get('name')}: {published}: {variant.get('message')}")
    return {
        "metadata": {"name": owner.name, "uid": owner.uid},
        "spec": spec.to_wire(),
        "status": {"phase": "Succeeded", "model": model},
    }


def _ray_start_args(head: bool) -> str:
    """Several Ray nodes on one machine need their own temp dirs and ports."""
    arguments = [
        f"--temp-dir={tempfile.mkdtemp(prefix='ray-', dir='/tmp')}",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=200000000",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]
    if head:
        arguments += ["--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
    return " ".join(arguments)


def serve(
    kubelet: LocalKubelet,
    document: Mapping[str, Any],
    training_jobs: Mapping[str, dict[str, Any] | None],
    image: str,
    keep_serving: Callable[[str], None] | None = None,
    example: Example | None = None,
    question: local_llm.Question | None = None,
) -> dict[str, Any]:
    """Start the stable pod of a ModelService, wait until it is ready, send it `example` (or zeros),
    or for a language model `question` through the OpenAI API."""
    metadata = document.get("metadata") or {}
    owner = Owner("ModelService", metadata.get("name", "local"), NAMESPACE, str(uuid.uuid4()))
    spec = ModelServiceSpec.model_validate(document.get("spec") or {})
    view = ModelServiceView(owner, 1, spec, None, ModelServiceStatus())
    plan = plan_modelservice(view, Observed(training_jobs=training_jobs), datetime.datetime.now(datetime.UTC), image)
    deployment = next((manifest for manifest in written_manifests(plan) if manifest["kind"] == "Deployment"), None)
    if deployment is None:
        resolved = next(c for c in plan.status.conditions if c.type == "ModelResolved")
        raise RunError(f"ModelService {owner.name} has nothing to serve: {resolved.message}")
    pod_spec = deployment["spec"]["template"]["spec"]
    for init in pod_spec.get("initContainers") or []:  # e.g. fetching and verifying an LLM's files
        kubelet.run_to_completion(f"{owner.name}-{init['name']}", init)
    container = pod_spec["containers"][0]
    port = free_port()
    kubelet.mount_secrets(pod_spec, container)
    env = kubelet.environment(container)
    env.update(
        {
            contract.ENV_PORT: str(port),
            contract.ENV_HOST: "127.0.0.1",
            contract.ENV_MODEL_CACHE_DIR: str(kubelet.workdir / "model-cache"),
        }
    )
    server = kubelet.start(f"{owner.name}-server", container, env)
    context = _client_context(env)
    url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _ready(url + contract.HEALTH_READY_PATH, context):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RunError(f"the server did not become ready; see {kubelet.workdir / (owner.name + '-server.log')}")
        time.sleep(0.5)
    token = env.get(contract.ENV_AUTH_TOKEN)
    served = plan.status.model.uri if plan.status.model else "?"
    if question is not None and local_llm.is_causal_lm(env.get(contract.ENV_MODEL_URI, "")):
        kubelet.say(f"serving {served} at {url} (OpenAI API)")
        model, text = local_llm.ask(url, token, question, kubelet.out, context)
        outputs: dict[str, Any] = {"answer": text}
        for line in local_llm.try_more(url, model, token):
            kubelet.say(line)
    else:
        metadata_url = f"{url}/v2/models/{owner.name}"
        description = _get_json(metadata_url, token, context=context)
        sent = example if fits(description, example) else None
        answer = _get_json(f"{metadata_url}/infer", token, inference_request(description, sent), context)
        outputs = {o["name"]: o.get("data", [])[:10] for o in answer.get("outputs", [])}
        kubelet.say(f"serving {served} at {url} (OIP v2, KServe v1)")
        kubelet.say(describe_answer(answer, sent))
    if keep_serving is not None:
        keep_serving(url)
    code = kubelet.stop(server)
    kubelet.say(f"server drained and exited with {code}")
    return {"url": url, "outputs": outputs, "exitCode": code}


def _client_context(env: Mapping[str, str]) -> ssl.SSLContext | None:
    """For a server with `server.tls`: trust the Secret's ca.crt, or its tls.crt when it has none (a
    self-signed certificate). The chain is verified, the name is not: the certificate names the
    cluster's Service, and this client reaches its own child process at 127.0.0.1."""
    cert = env.get(contract.ENV_TLS_CERT_FILE)
    if cert is None:
        return None
    ca = pathlib.Path(cert).with_name("ca.crt")
    context = ssl.create_default_context(cafile=str(ca if ca.exists() else cert))
    context.check_hostname = False
    return context


def _ready(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLCertVerificationError):
            raise RunError(
                f"the server's certificate does not verify ({error.reason.verify_message}): give the TLS Secret "
                "a ca.crt key with the certificate of the CA that signed tls.crt"
            ) from None
        return False
    except OSError:
        return False


def preflight(kubelet: LocalKubelet, service: Mapping[str, Any]) -> None:
    """Refuse at once, not after training, a ModelService whose Secrets are not in the files."""
    spec = ModelServiceSpec.model_validate(service.get("spec") or {})
    references = [spec.auth.token_secret_ref] if spec.auth else []
    if spec.server.tls is not None:
        name = spec.server.tls.secret_ref.name
        missing = [key for key in (contract.TLS_CERT_KEY, contract.TLS_KEY_KEY) if key not in kubelet.secret(name)]
        if missing:
            raise RunError(
                f"spec.server.tls.secretRef: Secret {name} has no {' or '.join(missing)}; "
                "a kubernetes.io/tls Secret holds tls.crt (the certificate chain) and tls.key (its key)"
            )
    container = {
        "env": [{"name": f"SECRET_{n}", "valueFrom": {"secretKeyRef": r.to_wire()}} for n, r in enumerate(references)],
        "envFrom": [{"secretRef": {"name": spec.model.secret_ref.name}}] if spec.model.secret_ref else [],
    }
    kubelet.environment(container)


def default_modelservice(job: str) -> dict[str, Any]:
    """Serves the TrainingJob's model when the files define no ModelService for it."""
    return {
        "apiVersion": f"{contract.API_GROUP}/{contract.API_VERSION}",
        "kind": "ModelService",
        "metadata": {"name": job},
        "spec": {"model": {"trainingJobRef": {"name": job}}, "replicas": 1},
    }


def run(
    documents: list[dict[str, Any]],
    workdir: pathlib.Path,
    training_image: str,
    serving_image: str,
    out: TextIO = sys.stdout,
    keep_serving: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the first TrainingJob of the documents, then serve it with its ModelService."""
    jobs = [d for d in documents if d.get("kind") == "TrainingJob"]
    if not jobs:
        raise RunError("no TrainingJob in the files given to `maas run`")
    job = jobs[0]
    name = (job.get("metadata") or {}).get("name", "local")
    services = [
        d
        for d in documents
        if d.get("kind") == "ModelService"
        and ((d.get("spec") or {}).get("model") or {}).get("trainingJobRef", {}).get("name") == name
    ]
    service = services[0] if services else default_modelservice(name)
    spec = TrainingJobSpec.model_validate(job.get("spec") or {})
    trained: dict[str, Any] = {}
    with local_kubelet(workdir, secrets_of(documents), out) as kubelet:
        try:
            preflight(kubelet, service)
            trained = train(kubelet, job, training_image)
            example = _example(kubelet, spec)
            question = local_llm.held_out_question(spec)
            served = serve(kubelet, service, {name: trained}, serving_image, keep_serving, example, question)
        finally:
            locations = storage_wiring(spec).env
            checkpoints = locations.get(contract.ENV_CHECKPOINT_URI)
            artifact = ((trained.get("status") or {}).get("model") or {}).get("uri")
            for line in where_things_are(
                kubelet.workdir, kubelet.localize(checkpoints) if checkpoints else None, artifact
            ):
                kubelet.say(line)
    return {"model": trained["status"]["model"], **served}


def _example(kubelet: LocalKubelet, spec: TrainingJobSpec) -> Example | None:
    try:
        return held_out_example(spec)
    except Exception as error:  # failing to load the data (e.g. from s3://) only costs the example
        kubelet.say(f"no held-out example ({error}); sending an all-zero input")
        return None
