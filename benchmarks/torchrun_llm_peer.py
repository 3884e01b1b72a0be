"""The causal-LM trainer's own FSDP2 / DDP step under plain torchrun, for benchmarks/llm_train.py.

    torchrun --nproc_per_node 2 benchmarks/torchrun_llm_peer.py <result.json> <trainingjob-spec.json> <steps>

Same data preparation, model, sharding, optimizer, schedule and step function as a TrainingJob's
workers (maas_workloads.train.llm), without Ray, the launcher, checkpoints or progress reports.
Rank 0 writes the start time of every step, its tokens and global loss, the CPU seconds all ranks had
used when it started (each rank's process time, summed), and every rank's peak memory
and its resident memory before the model was loaded (the interpreter and libraries: what sharding
cannot shrink).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

STARTED = time.time()
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "workloads")]

from maas_operator.api.trainer import DEFAULT_MAX_GRAD_NORM  # noqa: E402
from maas_operator.api.trainingjob import TrainingJobSpec  # noqa: E402
from maas_workloads.train.config import JobContext  # noqa: E402
from maas_workloads.train.llm import loop, modeling  # noqa: E402
from maas_workloads.train.llm.batches import Batches  # noqa: E402
from maas_workloads.train.llm.prepare import prepare  # noqa: E402
from maas_workloads.train.llm.state import Position  # noqa: E402


def _resident_peak() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


def main() -> None:
    """One torchrun rank: argv is <result.json> <trainingjob-spec.json> <steps>."""
    result_path, spec_path, steps = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    job = TrainingJobSpec.model_validate(json.loads(spec_path.read_text()))
    context = JobContext(job, "peer", "default", "peer", 1, "127.0.0.1", 0, world, world, None, "file:///unused", 0)
    prepared = prepare(context, pathlib.Path(tempfile.mkdtemp(prefix=f"peer-{rank}-")))
    trainer = job.trainer
    assert trainer is not None and trainer.causal_lm is not None and prepared.train is not None
    lm, hp = trainer.causal_lm, trainer.hyperparameters
    files = pathlib.Path(tempfile.mkdtemp(prefix=f"peer-files-{rank}-"))
    for name, data in prepared.files.items():
        (files / name).write_bytes(data)
    from transformers import AutoConfig

    device = torch.device("cpu")
    baseline = _resident_peak()
    if lm.base_model is not None:
        source: Any = pathlib.Path(lm.base_model.uri.removeprefix("file://"))
    else:
        source = AutoConfig.from_pretrained(files)
    with modeling.memory_returned_when_freed():
        model = modeling.load(lm, source, device, hp.mixed_precision, hp.seed)
        model = modeling.parallelize(model, lm.parallelism, device, hp.mixed_precision)
    optimizer = loop.build_optimizer(trainer, model)
    batches = Batches(prepared.train, None, hp, rank, world, hp.gradient_accumulation_steps or 1, device)
    scheduler = loop.build_scheduler(hp, optimizer, batches.total_steps(Position()))
    position = Position()
    times: list[float] = []
    cpu_times: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []
    model.train()
    while len(times) < steps:
        for micro_batches in batches.epoch(position):
            times.append(time.time())
            cpu_times.append(time.process_time())
            loss_share, processed = loop.train_step(
                model, optimizer, scheduler, micro_batches, world, device, contextlib.nullcontext, DEFAULT_MAX_GRAD_NORM
            )
            tokens.append(processed * world)
            losses.append(loss_share)
            position.offset += batches.global_batch
            if len(times) == steps:
                break
        position.epoch, position.offset = position.epoch + 1, 0
    dist.barrier()
    times.append(time.time())
    global_losses = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(global_losses)
    cpu_seconds = torch.tensor(cpu_times, dtype=torch.float64)
    dist.all_reduce(cpu_seconds)
    memory = torch.tensor([_resident_peak(), baseline], dtype=torch.float64)
    gathered = [torch.zeros_like(memory) for _ in range(world)]
    dist.all_gather(gathered, memory)
    if rank == 0:
        result = {
            "started": STARTED,
            "stepStarts": times,
            "tokens": tokens,
            "losses": global_losses.tolist(),
            "cpuSeconds": cpu_seconds.tolist(),
            "peakMemoryBytes": [float(m[0]) for m in gathered],
            "baselineMemoryBytes": [float(m[1]) for m in gathered],
        }
        result_path.write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
