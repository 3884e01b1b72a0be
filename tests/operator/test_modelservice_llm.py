"""ModelServices that serve causal LMs: the engine default, the settings mapped onto each
engine, the init container, probes, drain, autoscaling, and `maas render` for both engines."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from maas_operator.api.common import LocalObjectReference
from maas_operator.api.llm import VLLM_IMAGE
from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.builders import llm
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_workloads import contract
from tests.operator.cel import violations
from tests.operator.test_modelservice_api import SPEC_SCHEMA
from tests.operator.validation import assert_valid_objects

REPO = pathlib.Path(__file__).resolve().parents[2]
OWNER = Owner("ModelService", "assistant", "team-a", "5b1c1f0e-0000-4000-8000-000000000009")
IMAGE = "registry.example/maas-workloads:test"
MODEL = ServedModel(
    uri="s3://models/assistant/v1", sha256="c" * 64, secret_ref=LocalObjectReference(name="s3-credentials")
)


def example(name: str) -> dict[str, Any]:
    documents = yaml.safe_load_all((REPO / "examples" / name).read_text())
    return dict(next(d for d in documents if d["kind"] == "ModelService")["spec"])


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    parsed = ModelServiceSpec.model_validate(spec)
    return build.deployment(OWNER, parsed, MODEL, "stable", IMAGE, None)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container["env"]}


@pytest.mark.parametrize(
    ("changes", "engine"),
    [
        ({}, "builtin"),  # CPU: always the builtin engine
        ({"resources": {"gpu": 1}}, "vllm"),  # an LLM on GPUs: vLLM
        ({"resources": {"gpu": 1}, "generation": None}, "builtin"),  # a tensor model on GPUs
        ({"resources": {"gpu": 1}, "engine": "builtin"}, "builtin"),
        ({"engine": "vllm"}, "vllm"),  # vLLM's CPU build, with its own image
    ],
)
def test_engine_default_for_cpu_and_gpu(changes: dict[str, Any], engine: str) -> None:
    spec = {"model": {"uri": "s3://models/assistant/v1"}, "generation": {}, **changes}
    assert ModelServiceSpec.model_validate(spec).effective_engine == engine


def test_examples_are_valid_everywhere() -> None:
    for name in ("llm-modelservice.yaml", "llm-modelservice-vllm.yaml"):
        ModelServiceSpec.model_validate(example(name))
        assert violations(SPEC_SCHEMA, example(name)) == [], name


def test_builtin_engine_gets_the_settings_and_the_verified_local_copy() -> None:
    spec = pod(example("llm-modelservice.yaml"))
    (fetch,) = spec["initContainers"]
    assert fetch["command"] == list(contract.FETCH_COMMAND) and fetch["image"] == IMAGE
    fetch_env = env_of(fetch)
    destination = f"{contract.MODEL_CACHE_MOUNT}/{'c' * 64}"
    assert fetch_env[contract.ENV_FETCH_DESTINATION] == destination
    assert fetch_env[contract.ENV_MODEL_SHA256] == "c" * 64 and fetch_env[contract.ENV_MODEL_URI] == MODEL.uri
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    server = spec["containers"][0]
    env = env_of(server)
    assert env[contract.ENV_MODEL_URI] == f"file://{destination}"
    assert env[contract.ENV_MAX_MODEL_LEN] == "2048" and env[contract.ENV_MAX_NUM_SEQS] == "16"
    assert env[contract.ENV_KV_CACHE_BYTES] == str(2**30) and env[contract.ENV_DTYPE] == "auto"
    assert env[contract.ENV_MAX_QUEUE_SIZE] == "64" and env[contract.ENV_DRAIN_SECONDS] == "120"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # the whole progress deadline


def test_vllm_engine_renders_the_official_server() -> None:
    spec_document = example("llm-modelservice-vllm.yaml")
    spec = pod(spec_document)
    server = spec["containers"][0]
    assert server["image"] == VLLM_IMAGE and server["command"] == list(llm.VLLM_COMMAND)
    args = server["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    directory = f"{contract.MODEL_CACHE_MOUNT}/{'c' * 64}"
    assert flag("--model") == directory and flag("--served-model-name") == "assistant"
    assert flag("--tensor-parallel-size") == "2" and flag("--max-model-len") == "8192"
    assert flag("--max-num-seqs") == "128" and flag("--gpu-memory-utilization") == "0.9"
    assert flag("--port") == "8080"
    # Drain: vLLM's shutdown timeout is what the grace period leaves after the preStop sleep.
    grace, pre_stop = spec["terminationGracePeriodSeconds"], server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert int(flag("--shutdown-timeout")) == grace - pre_stop - build.SHUTDOWN_MARGIN_SECONDS == 300
    assert "--enable-lora" in args and flag("--lora-modules") == f"assistant-support={directory}-lora-assistant-support"
    env = env_of(server)
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "assistant-token", "key": "token"}}
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and env["HF_HUB_OFFLINE"] == "1"
    assert "envFrom" not in server  # storage credentials stay in the init container
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["maas-shm"]["emptyDir"]["medium"] == "Memory"
    assert volumes[llm.MODEL_CACHE_VOLUME] == {
        "name": llm.MODEL_CACHE_VOLUME,
        "persistentVolumeClaim": {"claimName": "model-cache"},
    }
    assert {"name": "maas-shm", "mountPath": "/dev/shm"} in server["volumeMounts"]
    (fetch,) = spec["initContainers"]
    adapters = json.loads(env_of(fetch)[contract.ENV_LORA_ADAPTERS])
    assert adapters == [{"name": "assistant-support", "uri": "s3://models/assistant-support-lora/v3"}]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"


def test_vllm_on_cpus_bounds_its_kv_cache() -> None:
    document = {**example("llm-modelservice.yaml"), "engine": "vllm"}
    server = pod(document)["containers"][0]
    assert env_of(server)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert (
        "--gpu-memory-utilization" not in server["args"]
        and server["args"][server["args"].index("--dtype") + 1] == "auto"
    )


def test_llms_autoscale_on_the_waiting_queue_never_cpu_by_default() -> None:
    spec = ModelServiceSpec.model_validate(example("llm-modelservice.yaml"))
    assert spec.autoscaling is not None
    metric = build.horizontal_pod_autoscaler(OWNER, spec.autoscaling, llm_service=spec.is_llm)["spec"]["metrics"][0]
    assert metric["pods"]["metric"]["name"] == build.WAITING_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "5"}
    kv = ModelServiceSpec.model_validate(
        {**example("llm-modelservice.yaml"), "autoscaling": {"maxReplicas": 3, "metric": "kvCache"}}
    )
    assert kv.autoscaling is not None
    kv_metric = build.horizontal_pod_autoscaler(OWNER, kv.autoscaling, llm_service=True)["spec"]["metrics"][0]
    assert kv_metric["pods"] == {
        "metric": {"name": build.KV_CACHE_METRIC},
        "target": {"type": "AverageValue", "averageValue": "800m"},
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"generation": {"loraAdapters": [{"name": "a", "uri": "s3://m/a"}]}}, "loraAdapters needs engine: vllm"),
        ({"autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "kvCache", "target": 120}}, "at most 100"),
    ],
)
def test_bad_llm_specs_are_refused_by_both(changes: dict[str, Any], message: str) -> None:
    document = {**example("llm-modelservice.yaml"), **changes}
    with pytest.raises(ValidationError):
        ModelServiceSpec.model_validate(document)
    assert any(message in violation for violation in violations(SPEC_SCHEMA, document)), message


def test_generation_limits_are_in_the_schema() -> None:
    generation = SPEC_SCHEMA["properties"]["generation"]["properties"]
    assert generation["maxNumSeqs"]["minimum"] == 1 and generation["gpuMemoryUtilization"]["maximum"] == 1
    with pytest.raises(ValidationError, match=r"max_num_seqs|maxNumSeqs"):
        ModelServiceSpec.model_validate({**example("llm-modelservice.yaml"), "generation": {"maxNumSeqs": 0}})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llm-modelservice.yaml", "llm-modelservice-vllm.yaml"])
def test_maas_render_is_valid_kubernetes(name: str) -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "maas_operator.cli", "render", "-f", str(REPO / "examples" / name)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    objects = list(yaml.safe_load_all(rendered.stdout))
    assert {obj["kind"] for obj in objects} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert_valid_objects(objects)
