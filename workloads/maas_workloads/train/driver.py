"""Ray Train configuration that matches the pods, and the built-in trainer's driver (run on the head)."""

from __future__ import annotations

import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maas_workloads import storage
from maas_workloads.train import datasets, models
from maas_workloads.train.config import WORKER_RESOURCE, JobContext
from maas_workloads.train.errors import ApplicationError, ConfigurationError, InfrastructureError, LaunchError

if TYPE_CHECKING:
    from maas_workloads.train.llm.prepare import PreparedLM

ENV_MAX_WORKER_FAILURES = "MAAS_MAX_WORKER_FAILURES"
DEFAULT_MAX_WORKER_FAILURES = 3
"""Lost or crashed Ray Train workers restored from the latest checkpoint within one attempt."""
ELASTIC_RESIZE_SECONDS = 30.0


def scaling_config(context: JobContext | None = None) -> Any:
    """One Ray Train worker per worker pod, with that pod's CPUs and GPUs; elastic down to minReplicas."""
    from ray.train import ScalingConfig

    context = context or JobContext.from_env()
    gpus = context.gpus_per_worker
    resources: dict[str, float] = {"CPU": context.cpus_per_worker, WORKER_RESOURCE: 1}
    if gpus:
        resources["GPU"] = gpus
    workers: int | tuple[int, int] = (
        context.workers if context.min_workers >= context.workers else (context.min_workers, context.workers)
    )
    # Ray Train V2's ScalingConfig (elastic num_workers); the stubs mypy sees are V1's.
    return ScalingConfig(  # type: ignore[call-arg]
        num_workers=workers,  # type: ignore[arg-type]
        use_gpu=gpus > 0,
        resources_per_worker=resources,
        elastic_resize_monitor_interval_s=ELASTIC_RESIZE_SECONDS,
    )


def run_config(context: JobContext | None = None) -> Any:
    """Ray Train's own bookkeeping stays on the head's scratch space; checkpoints go through the SDK."""
    from ray.train import FailureConfig, RunConfig

    context = context or JobContext.from_env()
    failures = int(os.environ.get(ENV_MAX_WORKER_FAILURES, DEFAULT_MAX_WORKER_FAILURES))
    return RunConfig(
        name=f"{context.name}-attempt-{context.attempt}",
        storage_path=str(pathlib.Path(tempfile.gettempdir()) / "maas" / "ray-train"),
        failure_config=FailureConfig(max_failures=failures),
    )


def torch_config(context: JobContext | None = None) -> Any:
    from ray.train.torch import TorchConfig

    context = context or JobContext.from_env()
    return TorchConfig(backend="nccl" if context.gpus_per_worker else "gloo")


def check_storage(context: JobContext) -> None:
    """Fail before training when a location can never work (64) or cannot be reached now (75)."""
    from maas_workloads.train.publish import split_output_uri

    locations = [("output", context.output_uri)]
    if context.checkpoint_uri:
        locations.append(("checkpoint", context.checkpoint_uri))
    for what, uri in locations:
        try:
            if what == "output":
                split_output_uri(uri)[0].check()
            else:
                storage.open_location(uri).check()
        except storage.StorageConfigError as error:
            raise ConfigurationError(f"spec.{what}: {error}") from error
        except storage.StorageUnavailableError as error:
            raise InfrastructureError(f"{what} storage is unreachable: {error}") from error


@dataclass(frozen=True)
class PreparedData:
    train: datasets.Dataset
    validation: datasets.Dataset | None


def prepare_builtin(context: JobContext) -> PreparedData | PreparedLM:
    """Load and check the data and model on the head, before any Ray process starts.

    A missing column or a model that does not fit the data is a configuration error here,
    in seconds, rather than inside every worker.
    """
    trainer_spec = context.spec.trainer
    if trainer_spec is None:
        raise ConfigurationError("spec.trainer is not set: the built-in trainer has nothing to run")
    if trainer_spec.causal_lm is not None:
        from maas_workloads.train.llm.prepare import prepare

        return prepare(context)
    assert trainer_spec.model is not None
    train, validation = datasets.load(trainer_spec.dataset).split(
        trainer_spec.validation_split, trainer_spec.hyperparameters.seed
    )
    models.build(trainer_spec.model, trainer_spec.model_options, train.features, train.num_classes, train.image_shape)
    return PreparedData(train, validation)


def run_builtin(context: JobContext, data: PreparedData | PreparedLM) -> None:
    """Train on the workers with TorchTrainer; the data reaches them through Ray's object store."""
    if not isinstance(data, PreparedData):
        from maas_workloads.train.llm.driver import run

        run(context, data)
        return
    import ray
    from ray.train import TrainingFailedError
    from ray.train.torch import TorchTrainer

    from maas_workloads.train.builtin import train_loop

    trainer_spec = context.spec.trainer
    if trainer_spec is None:
        raise ConfigurationError("spec.trainer is not set: the built-in trainer has nothing to run")
    train, validation = data.train, data.validation
    checkpoint = context.spec.checkpoint
    config: dict[str, Any] = {
        "trainer": trainer_spec.model_dump(by_alias=True, mode="json"),
        "train": ray.put(train),
        "validation": ray.put(validation) if validation is not None else None,
        "checkpointing": context.checkpoint_uri is not None,
        "every_epochs": checkpoint.every_epochs if checkpoint else None,
        "every_steps": checkpoint.every_steps if checkpoint else None,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=scaling_config(context),
        run_config=run_config(context),
        torch_config=torch_config(context),
    )
    try:
        trainer.fit()
    except TrainingFailedError as error:
        raise classify_training_failure(error) from error


def classify_training_failure(error: BaseException) -> LaunchError:
    """Blame a failed fit() on the configuration, the platform or the application, from its root causes."""
    causes = list(_causes(error))
    for kind in (ConfigurationError, InfrastructureError):
        found = next((c for c in causes if isinstance(c, kind)), None)
        if found is not None:
            return kind(str(found))
    unavailable = next((c for c in causes if isinstance(c, storage.StorageUnavailableError)), None)
    if unavailable is not None:
        return InfrastructureError(f"storage became unreachable during training: {unavailable}")
    root = causes[-1] if causes else error
    return ApplicationError(f"training failed: {type(root).__name__}: {_first_line(root)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else repr(error)


def _causes(error: BaseException) -> Any:
    """The error and everything it wraps: Ray's worker failures, `.cause`, __cause__ and __context__."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested: list[Any] = [
            *getattr(current, "worker_failures", {}).values(),
            getattr(current, "controller_failure", None),
            getattr(current, "cause", None),
            current.__cause__,
            current.__context__,
        ]
        pending.extend(item for item in nested if isinstance(item, BaseException))
