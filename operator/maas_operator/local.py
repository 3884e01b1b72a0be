"""`maas run`: a TrainingJob, then a ModelService serving its model, on this machine.

No cluster needed. The pods come from the operator's own builders and planner; this module
plays the kubelet: it starts each container's command as a local process with the
container's environment, changing only what differs outside a cluster (addresses, ports,
volumes under a work directory, Secrets read from the same files).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import attempt_children, storage_wiring
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
STOP_GRACE_SECONDS = 60.0


class RunError(Exception):
    """The local run cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def secrets_of(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The Secrets defined in the same files, decoded: name -> key -> value."""
    found: dict[str, dict[str, str]] = {}
    for document in documents:
        if document.get("kind") != "Secret":
            continue
        values = {key: base64.b64decode(value).decode() for key, value in (document.get("data") or {}).items()}
        values.update({key: str(value) for key, value in (document.get("stringData") or {}).items()})
        found[(document.get("metadata") or {}).get("name", "")] = values
    return found


class LocalKubelet:
    """Runs containers as local processes under one work directory, and stops them all at the end."""

    def __init__(self, workdir: pathlib.Path, secrets: Mapping[str, Mapping[str, str]], out: TextIO) -> None:
        self.workdir = workdir.resolve()
        self.secrets = secrets
        self.out = out
        self.processes: list[subprocess.Popen[bytes]] = []
        self.volumes = self.workdir / "volumes"
        self.volumes.mkdir(parents=True, exist_ok=True)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def localize(self, value: str) -> str:
        """Claims mounted under PVC_MOUNT_ROOT in a pod live under the work directory here."""
        return value.replace(f"file://{contract.PVC_MOUNT_ROOT}/", f"file://{self.volumes}/")

    def environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            env.update(self._secret(source["secretRef"]["name"]))
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = self.localize(str(variable["value"]))
                continue
            reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if reference is None:
                raise RunError(f"env {variable['name']}: only values and secretKeyRef work outside a cluster")
            secret = self._secret(reference["name"])
            if reference["key"] not in secret:
                raise RunError(f"env {variable['name']}: Secret {reference['name']} has no key {reference['key']}")
            env[variable["name"]] = secret[reference["key"]]
        return env

    def _secret(self, name: str) -> Mapping[str, str]:
        if name in self.secrets:
            return self.secrets[name]
        raise RunError(f"Secret {name} is referenced but not defined in the files given to `maas run`")

    def start(self, name: str, container: Mapping[str, Any], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable if part == "python" else part for part in container["command"]]
        command += list(container.get("args") or [])
        root = pathlib.Path(__file__).resolve().parents[2]
        path = os.pathsep.join([str(root / "operator"), str(root / "workloads"), os.environ.get("PYTHONPATH", "")])
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.processes.append(process)
        self.say(f"started {name} (pid {process.pid}, log {self.workdir / f'{name}.log'})")
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)


@contextmanager
def local_kubelet(
    workdir: pathlib.Path, secrets: Mapping[str, Mapping[str, str]], out: TextIO
) -> Iterator[LocalKubelet]:
    kubelet = LocalKubelet(workdir, secrets, out)
    try:
        yield kubelet
    finally:
        kubelet.stop_all()


def _get_json(url: str, token: str | None = None, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
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
                "HOME": str(kubelet.workdir),
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        processes[name] = kubelet.start(name, container, env)
    head_name = pods[0]["metadata"]["name"]
    head = processes[head_name]
    last = ""
    while head.poll() is None:
        time.sleep(POLL_SECONDS)
        try:
            report = _get_json(f"http://127.0.0.1:{progress_port}{contract.PROGRESS_PATH}")
        except (OSError, ValueError):
            continue
        line = _progress_line(report)
        if line != last:
            kubelet.say(line)
            last = line
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


def _progress_line(report: Mapping[str, Any]) -> str:
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((report.get("metrics") or {}).items()))
    return (
        f"progress: attempt {report.get('attempt')}, epoch {report.get('epoch')}, "
        f"step {report.get('step')}/{report.get('totalSteps')} {metrics}"
    )


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
) -> dict[str, Any]:
    """Start the stable pod of a ModelService, wait until it is ready, send it `example` (or zeros)."""
    metadata = document.get("metadata") or {}
    owner = Owner("ModelService", metadata.get("name", "local"), NAMESPACE, str(uuid.uuid4()))
    spec = ModelServiceSpec.model_validate(document.get("spec") or {})
    view = ModelServiceView(owner, 1, spec, None, ModelServiceStatus())
    plan = plan_modelservice(view, Observed(training_jobs=training_jobs), datetime.datetime.now(datetime.UTC), image)
    deployment = next((manifest for manifest in written_manifests(plan) if manifest["kind"] == "Deployment"), None)
    if deployment is None:
        resolved = next(c for c in plan.status.conditions if c.type == "ModelResolved")
        raise RunError(f"ModelService {owner.name} has nothing to serve: {resolved.message}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    env = kubelet.environment(container)
    env.update(
        {
            contract.ENV_PORT: str(port),
            contract.ENV_HOST: "127.0.0.1",
            contract.ENV_MODEL_CACHE_DIR: str(kubelet.workdir / "model-cache"),
        }
    )
    server = kubelet.start(f"{owner.name}-server", container, env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _ready(url + contract.HEALTH_READY_PATH):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RunError(f"the server did not become ready; see {kubelet.workdir / (owner.name + '-server.log')}")
        time.sleep(0.5)
    token = env.get(contract.ENV_AUTH_TOKEN)
    metadata_url = f"{url}/v2/models/{owner.name}"
    description = _get_json(metadata_url, token)
    sent = example if fits(description, example) else None
    answer = _get_json(f"{metadata_url}/infer", token, inference_request(description, sent))
    outputs = {o["name"]: o.get("data", [])[:10] for o in answer.get("outputs", [])}
    kubelet.say(f"serving {plan.status.model.uri if plan.status.model else '?'} at {url} (OIP v2, KServe v1)")
    kubelet.say(describe_answer(answer, sent))
    if keep_serving is not None:
        keep_serving(url)
    code = kubelet.stop(server)
    kubelet.say(f"server drained and exited with {code}")
    return {"url": url, "outputs": outputs, "exitCode": code}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def preflight(kubelet: LocalKubelet, service: Mapping[str, Any]) -> None:
    """Refuse at once, not after training, a ModelService whose Secrets are not in the files."""
    spec = ModelServiceSpec.model_validate(service.get("spec") or {})
    references = [spec.auth.token_secret_ref] if spec.auth else []
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
            served = serve(kubelet, service, {name: trained}, serving_image, keep_serving, example)
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
