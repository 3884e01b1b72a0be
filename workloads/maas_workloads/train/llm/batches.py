"""Which sequences each worker trains on at each step, and how many steps a run has.

Materialized data (every worker holds the same token blocks): each epoch is a permutation of the
blocks (seeded by the epoch); step s of the epoch trains on the global batch of G = batchSize x
workers x gradientAccumulationSteps blocks at `offset`, and worker r takes its consecutive
slice. The same blocks form each global batch whatever the number of workers, and a run resumed
on a different number continues at the same sequence.

Streamed data (Ray Data): each worker iterates its equal split of the stream; a resumed epoch
skips the batches it had already trained on (the order within an epoch may differ).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maas_operator.api.trainer import Hyperparameters
from maas_workloads.train.llm.encoding import IGNORE_INDEX, TokenBlocks
from maas_workloads.train.llm.state import Position

Batch = dict[str, torch.Tensor]
"""input_ids and labels (B, L) int64, lengths (B,), attention_mask (B, L) when any row is padded."""


def to_batch(input_ids: Any, labels: Any, lengths: Any, device: torch.device) -> Batch:
    """Tensors for the model, cut to the batch's longest sequence."""
    lengths_tensor = torch.tensor(np.asarray(lengths), dtype=torch.int64)
    width = int(lengths_tensor.max())
    batch: Batch = {
        "input_ids": torch.tensor(np.asarray(input_ids)[:, :width], dtype=torch.int64).to(device),
        "labels": torch.tensor(np.asarray(labels)[:, :width], dtype=torch.int64).to(device),
        "lengths": lengths_tensor,
    }
    if int(lengths_tensor.min()) < width:
        positions = torch.arange(width).unsqueeze(0)
        batch["attention_mask"] = (positions < lengths_tensor.unsqueeze(1)).to(torch.int64).to(device)
    return batch


class Batches:
    """The training batches of one worker."""

    def __init__(
        self,
        blocks: TokenBlocks | None,
        shard: Any,
        hp: Hyperparameters,
        rank: int,
        world: int,
        accumulation: int,
        device: torch.device,
    ) -> None:
        self.blocks = blocks
        self.shard = shard
        """Ray Data's DataIterator of this worker when the data is streamed."""
        self.hp = hp
        self.rank = rank
        self.world = world
        self.accumulation = accumulation
        self.device = device
        self.micro_batch = hp.batch_size
        self.global_batch = hp.batch_size * world * accumulation

    def total_steps(self, position: Position) -> int:
        """Steps of the whole run, from where `position` stands (maxSteps caps it)."""
        cap = self.hp.max_steps or math.inf
        if self.blocks is None:
            return int(cap)
        per_epoch = len(self.blocks) // self.global_batch
        left_in_epoch = max(0, (len(self.blocks) - position.offset) // self.global_batch)
        later_epochs = max(0, self.hp.epochs - position.epoch - 1) * per_epoch
        remaining = left_in_epoch + later_epochs if position.epoch < self.hp.epochs else 0
        return int(min(cap, position.step + remaining))

    def epoch_finished(self, position: Position) -> bool:
        """Whether the epoch has no full global batch left after `position` (materialized data)."""
        return self.blocks is not None and len(self.blocks) - position.offset < self.global_batch

    def epoch(self, position: Position) -> Iterator[list[Batch]]:
        """This worker's micro-batches of each remaining step of the epoch, from `position`."""
        if self.blocks is None:
            yield from self._streamed(position)
            return
        order = np.random.default_rng(self.hp.seed + position.epoch).permutation(len(self.blocks))
        offset = position.offset
        while len(self.blocks) - offset >= self.global_batch:
            start = offset + self.rank * self.micro_batch * self.accumulation
            micro = []
            for index in range(self.accumulation):
                rows = self.blocks.take(
                    order[start + index * self.micro_batch : start + (index + 1) * self.micro_batch]
                )
                micro.append(to_batch(rows.input_ids, rows.labels, rows.lengths, self.device))
            yield micro
            offset += self.global_batch

    def _streamed(self, position: Position) -> Iterator[list[Batch]]:
        skip = position.offset // (self.micro_batch * self.world)
        micro: list[Batch] = []
        for index, rows in enumerate(
            self.shard.iter_batches(batch_size=self.micro_batch, batch_format="numpy", drop_last=True)
        ):
            if index < skip:
                continue
            micro.append(to_batch(rows["input_ids"], rows["labels"], rows["lengths"], self.device))
            if len(micro) == self.accumulation:
                yield micro
                micro = []


def evaluation_batches(blocks: TokenBlocks, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """This rank's share (every world-th block), padded with blocks that count no tokens so that every
    rank runs the same number of forward passes (FSDP needs all of them for each)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    index = np.arange(rank, len(blocks), world)
    per_rank = math.ceil(len(blocks) / world)
    padding = per_rank - len(index)
    share = blocks.take(index) if len(index) else blocks.take(np.arange(0))
    if padding:
        filler = blocks.take(np.zeros(padding, dtype=np.int64))
        share = TokenBlocks(
            np.concatenate([share.input_ids, filler.input_ids]),
            np.concatenate([share.labels, np.full_like(filler.labels, IGNORE_INDEX)]),
            np.concatenate([share.lengths, filler.lengths]),
        )
    for start in range(0, per_rank, batch_size):
        rows = share.take(np.arange(start, min(start + batch_size, per_rank)))
        yield to_batch(rows.input_ids, rows.labels, rows.lengths, device)
