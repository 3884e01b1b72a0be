"""Your own training code as a TrainingJob driver (spec.command), with the built-in trainer's behaviour:
progress in `status.progress`, checkpoints that survive lost workers and retried attempts, and a
verified model artifact in `status.model`.

The head runs this script; `TorchTrainer` runs `train_func` on one Ray Train worker per worker pod.
Run it with examples/trainingjob-custom.yaml.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from typing import Any

import ray.train
import torch
from ray.train.torch import TorchTrainer, prepare_model
from torch import nn

import maas_workloads
from maas_workloads.train.driver import run_config, scaling_config, torch_config

LABELS = ["opposite signs", "same sign"]


def make_data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rule no linear model can learn: is x0 * x1 positive?"""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 8, generator=generator)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def train_func(config: dict[str, Any]) -> None:
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(0)
    x, y = make_data(4096, seed=0)
    x_val, y_val = make_data(1024, seed=1)
    model: nn.Module = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])

    start_epoch = 0
    checkpoint = maas_workloads.get_checkpoint()  # the latest checkpoint of this job, from any attempt
    if checkpoint is not None:
        state = torch.load(checkpoint / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
    model = prepare_model(model)  # DistributedDataParallel over gloo (CPU) or NCCL (GPU)

    shard_x, shard_y = x[rank::world], y[rank::world]
    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        order = torch.randperm(len(shard_x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(shard_x[batch]), shard_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_val).argmax(dim=1) == y_val).float().mean())
        metrics = {"loss": loss.item(), "val_accuracy": accuracy}
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                state = {"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
                torch.save(state, pathlib.Path(directory) / "state.pt")
            # Every rank reports; rank 0's directory becomes the job's latest checkpoint.
            maas_workloads.report(metrics, checkpoint_dir=directory if rank == 0 else None, epoch=epoch + 1)

    maas_workloads.save_model(model, x_val[:4], labels=LABELS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"epochs": args.epochs, "lr": args.lr},
        scaling_config=scaling_config(),  # one worker per worker pod, with its CPUs/GPUs
        run_config=run_config(),  # restores lost workers from the latest checkpoint
        torch_config=torch_config(),
    )
    trainer.fit()


if __name__ == "__main__":
    main()
