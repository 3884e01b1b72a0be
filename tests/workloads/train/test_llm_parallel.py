"""Data parallelism changes nothing but speed: the trainer's loading, sharding (FSDP2 or DDP) and step
function on 2 gloo processes against 1 process accumulating the same micro-batches, for full
fine-tuning and LoRA (plain processes, parallel_worker.py; the Ray-level runs are in test_llm.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.workloads.train.cluster import REPO, free_port

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).with_name("parallel_worker.py")


def start_ranks(base: pathlib.Path, out: pathlib.Path, world: int) -> list[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("workloads", "operator", ".")),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(base), str(out)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]


def results(ranks: list[subprocess.Popen[str]], out: pathlib.Path) -> dict[str, list[float]]:
    for rank in ranks:
        output, _ = rank.communicate(timeout=300)
        assert rank.returncode == 0, output[-3000:]
    return dict(json.loads(out.read_text()))


def test_two_workers_with_fsdp_or_ddp_train_as_one_accumulating(tmp_path: pathlib.Path) -> None:
    """Tolerance 1e-5 relative: the runs add the same numbers in another order (gloo's all-reduce and
    reduce-scatter against local accumulation), ~1e-7 relative here; a mis-scaled gradient (averaged
    once too often, or a loss normalised per worker instead of over the global batch's tokens) moves
    the second step's loss by far more, since SGD at 0.5 follows the gradient's size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    processes = [start_ranks(tmp_path / "base", tmp_path / f"{world}.json", world) for world in (1, 2)]
    try:
        one, two = (results(ranks, tmp_path / f"{world}.json") for world, ranks in zip((1, 2), processes, strict=True))
    finally:
        for process in (p for ranks in processes for p in ranks):
            process.kill()
    for mode, losses in two.items():
        assert len(losses) == 4 and losses[-1] < losses[0], (mode, losses)
        assert losses == pytest.approx(one[mode], rel=1e-5), mode
