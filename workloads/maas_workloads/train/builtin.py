"""The built-in trainer's per-worker loop: runs inside each Ray Train worker (one per worker pod)."""

from __future__ import annotations

import math
import pathlib
import shutil
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from maas_operator.api.trainer import TrainerSpec
from maas_workloads.train import models, sdk
from maas_workloads.train.datasets import Dataset
from maas_workloads.train.publish import unwrap

STATE_FILE = "state.pt"


def _optimizer(spec: TrainerSpec, parameters: Any) -> torch.optim.Optimizer:
    hp = spec.hyperparameters
    if hp.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=hp.learning_rate, momentum=0.9, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    return torch.optim.Adam(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)


def steps_per_epoch(samples: int, batch_size: int, world_size: int) -> int:
    """Every rank takes the same number of steps: its shard is padded to ceil(samples / world)."""
    return math.ceil(math.ceil(samples / world_size) / batch_size)


def _shard(samples: int, epoch: int, seed: int, rank: int, world_size: int) -> np.ndarray[Any, Any]:
    order = np.random.default_rng(seed + epoch).permutation(samples)
    padded = np.resize(order, math.ceil(samples / world_size) * world_size)
    return padded[rank::world_size]


def _evaluate(
    model: nn.Module, data: Dataset, device: torch.device, batch_size: int, autocast: Any
) -> dict[str, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data.labels), max(batch_size, 256)):
            x = torch.as_tensor(np.array(data.features[start : start + max(batch_size, 256)])).to(device)
            y = torch.as_tensor(np.array(data.labels[start : start + max(batch_size, 256)])).to(device)
            with autocast():
                logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    model.train()
    return {"val_loss": loss_sum / len(data.labels), "val_accuracy": correct / len(data.labels)}


def train_loop(config: dict[str, Any]) -> None:
    spec = TrainerSpec.model_validate(config["trainer"])
    hp = spec.hyperparameters
    train: Dataset = ray.get(config["train"]) if isinstance(config["train"], ray.ObjectRef) else config["train"]
    validation: Dataset | None = (
        ray.get(config["validation"]) if isinstance(config["validation"], ray.ObjectRef) else config["validation"]
    )
    checkpointing: bool = config["checkpointing"]
    every_epochs: int = config.get("every_epochs") or 1
    every_steps: int | None = config.get("every_steps")

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(hp.seed)
    device = ray.train.torch.get_device()
    assert spec.model is not None
    model = models.build(spec.model, spec.model_options, train.features, train.num_classes, train.image_shape)
    optimizer = _optimizer(spec, model.parameters())
    per_epoch = steps_per_epoch(len(train.labels), hp.batch_size, world_size)
    total_steps = per_epoch * hp.epochs

    epoch, batch_in_epoch, step = 0, 0, 0
    checkpoint = sdk.get_checkpoint()
    if checkpoint is not None:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = int(state["epoch"]), int(state["step"])
        # A resized worker group shards differently: restart the interrupted epoch from its beginning.
        batch_in_epoch = int(state["batch_in_epoch"]) if int(state["world_size"]) == world_size else 0
    model = ray.train.torch.prepare_model(model)
    use_amp = device.type == "cuda" and hp.mixed_precision
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    def checkpoint_and_report(metrics: dict[str, float], epoch_: int, batch_: int, due: bool) -> None:
        """Every rank reports; rank 0 also hands over a checkpoint when one is due."""
        if not (due and checkpointing and rank == 0):
            sdk.report(metrics, epoch=epoch_, step=step, total_steps=total_steps)
            return
        directory = pathlib.Path(tempfile.mkdtemp(prefix="maas-ckpt-"))
        torch.save(
            {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch_,
                "batch_in_epoch": batch_,
                "step": step,
                "world_size": world_size,
            },
            directory / STATE_FILE,
        )
        try:
            sdk.report(metrics, directory, epoch=epoch_, step=step, total_steps=total_steps)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    metrics: dict[str, float] = {}
    first_epoch = epoch
    while epoch < hp.epochs:
        indices = _shard(len(train.labels), epoch, hp.seed, rank, world_size)
        loss_sum, loss_count, samples, started = 0.0, 0, 0, time.perf_counter()
        for batch in range(batch_in_epoch, per_epoch):
            index = indices[batch * hp.batch_size : (batch + 1) * hp.batch_size]
            x = torch.from_numpy(train.features[index]).to(device)
            y = torch.from_numpy(train.labels[index]).to(device)
            with autocast():
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach())
            loss_count += 1
            samples += len(index) * world_size
            if loss_count == 1 and epoch == first_epoch:
                # Progress shows that training runs as soon as it does, not an epoch later.
                sdk.report({"loss": loss_sum}, epoch=epoch, step=step, total_steps=total_steps)
            if every_steps and step % every_steps == 0 and batch + 1 < per_epoch:
                checkpoint_and_report({"loss": loss_sum / loss_count}, epoch, batch + 1, due=True)
        batch_in_epoch = 0
        epoch += 1
        elapsed = time.perf_counter() - started
        metrics = {"loss": loss_sum / max(loss_count, 1), "samples_per_second": samples / max(elapsed, 1e-9)}
        if validation is not None:
            metrics.update(_evaluate(model, validation, device, hp.batch_size, autocast))
        if every_steps:
            due = step % every_steps == 0 or epoch == hp.epochs
        else:
            due = epoch % every_epochs == 0 or epoch == hp.epochs
        checkpoint_and_report(metrics, epoch, 0, due)

    if not metrics and validation is not None:
        # Resumed from the final checkpoint: nothing left to train, but the artifact still gets metrics.
        metrics = _evaluate(model, validation, device, hp.batch_size, autocast)
    example = torch.as_tensor(np.array(train.features[:2]))
    final = {k: v for k, v in metrics.items() if k != "samples_per_second"}
    held_out = (validation.features, validation.labels) if validation is not None else None
    sdk.save_model(model, example, labels=train.label_names, metrics=final, output_name="logits", validation=held_out)
