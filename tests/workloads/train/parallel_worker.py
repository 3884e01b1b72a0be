"""One rank of test_llm_parallel.py: the trainer's own model loading, sharding and step function on a
gloo process group of plain processes (no Ray), for every parallelism and method.

    RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 MASTER_PORT=p python parallel_worker.py <base-dir> <result.json>

With WORLD_SIZE=1 no process group is made and every step accumulates the ranks' micro-batches,
as one worker does. Rank 0 writes {"<parallelism>/<method>": [global loss of each step]}.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoConfig

from maas_operator.api.trainer import TrainerSpec
from maas_workloads.train.llm import loop, modeling
from maas_workloads.train.llm.batches import Batches
from maas_workloads.train.llm.encoding import TokenBlocks
from maas_workloads.train.llm.state import Position

STEPS = 4
MICRO_BATCH = 2
SEQUENCE = 16
MODES = [("fsdp", "full"), ("ddp", "full"), ("ddp", "lora"), ("fsdp", "lora")]
"""FSDP with LoRA is also compared on Ray (test_llm.py), with the data split by the trainer itself, on a
model with tied embeddings; this base model's are untied, so FSDP shards them and the head as units."""


def blocks(vocab: int) -> TokenBlocks:
    """Random token sequences, the same in every process; a few padded rows to exercise the masks."""
    rng = np.random.default_rng(7)
    count = STEPS * MICRO_BATCH * 2
    ids = rng.integers(0, vocab, size=(count, SEQUENCE), dtype=np.int32)
    lengths = np.full(count, SEQUENCE, dtype=np.int32)
    lengths[::3] = SEQUENCE - 5
    labels = ids.copy()
    for row, length in enumerate(lengths):
        labels[row, length:] = -100
    return TokenBlocks(ids, labels, lengths)


def losses(base: pathlib.Path, parallelism: str, method: str, rank: int, world: int) -> list[float]:
    causal_lm: dict[str, Any] = {
        "baseModel": {"uri": base.as_uri()},
        "parallelism": parallelism,
        "method": method,
        "sequenceLength": SEQUENCE,
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj", "down_proj"]},
        # Recomputing activations on one worker must change nothing either.
        "gradientCheckpointing": world == 1,
    }
    spec = TrainerSpec.model_validate(
        {
            "causalLM": causal_lm,
            "dataset": {"uri": base.as_uri()},
            "hyperparameters": {"batchSize": MICRO_BATCH, "optimizer": "sgd", "learningRate": 0.5, "epochs": 1},
        }
    )
    assert spec.causal_lm is not None
    device = torch.device("cpu")
    model = modeling.load(spec.causal_lm, base, device, False, 0)
    model = modeling.parallelize(model, parallelism, device, False)
    optimizer = loop.build_optimizer(spec, model)
    scheduler = loop.build_scheduler(spec.hyperparameters.model_copy(update={"lr_schedule": "constant"}), optimizer, 8)
    accumulation = 2 // world
    vocab = AutoConfig.from_pretrained(base).vocab_size
    batches = Batches(blocks(vocab), None, spec.hyperparameters, rank, world, accumulation, device)
    result = []
    for micro_batches in batches.epoch(Position()):
        share, _ = loop.train_step(
            model, optimizer, scheduler, micro_batches, world, device, contextlib.nullcontext, 1.0
        )
        result.append(share)
    total = torch.tensor(result, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(total)
    return [float(v) for v in total.tolist()]


def main() -> None:
    base, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo")
    results = {f"{p}/{m}": losses(base, p, m, rank, world) for p, m in MODES}
    if rank == 0:
        out.write_text(json.dumps(results))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
