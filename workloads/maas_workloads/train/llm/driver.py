"""The causal-LM job's Ray Train driver, on the head: TorchTrainer over the prepared or streamed data."""

from __future__ import annotations

import os
from typing import Any, Final
from urllib.parse import urlparse

from maas_workloads.train.config import DATA_RESOURCE, JobContext
from maas_workloads.train.llm.prepare import PreparedLM

DATA_BATCH_ROWS: Final = 1024
"""Records tokenized (and packed) together by one Ray Data task; a packed block never spans two."""
DATA_TASK: Final[dict[str, Any]] = {"num_cpus": 0, "resources": {DATA_RESOURCE: 1}}
"""Ray Data tasks run on the worker pods beside the training worker (whose CPUs it holds), as many
at once per pod as it advertises DATA_RESOURCE; never on the head."""


def _filesystem(paths: list[str]) -> Any:
    """pyarrow's S3 filesystem configured like boto3 (AWS_* variables, custom endpoints), for s3:// data."""
    if not paths or urlparse(paths[0]).scheme != "s3":
        return None
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**{k: v for k, v in options.items() if v})


def streamed_dataset(context: JobContext, prepared: PreparedLM) -> Any:
    """A Ray Data pipeline reading the files, tokenizing and packing them into blocks, run by worker-pod
    tasks and split equally among the training workers (so every worker takes the same steps)."""
    import ray.data

    from maas_workloads.train.llm.encoding import BatchEncoder

    spec = context.spec.trainer
    assert spec is not None and spec.causal_lm is not None
    ray.data.DataContext.get_current().enable_progress_bars = False
    source = prepared.source
    paths = [urlparse(p).path if p.startswith("file://") else p.removeprefix("s3://") for p in source.paths()]
    filesystem = _filesystem(source.paths())
    if source.format == "plain":
        dataset = ray.data.read_text(paths, filesystem=filesystem, ray_remote_args=DATA_TASK)
    else:
        dataset = ray.data.read_json(paths, filesystem=filesystem, lines=True, ray_remote_args=DATA_TASK)
    encode = BatchEncoder(
        prepared.files, source.format, spec.causal_lm.loss_on, spec.causal_lm.sequence_length, spec.causal_lm.packing
    )
    return dataset.map_batches(encode, batch_size=DATA_BATCH_ROWS, batch_format="numpy", **DATA_TASK)


def run(context: JobContext, prepared: PreparedLM) -> None:
    """Train on the workers; the prepared blocks reach them through Ray's object store."""
    import ray
    from ray.train import DataConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from maas_workloads.train.driver import classify_training_failure, run_config, scaling_config, torch_config
    from maas_workloads.train.llm.loop import train_loop

    spec = context.spec.trainer
    assert spec is not None
    checkpoint = context.spec.checkpoint
    config: dict[str, Any] = {
        "trainer": spec.model_dump(by_alias=True, mode="json"),
        "files": prepared.files,
        "train": ray.put(prepared.train) if prepared.train is not None else None,
        "validation": ray.put(prepared.validation) if prepared.validation is not None else None,
        "checkpointing": context.checkpoint_uri is not None,
        "every_epochs": checkpoint.every_epochs if checkpoint else None,
        "every_steps": checkpoint.every_steps if checkpoint else None,
    }
    datasets = {"train": streamed_dataset(context, prepared)} if prepared.train is None else None
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=scaling_config(context),
        run_config=run_config(context),
        torch_config=torch_config(context),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]) if datasets else None,
    )
    try:
        trainer.fit()
    except TrainingFailedError as error:
        raise classify_training_failure(error) from error
