"""The peer of benchmarks/train_overhead.py: the built-in trainer's exact loop under plain torchrun + DDP (gloo).

    torchrun --nproc_per_node 2 benchmarks/torchrun_peer.py RESULT.json DATASET_URI EPOCHS BATCH HIDDEN

Same data (maas_workloads.train.datasets), model (models.build), optimizer, sharding and per-epoch
samples/s measurement as the trainer on Ray Train; rank 0 writes the timings as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "workloads")]

from maas_operator.api.trainer import DatasetSpec, Hyperparameters, ModelOptions, TrainerSpec  # noqa: E402
from maas_workloads.train import datasets, models  # noqa: E402
from maas_workloads.train.builtin import _optimizer, _shard, steps_per_epoch  # noqa: E402


def main() -> None:
    result_path, uri, epochs, batch_size, hidden = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = TrainerSpec(
        model="mlp",
        dataset=DatasetSpec(uri=uri),
        model_options=ModelOptions(hidden_size=hidden, layers=2),
        hyperparameters=Hyperparameters(epochs=epochs, batch_size=batch_size),
    )
    hp = spec.hyperparameters
    train, _ = datasets.load(spec.dataset).split(spec.validation_split, hp.seed)
    torch.manual_seed(hp.seed)
    model = nn.parallel.DistributedDataParallel(
        models.build(spec.model, spec.model_options, train.features, train.num_classes)
    )
    optimizer = _optimizer(spec, model.parameters())
    per_epoch = steps_per_epoch(len(train.labels), batch_size, world)
    first_step_at = None
    throughput = []
    for epoch in range(epochs):
        indices = _shard(len(train.labels), epoch, hp.seed, rank, world)
        samples, started = 0, time.perf_counter()
        for batch in range(per_epoch):
            index = indices[batch * batch_size : (batch + 1) * batch_size]
            x = torch.as_tensor(np.array(train.features[index]))
            y = torch.as_tensor(np.array(train.labels[index]))
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            samples += len(index) * world
            if first_step_at is None:
                first_step_at = time.time()
        throughput.append(samples / (time.perf_counter() - started))
    if rank == 0:
        result = {"processStart": START, "firstStepAt": first_step_at, "samplesPerSecond": throughput}
        pathlib.Path(result_path).write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
