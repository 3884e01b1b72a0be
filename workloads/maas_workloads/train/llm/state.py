"""Where a causal-LM run stands, and its checkpoints: sharded with torch.distributed.checkpoint (DCP).

Every rank writes its own shard files; the SDK uploads all parts and commits the checkpoint once
every rank's part is in (sdk.report(..., sharded=True)). DCP records each tensor's global shape,
so a checkpoint taken by N FSDP workers loads on M workers (or under DDP), re-sharded on load.
LoRA runs keep only the trainable adapter weights (and their optimizer state): the frozen base is
reloaded from the base model.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from maas_workloads.train import sdk

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"


@dataclass
class Position:
    """How far training has come: optimizer steps, completed epochs, and the sequences of the
    current epoch already trained on (so a resized worker group resumes at the same data)."""

    step: int = 0
    epoch: int = 0
    offset: int = 0


def _options(adapter_only: bool, loading: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # A LoRA checkpoint lacks the frozen base, so loading it cannot be strict.
    return StateDictOptions(ignore_frozen_params=adapter_only, strict=not (adapter_only and loading))


def save(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    *,
    adapter_only: bool,
    rank: int,
    metrics: dict[str, float],
    total_steps: int,
) -> None:
    """Checkpoint every rank's shard of model and optimizer, plus (rank 0) the position and LR
    schedule, through the SDK; every rank must call it at the same step."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save as save_shards

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(adapter_only))
    directory = pathlib.Path(tempfile.mkdtemp(prefix="maas-lm-ckpt-"))
    try:
        save_shards({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)
        if rank == 0:
            (directory / STATE_FILE).write_text(json.dumps({"position": asdict(position), "metrics": metrics}))
            torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
        sdk.report(metrics, directory, epoch=position.epoch, step=position.step, total_steps=total_steps, sharded=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def latest() -> tuple[pathlib.Path, Position, dict[str, float]] | None:
    """The job's latest checkpoint, downloaded, with the position and metrics it was taken at;
    None to start fresh."""
    directory = sdk.get_checkpoint()
    if directory is None:
        return None
    saved = json.loads((directory / STATE_FILE).read_text())
    return directory, Position(**saved["position"]), {k: float(v) for k, v in saved["metrics"].items()}


def load(
    directory: pathlib.Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, adapter_only: bool
) -> None:
    """Load a checkpoint into the (already sharded) model, the optimizer and the LR schedule."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as load_shards

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(adapter_only))
    # Loads in place, each rank its own shard of every tensor, wherever the checkpoint's ranks had it.
    load_shards({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optimizer_state,
        options=_options(adapter_only, loading=True),
    )
    scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))


def full_state(model: nn.Module, *, adapter_only: bool) -> dict[str, Any]:
    """The whole (unsharded) model state on CPU, on rank 0 (empty elsewhere); every rank must call it.
    For LoRA only the adapter weights: the base is reloaded from the base model to merge them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapter_only)
    return get_model_state_dict(model, options=options)
