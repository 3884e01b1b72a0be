"""What a pod knows about its job: the TrainingJob spec and identity the operator put in its environment."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from maas_operator.api.common import describe_validation_error
from maas_operator.api.quantity import whole_cpus
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_workloads import contract
from maas_workloads.train.errors import ConfigurationError

WORKER_RESOURCE = "maas_worker"
"""Custom Ray resource each worker pod advertises once: one Ray Train worker per pod."""


@dataclass(frozen=True)
class JobContext:
    spec: TrainingJobSpec
    name: str
    namespace: str
    uid: str
    attempt: int
    head_host: str
    head_port: int
    workers: int
    min_workers: int
    checkpoint_uri: str | None
    output_uri: str
    progress_port: int

    @property
    def head_address(self) -> str:
        return f"{self.head_host}:{self.head_port}"

    @property
    def progress_url(self) -> str:
        return f"http://{self.head_host}:{self.progress_port}{contract.PROGRESS_PATH}"

    @property
    def cpus_per_worker(self) -> int:
        return whole_cpus(self.spec.workers.resources.cpu)

    @property
    def gpus_per_worker(self) -> int:
        return self.spec.workers.resources.gpu

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobContext:
        """Read and validate everything the operator passes; ConfigurationError names the variable or field."""
        env = os.environ if env is None else env
        spec = load_spec(env)
        head_host, head_port = _head_address(env)
        output_uri = env.get(contract.ENV_OUTPUT_URI) or None
        if output_uri is None:
            raise ConfigurationError(f"{contract.ENV_OUTPUT_URI} is not set: the model artifact has nowhere to go")
        return cls(
            spec=spec,
            name=env.get(contract.ENV_JOB_NAME, "local"),
            namespace=env.get(contract.ENV_JOB_NAMESPACE, "default"),
            uid=env.get(contract.ENV_JOB_UID, ""),
            attempt=_int(env, contract.ENV_ATTEMPT, 1),
            head_host=head_host,
            head_port=head_port,
            workers=_int(env, contract.ENV_WORKERS, spec.workers.replicas),
            min_workers=_int(env, contract.ENV_MIN_WORKERS, spec.workers.effective_min_replicas),
            checkpoint_uri=env.get(contract.ENV_CHECKPOINT_URI) or None,
            output_uri=output_uri,
            progress_port=_int(env, contract.ENV_PROGRESS_PORT, contract.PROGRESS_PORT),
        )


def load_spec(env: Mapping[str, str]) -> TrainingJobSpec:
    raw = env.get(contract.ENV_TRAININGJOB)
    source = contract.ENV_TRAININGJOB
    if raw is None and pathlib.Path(contract.SPEC_FILE).is_file():
        raw, source = pathlib.Path(contract.SPEC_FILE).read_text(), contract.SPEC_FILE
    if raw is None:
        raise ConfigurationError(f"{contract.ENV_TRAININGJOB} is not set and {contract.SPEC_FILE} does not exist")
    try:
        return TrainingJobSpec.model_validate(json.loads(raw))
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{source} is not valid JSON: {error}") from error
    except ValidationError as error:
        raise ConfigurationError(f"invalid TrainingJob: {describe_validation_error(error)}") from error


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as error:
        raise ConfigurationError(f"{name}={value!r} is not an integer") from error
    if number < 1:
        raise ConfigurationError(f"{name}={value!r} must be at least 1")
    return number


def _head_address(env: Mapping[str, str]) -> tuple[str, int]:
    address = env.get(contract.ENV_HEAD_ADDRESS, f"127.0.0.1:{contract.RAY_GCS_PORT}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"{contract.ENV_HEAD_ADDRESS}={address!r} must be host:port")
    return host, int(port)
