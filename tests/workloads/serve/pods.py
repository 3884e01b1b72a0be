"""The serving pod exactly as the ModelService operator builds it, for tests that run its server here."""

from __future__ import annotations

import pathlib
from typing import Any

from maas_operator.api.modelservice import ModelServiceSpec, ServedModel
from maas_operator.builders import modelservice as build
from maas_operator.builders.meta import Owner
from maas_workloads import contract
from maas_workloads.artifact import sha256_file

OWNER = Owner("ModelService", "digits", "team-a", "uid-digits")
TOKEN = "s3cr3t-token"
# Where the pod and this machine differ: the port is free here, the cache lives under tmp.
LOCAL_ONLY = {contract.ENV_PORT, contract.ENV_MODEL_CACHE_DIR, contract.ENV_HOST}


def operator_pod(model_dir: pathlib.Path, env: dict[str, str] | None = None, *, tls: bool = False) -> dict[str, Any]:
    """The pod template and HPA the operator renders for a ModelService serving `model_dir`.

    `env`: the ModelService's own `env` entries (name -> value). `tls`: with `server.tls`.
    """
    spec = ModelServiceSpec.model_validate(
        {
            "model": {"uri": f"file://{model_dir}"},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "inflight"},
            "auth": {"tokenSecretRef": {"name": "digits-token", "key": "token"}},
            "env": [{"name": name, "value": value} for name, value in (env or {}).items()],
            "server": {"tls": {"secretRef": {"name": "digits-tls"}}} if tls else {},
        }
    )
    model = ServedModel(uri=f"file://{model_dir}", sha256=sha256_file(model_dir / contract.MANIFEST_FILE))
    deployment = build.deployment(OWNER, spec, model, "stable", "unused", None)
    assert spec.autoscaling is not None
    hpa = build.horizontal_pod_autoscaler(OWNER, spec.autoscaling)
    return {"template": deployment["spec"]["template"], "hpa": hpa}


def server_env(
    container: dict[str, Any], cache_dir: pathlib.Path, tls_dir: pathlib.Path | None = None
) -> dict[str, str]:
    """The container's environment as the kubelet would resolve it (the Secret's key is TOKEN; the
    TLS Secret, when mounted, is the volume at `tls_dir`)."""
    env: dict[str, str] = {}
    for variable in container["env"]:
        if variable["name"] in LOCAL_ONLY:
            continue
        secret = variable.get("valueFrom", {}).get("secretKeyRef")
        env[variable["name"]] = TOKEN if secret else variable["value"]
        if tls_dir is not None and env[variable["name"]].startswith(f"{contract.TLS_MOUNT}/"):
            env[variable["name"]] = env[variable["name"]].replace(contract.TLS_MOUNT, str(tls_dir), 1)
    env[contract.ENV_MODEL_CACHE_DIR] = str(cache_dir)
    return env
