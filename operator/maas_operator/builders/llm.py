"""Pod pieces of a ModelService that serves a causal LM, for either engine (pure functions).

Both engines start from local disk: an init container running our storage code fetches the
artifact into the model cache (an emptyDir, or a PVC that replicas and restarts share) and
verifies every file's sha256, then the engine loads it from there. Probes use vLLM's
`/health` (both engines answer it), with a startup budget of the whole progress deadline.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Final

from maas_operator.api.llm import GenerationSpec
from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.api.quantity import parse_quantity
from maas_operator.builders import tls
from maas_operator.builders.meta import Owner
from maas_operator.builders.pods import (
    CONTAINER_SECURITY_CONTEXT,
    SHARED_MEMORY,
    OperatorVolume,
    container_resources,
    env_list,
)
from maas_workloads import contract
from maas_workloads.artifact import VARIANTS_DIR

VLLM_COMMAND: Final = ("python3", "-m", "vllm.entrypoints.openai.api_server")
"""Works in every vLLM image (the `vllm` CLI needs a distribution named vllm, which CPU builds lack)."""
MODEL_CACHE_VOLUME: Final = "maas-model-cache"
"""The operator's model-cache volume (builders.modelservice.MODEL_CACHE), replaced by a PVC when asked."""
SHM_SIZE: Final = "1Gi"
"""Memory-backed /dev/shm for vLLM (NCCL between tensor-parallel GPUs; KServe's LLM template size)."""
PROBE_PERIOD_SECONDS: Final = 10


def quantity_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity (`2Gi`, `512M`, `1e9`)."""
    return int(parse_quantity(quantity))


def model_directory(model: ServedModel) -> str:
    """Where the init container puts the verified artifact: keyed by its pinned sha256 (so a shared
    cache holds each version once), else by its URI; a variant (only its files are fetched) apart."""
    key = model.sha256 or hashlib.sha256(model.uri.encode()).hexdigest()[:32]
    return f"{contract.MODEL_CACHE_MOUNT}/{key}{f'-{model.variant}' if model.variant else ''}"


def fetch_container(
    spec: ModelServiceSpec, model: ServedModel, uri: str, image: str, mounts: list[Any]
) -> dict[str, Any]:
    """The init container: our storage code fetches and verifies the model (and adapters) into the cache."""
    env = {
        contract.ENV_MODEL_URI: uri,
        contract.ENV_FETCH_DESTINATION: model_directory(model),
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
    }
    if model.sha256:
        env[contract.ENV_MODEL_SHA256] = model.sha256
    if model.variant:
        env[contract.ENV_MODEL_VARIANT] = model.variant
    generation = spec.generation
    if generation is not None and generation.lora_adapters:
        env[contract.ENV_LORA_ADAPTERS] = json.dumps([adapter.to_wire() for adapter in generation.lora_adapters])
    resources = container_resources(spec.resources.model_copy(update={"gpu": None}))
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": image,
        "command": list(contract.FETCH_COMMAND),
        "env": env_list(env, []),
        "resources": resources,
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if model.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": model.secret_ref.name}}]
    return container


def cache_volume(spec: ModelServiceSpec) -> dict[str, Any]:
    cache = spec.model_cache
    if cache.pvc is not None:
        return {"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.pvc.name}}
    empty_dir: dict[str, Any] = {"sizeLimit": cache.size_limit} if cache.size_limit else {}
    return {"name": MODEL_CACHE_VOLUME, "emptyDir": empty_dir}


def builtin_env(generation: GenerationSpec) -> dict[str, str]:
    """The generation settings as the built-in server's variables."""
    env = {
        contract.ENV_MAX_NUM_SEQS: str(generation.max_num_seqs),
        contract.ENV_DTYPE: generation.dtype,
    }
    if generation.max_model_len is not None:
        env[contract.ENV_MAX_MODEL_LEN] = str(generation.max_model_len)
    if generation.kv_cache_memory is not None:
        env[contract.ENV_KV_CACHE_BYTES] = str(quantity_bytes(generation.kv_cache_memory))
    if generation.max_num_batched_tokens is not None:
        env[contract.ENV_MAX_NUM_BATCHED_TOKENS] = str(generation.max_num_batched_tokens)
    return env


def health_probes(spec: ModelServiceSpec) -> dict[str, Any]:
    """startup (the whole progress deadline: weights take minutes to load), readiness and liveness on /health."""

    def probe(period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": tls.http_get(spec, contract.LLM_HEALTH_PATH),
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 5,
        }

    startup_failures = max(1, math.ceil(spec.rollout.progress_deadline_seconds / PROBE_PERIOD_SECONDS))
    return {
        "startupProbe": probe(PROBE_PERIOD_SECONDS, startup_failures),
        "readinessProbe": probe(5, 2),
        "livenessProbe": probe(PROBE_PERIOD_SECONDS, 3),
    }


def vllm_args(spec: ModelServiceSpec, served_name: str, model: ServedModel) -> list[str]:
    """`vllm serve` flags from the generation settings; --shutdown-timeout is the drain time the
    grace period leaves after the preStop sleep (server.timeoutSeconds)."""
    generation = spec.generation or GenerationSpec()
    directory = model_directory(model)
    args = [
        "--model", f"{directory}/{VARIANTS_DIR}/{model.variant}" if model.variant else directory,
        "--served-model-name", served_name,
        "--host", "0.0.0.0",
        "--port", str(spec.server.port),
        "--tensor-parallel-size", str(max(1, spec.resources.gpu or 0)),
        "--max-num-seqs", str(generation.max_num_seqs),
        "--dtype", generation.dtype,
        "--shutdown-timeout", str(spec.server.timeout_seconds),
        "--generation-config", "auto",
    ]  # fmt: skip
    if generation.max_model_len is not None:
        args += ["--max-model-len", str(generation.max_model_len)]
    if generation.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(generation.max_num_batched_tokens)]
    if spec.resources.gpu:
        if generation.kv_cache_memory is not None:
            args += ["--kv-cache-memory-bytes", str(quantity_bytes(generation.kv_cache_memory))]
        else:
            args += ["--gpu-memory-utilization", str(generation.gpu_memory_utilization)]
    if model.variant:
        # The int8 variant is a torchao checkpoint (quantization_config in its config.json).
        args += ["--quantization", "torchao"]
    if generation.lora_adapters:
        modules = [f"{adapter.name}={directory}-lora-{adapter.name}" for adapter in generation.lora_adapters]
        args += ["--enable-lora", "--max-loras", str(len(modules)), "--lora-modules", *modules]
    return args + tls.vllm_args(spec) + list(spec.vllm.extra_args)


def vllm_env(spec: ModelServiceSpec) -> dict[str, str]:
    generation = spec.generation or GenerationSpec()
    env = {
        # Read-only root filesystem: every cache goes to the /tmp emptyDir; nothing is downloaded.
        "HOME": "/tmp",
        "HF_HOME": "/tmp/huggingface",
        "VLLM_CACHE_ROOT": "/tmp/vllm",
        "XDG_CACHE_HOME": "/tmp/cache",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if not spec.resources.gpu:
        # vLLM's CPU backend sizes its KV cache from this (GiB), not from a memory fraction.
        size = quantity_bytes(generation.kv_cache_memory) if generation.kv_cache_memory else 2**30
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(size / 2**30)))
    return env


def serve_llm(
    owner: Owner,
    spec: ModelServiceSpec,
    model: ServedModel,
    pod_spec: dict[str, Any],
    uri: str,
    model_volumes: list[OperatorVolume],
    default_image: str,
) -> None:
    """Turn a serving pod spec (built for the builtin server) into a causal LM's, in place: the
    init container fetches and verifies the model, then the chosen engine serves it from the cache."""
    container = pod_spec["containers"][0]
    model_mounts = [volume.mount for volume in model_volumes]  # only the init container reads the source
    mounts = [mount for mount in container["volumeMounts"] if mount not in model_mounts]
    cache_mount = next(mount for mount in mounts if mount["mountPath"] == contract.MODEL_CACHE_MOUNT)
    tmp_mount = next(mount for mount in mounts if mount["mountPath"] == "/tmp")
    if cache_mount["name"] == MODEL_CACHE_VOLUME:  # ours, not a volume the user mounted there
        pod_spec["volumes"] = [
            cache_volume(spec) if volume["name"] == MODEL_CACHE_VOLUME else volume for volume in pod_spec["volumes"]
        ]
    image = spec.image or default_image
    pod_spec["initContainers"] = [fetch_container(spec, model, uri, image, [tmp_mount, cache_mount, *model_mounts])]
    container.update(health_probes(spec))
    if spec.effective_engine == "builtin":
        local = f"file://{model_directory(model)}"
        env = [
            {**variable, "value": local} if variable["name"] == contract.ENV_MODEL_URI else variable
            for variable in container["env"]
        ]
        present = {variable["name"] for variable in env}  # the user's own values win
        extra = builtin_env(spec.generation) if spec.generation is not None else {}
        container["env"] = [{"name": k, "value": v} for k, v in extra.items() if k not in present] + env
        container["volumeMounts"] = mounts
        return
    # vLLM: its own image and flags, the same port, probes, auth header and drain.
    container["image"] = spec.vllm.image
    container["command"] = list(VLLM_COMMAND)
    container["args"] = vllm_args(spec, owner.name, model)
    container["env"] = env_list(vllm_env(spec), spec.env)
    if spec.auth is not None:
        secret = spec.auth.token_secret_ref
        reference = {"secretKeyRef": {"name": secret.name, "key": secret.key}}
        container["env"].append({"name": "VLLM_API_KEY", "valueFrom": reference})
    container.pop("envFrom", None)  # the storage credentials are the init container's only
    container["volumeMounts"] = [{**m, "readOnly": True} if m is cache_mount else m for m in mounts]
    if not any(mount["mountPath"] == SHARED_MEMORY.mount_path for mount in mounts):
        shm = {**SHARED_MEMORY.volume, "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}
        pod_spec["volumes"].append(shm)
        container["volumeMounts"].append(SHARED_MEMORY.mount)
