"""What a training function calls, in the built-in trainer and in user code alike (exported by maas_workloads).

Call these from inside a Ray Train worker (the function given to TorchTrainer). Every rank calls
`report`; rank 0 commits the checkpoint and sends progress to the head; `save_model` publishes from
rank 0. The job's locations and identity come from the environment the operator gives the pods.
"""

from __future__ import annotations

import atexit
import logging
import numbers
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from maas_workloads import artifact, contract, storage
from maas_workloads.train.checkpoints import CheckpointStore
from maas_workloads.train.config import JobContext
from maas_workloads.train.progress import post_progress

log = logging.getLogger(__name__)


class _Session:
    def __init__(self, context: JobContext) -> None:
        self.context = context
        self.store: CheckpointStore | None = None
        if context.checkpoint_uri:
            keep = context.spec.checkpoint.keep if context.spec.checkpoint else 3
            self.store = CheckpointStore(storage.open_location(context.checkpoint_uri), keep, context.uid)
        self.step = 0
        self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.warned_no_store = False


_sessions: dict[int, _Session] = {}
"""The session of this process, created on first use (one per Ray Train worker process)."""


def _session() -> _Session:
    pid = os.getpid()
    if pid not in _sessions:
        _sessions.clear()
        _sessions[pid] = _Session(JobContext.from_env())
    return _sessions[pid]


def job_context() -> JobContext:
    """This process's job: spec, identity and locations, as the operator passed them."""
    return _session().context


def _ray_train_rank() -> int | None:
    """This worker's world rank, or None outside a Ray Train worker."""
    try:
        import ray.train

        return int(ray.train.get_context().get_world_rank())
    except Exception:
        return None


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    result = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
        result[str(name)] = float(value)
    return result


def report(
    metrics: Mapping[str, Any],
    checkpoint_dir: str | pathlib.Path | None = None,
    *,
    epoch: int | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    sharded: bool = False,
) -> None:
    """Report metrics (and, from rank 0, commit `checkpoint_dir` as the latest checkpoint).

    `step` defaults to one more than the previous report's; `epoch` to the previous value.
    Call it from every rank; only rank 0's call reaches the head and storage. Unlike
    `ray.train.report` it does not wait for Ray Train's controller (which polls every 2 s),
    so reporting every epoch costs no throughput.

    `sharded=True`: every rank passes its own directory holding its part of one checkpoint (what
    torch.distributed.checkpoint writes on each rank); every rank uploads its part, and rank 0
    commits the checkpoint once all parts are in. It synchronises the ranks (torch.distributed).
    """
    session = _session()
    session.step = step if step is not None else session.step + 1
    if epoch is not None:
        session.epoch = epoch
    values = _numbers(metrics)
    session.metrics = values
    rank = _ray_train_rank()
    update: dict[str, Any] = {"step": session.step, "epoch": session.epoch, "metrics": values}
    if total_steps is not None:
        update["totalSteps"] = total_steps
    if checkpoint_dir is not None and sharded:
        update.update(_save_sharded(session, pathlib.Path(checkpoint_dir), values, rank or 0))
    elif checkpoint_dir is not None and rank in (None, 0):
        update.update(_save(session, pathlib.Path(checkpoint_dir), values))
    if rank in (None, 0):
        post_progress(session.context.progress_url, session.context.uid, update)


def _no_store(session: _Session) -> bool:
    if session.store is None and not session.warned_no_store:
        log.warning("the TrainingJob has no spec.checkpoint: checkpoints are not kept")
        session.warned_no_store = True
    return session.store is None


def _save(session: _Session, directory: pathlib.Path, metrics: dict[str, float]) -> dict[str, Any]:
    if _no_store(session):
        return {}
    assert session.store is not None
    info, seconds = session.store.save(
        directory, step=session.step, epoch=session.epoch, attempt=session.context.attempt, metrics=metrics
    )
    return {"lastCheckpoint": info.uri, "checkpointSeconds": seconds}


def _save_sharded(session: _Session, directory: pathlib.Path, metrics: dict[str, float], rank: int) -> dict[str, Any]:
    import torch.distributed as dist

    if _no_store(session):
        return {}
    assert session.store is not None
    started = time.monotonic()
    synchronize = dist.barrier if dist.is_initialized() else (lambda: None)
    if rank == 0:
        session.store.clear(session.step)
    synchronize()
    session.store.upload_part(directory, session.step)
    synchronize()
    if rank != 0:
        return {}
    info = session.store.commit(
        step=session.step, epoch=session.epoch, attempt=session.context.attempt, metrics=metrics
    )
    return {"lastCheckpoint": info.uri, "checkpointSeconds": time.monotonic() - started}


def get_checkpoint() -> pathlib.Path | None:
    """A local directory with the latest committed checkpoint of this job, or None to start fresh.

    It also restores the step and epoch counters that `report` continues from.
    """
    session = _session()
    if session.store is None:
        return None
    info = session.store.latest()
    if info is None:
        return None
    scratch = pathlib.Path(tempfile.gettempdir()) / f"maas-checkpoint-{os.getpid()}-{info.step}"
    if not isinstance(session.store.location, storage.LocalLocation):
        # The copy is needed only while the training function restores from it.
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    path = session.store.download(info, scratch)
    session.step, session.epoch, session.metrics = info.step, info.epoch, dict(info.metrics)
    log.info("resuming from %s (epoch %d, step %d)", info.uri, info.epoch, info.step)
    return path


def save_model(
    model: Any,
    example_input: Any,
    *,
    labels: list[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    input_name: str = "input",
    output_name: str = "output",
    validation: tuple[Any, Any] | None = None,
) -> contract.ModelReport | None:
    """Publish the model as the job's artifact (TorchScript + safetensors + manifest) from rank 0.

    `example_input` is one batch the model accepts; its shape (batch dimension variable) and dtype
    become the artifact's input spec. `validation` (features (N, F) float32, class indices (N,))
    is what the variants in `spec.output.variants` are measured on; it is required when any are
    requested. Returns the published artifact on rank 0, None elsewhere.
    """
    import numpy as np

    from maas_workloads.train import publish
    from maas_workloads.variants.tensor import Validation

    if _ray_train_rank() not in (None, 0):
        return None
    session = _session()
    context = session.context
    output = context.spec.output
    held_out = None
    if validation is not None:
        held_out = Validation(np.asarray(validation[0], dtype=np.float32), np.asarray(validation[1], dtype=np.int64))
    final_metrics = _numbers(metrics) if metrics is not None else dict(session.metrics)
    source = artifact.Source(namespace=context.namespace, name=context.name, uid=context.uid, attempt=context.attempt)
    with tempfile.TemporaryDirectory(prefix="maas-artifact-") as scratch:
        directory = pathlib.Path(scratch) / "artifact"
        _, digest = publish.export(
            model,
            example_input,
            directory,
            source=source,
            metrics=final_metrics,
            labels=labels,
            input_name=input_name,
            output_name=output_name,
            variants=output.variants,
            validation=held_out,
            max_accuracy_drop=output.max_accuracy_drop,
        )
        publish.publish(directory, context.output_uri)
    log.info("published the model to %s (manifest sha256 %s)", context.output_uri, digest)
    return {"uri": context.output_uri, "sha256": digest, "metrics": final_metrics}
