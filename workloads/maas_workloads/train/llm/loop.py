"""The causal-LM training loop: runs inside every Ray Train worker (one per worker pod).

One optimizer step trains on a global batch of batchSize x workers x gradientAccumulationSteps
sequences. The loss is the mean over the global batch's trainable tokens (transformers'
`num_items_in_batch`), so the gradients do not depend on how the batch is split across workers
and micro-batches: N workers train the same model as one worker accumulating N micro-batches.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import resource
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from maas_operator.api.trainer import (
    DEFAULT_GRADIENT_ACCUMULATION_STEPS,
    DEFAULT_LR_SCHEDULE,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_WARMUP_STEPS,
    Hyperparameters,
    TrainerSpec,
)
from maas_workloads.train import sdk
from maas_workloads.train.llm import base, export, modeling, state
from maas_workloads.train.llm.batches import Batch, Batches, evaluation_batches
from maas_workloads.train.llm.encoding import TokenBlocks

SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
REPORTS_PER_RUN = 200
"""Progress reports (and their loss all-reduce) over a run: often enough for a live progress bar."""


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def _all_reduce_max(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def build_optimizer(spec: TrainerSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The spec's optimizer over the trainable parameters (LoRA: the adapters only)."""
    hp = spec.hyperparameters
    parameters = [p for p in model.parameters() if p.requires_grad]
    if hp.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=hp.learning_rate, momentum=0.9, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    return torch.optim.Adam(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)


def build_scheduler(hp: Hyperparameters, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """transformers' learning-rate schedule: linear warm-up, then constant, linear or cosine decay to 0."""
    from transformers import get_scheduler

    return get_scheduler(
        SCHEDULES[hp.lr_schedule or DEFAULT_LR_SCHEDULE],
        optimizer,
        num_warmup_steps=hp.warmup_steps or DEFAULT_WARMUP_STEPS,
        num_training_steps=total_steps,
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: list[Batch],
    world: int,
    device: torch.device,
    autocast: Any,
    max_grad_norm: float,
) -> tuple[float, int]:
    """One optimizer step over this worker's micro-batches of a global batch; every worker calls it.

    Returns this worker's share of the global mean loss (the shares sum to it) and the tokens it
    processed. The loss is each token's over all the global batch's trainable tokens, counted by
    one all-reduce first, so N workers compute exactly what one would on the whole batch.
    """
    items = torch.tensor(float(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)), device=device)
    if world > 1:
        dist.all_reduce(items)
    loss_share, tokens = 0.0, 0
    for index, batch in enumerate(micro_batches):
        with _gradient_sync(model, index == len(micro_batches) - 1):
            # DDP and FSDP average gradients over the workers: scale back up to the global mean.
            loss = _forward(model, batch, items, autocast).loss * world
            loss.backward()
        loss_share += float(loss.detach()) / world
        tokens += int(batch["lengths"].sum())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_share, tokens


def peak_memory_bytes(device: torch.device) -> float:
    """This process's peak memory: CUDA memory allocated on GPUs, the resident set size on CPUs."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


def _gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP2) on all but the last micro-batch."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    elif not enabled and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], items: torch.Tensor | int, autocast: Any) -> Any:
    with autocast():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            labels=batch["labels"],
            num_items_in_batch=items,
        )


def evaluate(
    model: nn.Module, blocks: TokenBlocks, batch_size: int, device: torch.device, autocast: Any
) -> dict[str, float]:
    """Validation loss (mean over every trainable token) and perplexity, over all ranks' shares."""
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for batch in evaluation_batches(blocks, batch_size, device):
            output = _forward(model, batch, 1, autocast)
            loss_sum += float(output.loss.float())
            tokens += int((batch["labels"][:, 1:] != -100).sum())
    model.train()
    total_loss, total_tokens = _all_reduce([loss_sum, float(tokens)], device)
    val_loss = total_loss / max(total_tokens, 1.0)
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0))}


class _Run:
    """One worker's share of the run: model, optimizer, schedule, data and position."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.spec = TrainerSpec.model_validate(config["trainer"])
        lm, hp = self.spec.causal_lm, self.spec.hyperparameters
        assert lm is not None
        self.lm, self.hp = lm, hp
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.files = pathlib.Path(tempfile.mkdtemp(prefix="maas-lm-files-"))
        for name, data in config["files"].items():
            (self.files / name).write_bytes(data)
        self.base: base.BaseModel | None = None
        if lm.base_model is not None:
            self.base = base.fetch(lm.base_model, pathlib.Path(tempfile.gettempdir()) / "maas" / "base-model")
            source: Any = self.base.directory
        else:
            from transformers import AutoConfig

            source = AutoConfig.from_pretrained(self.files)
        with modeling.memory_returned_when_freed():
            model = modeling.load(lm, source, self.device, hp.mixed_precision, hp.seed)
            self.model = modeling.parallelize(model, lm.parallelism, self.device, hp.mixed_precision)
        self.optimizer = build_optimizer(self.spec, self.model)
        self.adapter_only = lm.method != "full"
        train: TokenBlocks | None = ray.get(config["train"]) if config["train"] is not None else None
        self.validation: TokenBlocks | None = (
            ray.get(config["validation"]) if config["validation"] is not None else None
        )
        shard = ray.train.get_dataset_shard("train") if train is None else None
        accumulation = hp.gradient_accumulation_steps or DEFAULT_GRADIENT_ACCUMULATION_STEPS
        self.batches = Batches(train, shard, hp, self.rank, self.world, accumulation, self.device)
        resumed = state.latest()
        self.position = resumed[1] if resumed else state.Position()
        # The schedule spans the steps this worker group will take, from where it resumes.
        self.total_steps = self.batches.total_steps(self.position)
        self.scheduler = build_scheduler(hp, self.optimizer, self.total_steps)
        if resumed:
            state.load(resumed[0], self.model, self.optimizer, self.scheduler, adapter_only=self.adapter_only)
        bf16 = hp.mixed_precision and self.device.type == "cuda" and lm.parallelism == "ddp"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        # Resumed after the last step, the artifact still gets the metrics training ended with.
        self.metrics: dict[str, float] = dict(resumed[2]) if resumed else {}
        self.last_eval: dict[str, float] = {}

    def evaluate(self) -> None:
        """Validation loss and perplexity into the metrics (every rank; nothing without validation data)."""
        if self.validation is not None:
            self.last_eval = evaluate(self.model, self.validation, self.hp.batch_size, self.device, self.autocast)
            self.metrics = {**self.metrics, **self.last_eval}

    def report(self, checkpoint: bool) -> None:
        """Progress to the head, with a (sharded) checkpoint when one is due; every rank calls it."""
        if checkpoint and self.config["checkpointing"]:
            state.save(
                self.model,
                self.optimizer,
                self.scheduler,
                self.position,
                adapter_only=self.adapter_only,
                rank=self.rank,
                metrics=self.metrics,
                total_steps=self.total_steps,
            )
        else:
            sdk.report(self.metrics, epoch=self.position.epoch, step=self.position.step, total_steps=self.total_steps)

    def step(self, micro_batches: list[Batch]) -> tuple[float, int]:
        """One optimizer step (train_step) and the position after it: (loss share, tokens)."""
        result = train_step(
            self.model,
            self.optimizer,
            self.scheduler,
            micro_batches,
            self.world,
            self.device,
            self.autocast,
            self.hp.max_grad_norm or DEFAULT_MAX_GRAD_NORM,
        )
        self.position.step += 1
        self.position.offset += self.batches.global_batch
        return result

    def train(self) -> None:
        """Train to the last step: progress reports, evaluations and checkpoints as the spec asks."""
        every_epochs, every_steps = self.config["every_epochs"] or 1, self.config["every_steps"]
        eval_every = self.hp.eval_every_steps
        report_every = max(1, self.total_steps // REPORTS_PER_RUN)
        window_loss, window_tokens, window_steps, started = 0.0, 0, 0, time.perf_counter()
        self.model.train()
        while self.position.step < self.total_steps and self.position.epoch < self.hp.epochs:
            finished_epoch = True
            for micro_batches in self.batches.epoch(self.position):
                loss_share, tokens = self.step(micro_batches)
                window_loss, window_tokens, window_steps = (
                    window_loss + loss_share,
                    window_tokens + tokens,
                    window_steps + 1,
                )
                last = self.position.step >= self.total_steps
                due_eval = eval_every is not None and self.position.step % eval_every == 0 and not last
                if self.position.step % report_every == 0 or due_eval or last:
                    now = time.perf_counter()
                    loss_sum, token_sum = _all_reduce([window_loss, float(window_tokens)], self.device)
                    self.metrics = {
                        **self.last_eval,
                        "loss": loss_sum / window_steps,
                        "tokens_per_second": token_sum / max(now - started, 1e-9),
                        "learning_rate": float(self.scheduler.get_last_lr()[0]),
                        "peak_memory_bytes": _all_reduce_max(peak_memory_bytes(self.device), self.device),
                    }
                    if due_eval:
                        self.evaluate()
                    due_checkpoint = every_steps is not None and self.position.step % every_steps == 0
                    if not last:
                        self.report(checkpoint=due_checkpoint)
                    window_loss, window_tokens, window_steps = 0.0, 0, 0
                    # Reporting costs count against the next window's throughput; evaluations and checkpoints do not.
                    started = time.perf_counter() if due_eval or due_checkpoint else now
                if last:
                    finished_epoch = self.batches.epoch_finished(self.position)
                    break
            if finished_epoch:
                self.position.epoch += 1
                self.position.offset = 0
            self.evaluate()
            ended = self.position.step >= self.total_steps or self.position.epoch >= self.hp.epochs
            self.report(checkpoint=ended or (every_steps is None and self.position.epoch % every_epochs == 0))

    def publish(self) -> None:
        """Gather the trained weights on rank 0 and publish the artifact from there."""
        if not self.last_eval:
            self.evaluate()  # resumed from the final checkpoint: the artifact still gets its metrics
        final = {k: v for k, v in self.metrics.items() if k in ("loss", "val_loss", "val_perplexity")}
        weights = state.full_state(self.model, adapter_only=self.adapter_only)
        if self.rank == 0:
            export.publish_from_worker(self.spec, self.files, weights, final, self.base, self.validation)
        if dist.is_initialized():
            dist.barrier()


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; `config` comes from llm.driver.run."""
    run = _Run(config)
    run.train()
    run.publish()
