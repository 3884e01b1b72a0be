"""Causal-LM fine-tuning: our trainer on 2 Ray workers against torchrun running the same FSDP2 code,
and per-worker peak memory with FSDP against DDP.

1. Throughput. The same base model (a Llama-shaped model with random weights, written as a
   Hugging Face directory), data (synthetic:arithmetic chat, packed), batch, sequence length and
   steps, full fine-tuning with FSDP2 on 2 workers, one torch thread each: ours (our launcher: a
   Ray head and 2 worker nodes as local processes, as a TrainingJob's pods run it) against
   `torchrun --nproc_per_node 2 benchmarks/torchrun_llm_peer.py` (the trainer's own data
   preparation, model, sharding and step function, without Ray). Tokens per second: the median
   of per-step rates after the warm-up steps. The two sides run back to back in each of several
   rounds, which alternate which side goes first; each round's pair saw about the same machine
   load, so the result is the median of the rounds' ratios, with their spread. And seconds from
   launch to the first step (the median over the rounds).
2. Memory. Full fine-tuning of a larger model (~220M parameters, 32,000-token vocabulary like
   Llama 2's) for a few steps on 2 workers, FSDP then DDP, ours both times: the peak resident
   memory of the busiest worker, as the trainer reports it (`peak_memory_bytes`). The same runs
   under torchrun also record each process's memory before the model is loaded (interpreter,
   torch, transformers), which no sharding shrinks: the peak above it is what FSDP divides.

    python benchmarks/llm_train.py [--rounds 6] [--steps 30] [--memory-steps 3]

Prints a table and writes benchmarks/results/llm_train.json, with the machine's load (`uptime`)
before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "workloads")]

from tests.workloads.train.cluster import LocalJob, spec  # noqa: E402

WORKERS = 2
WARMUP_STEPS = 5
DATA = "synthetic:arithmetic?samples=6000"
THROUGHPUT_MODEL: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
}
MEMORY_MODEL: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "vocab_size": 32000,
}
"""A real vocabulary: its embeddings and output head (2 x 32,000 x 1,024) are 30% of the parameters, as
in small released models; the tokenizer trained on the data uses the first few hundred rows."""


def uptime() -> str:
    """The machine's load averages, as `uptime` prints them."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def make_base(directory: pathlib.Path, shape: dict[str, Any]) -> int:
    """A random-weight Llama (with a tokenizer trained on the data) as a Hugging Face directory; its parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maas_workloads.train.llm import synthetic
    from maas_workloads.train.llm.tokenizer import texts_of, train_tokenizer

    records = synthetic.conversations(synthetic.ArithmeticOptions.parse(DATA))
    tokenizer = train_tokenizer(texts_of(records), 512, directory)
    config = LlamaConfig(
        max_position_embeddings=512,
        num_key_value_heads=shape["num_attention_heads"],
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **{"vocab_size": len(tokenizer), **shape},
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def job_spec(base: pathlib.Path, parallelism: str, steps: int, batch_size: int, length: int) -> dict[str, Any]:
    """The TrainingJob spec both sides run: full fine-tuning of `base` on the synthetic chat data."""
    trainer = {
        "causalLM": {"baseModel": {"uri": base.as_uri()}, "parallelism": parallelism, "sequenceLength": length},
        "dataset": {"uri": DATA},
        "hyperparameters": {
            "batchSize": batch_size,
            "maxSteps": steps,
            "learningRate": 1e-4,
            "optimizer": "adamw",
            "validationSplit": 0.0,
        },
    }
    return spec(trainer=trainer, workers={"replicas": WORKERS, "resources": {"cpu": "1"}})


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds the processes have used so far (those that have exited count 0)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _job_processes(local: LocalJob) -> list[psutil.Process]:
    """The launchers and every process under them: Ray's daemons, actors and the training workers."""
    found = []
    for launcher in [local.head, *local.worker_processes]:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(launcher.pid)  # type: ignore[union-attr]
            found += [root, *root.children(recursive=True)]
    return found


def run_ours(workdir: pathlib.Path, job: dict[str, Any], steps: int, tokens_per_step: int) -> dict[str, Any]:
    """Our launcher's run of `job`: per-step tokens/s and peak memory as the progress endpoint reported them,
    and tokens per CPU-second from the warm-up's end to the step before the last (the training workers'
    CPU time, and that of every process of the job), sampled as each step's report arrives."""
    started = time.time()
    local = LocalJob(workdir, job, output_uri=(workdir / "model").as_uri()).start()
    assert local.head is not None
    first_step_at, rates, memory = None, {}, 0.0
    workers: list[psutil.Process] = []
    marks: dict[int, tuple[float, float]] = {}
    try:
        while local.head.poll() is None:
            progress = local.progress() or {}
            step, metrics = progress.get("step", 0), progress.get("metrics", {})
            if step >= 1 and first_step_at is None:
                first_step_at = time.time()
                workers = local.train_worker_processes()
            if WARMUP_STEPS <= step < steps and step not in marks:
                marks[step] = (_cpu_seconds(workers), _cpu_seconds(_job_processes(local)))
            if "tokens_per_second" in metrics:
                rates[step] = metrics["tokens_per_second"]
                memory = max(memory, metrics["peak_memory_bytes"])
            time.sleep(0.05)
        if local.head.returncode != 0:
            raise SystemExit(f"our run failed ({local.head.returncode}):\n{local.log('head')[-3000:]}")
    finally:
        local.stop()
    if first_step_at is None or not memory:
        raise SystemExit(f"no progress report seen in {workdir}")
    steady = [rate for step, rate in rates.items() if step > WARMUP_STEPS]
    result = {
        "tokensPerSecond": statistics.median(steady) if steady else None,
        "stepsSeen": len(steady),
        "secondsToFirstStep": first_step_at - started,
        "wallSeconds": time.time() - started,
        "peakMemoryBytes": memory,
    }
    if len(marks) >= 2:
        (a, (workers_a, all_a)), (b, (workers_b, all_b)) = min(marks.items()), max(marks.items())
        result["tokensPerWorkerCpuSecond"] = (b - a) * tokens_per_step / (workers_b - workers_a)
        result["tokensPerCpuSecond"] = (b - a) * tokens_per_step / (all_b - all_a)
    return result


def run_torchrun(workdir: pathlib.Path, job: dict[str, Any], steps: int) -> dict[str, Any]:
    """torchrun's run of `job` with the peer: per-step tokens/s from its step start times, tokens per CPU-second
    of its two ranks (torchrun's own agent process is not counted), peak memory and the memory before loading
    the model (the largest of the workers' each)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / "peer-spec.json", workdir / "peer.json"
    spec_path.write_text(json.dumps(job))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORKERS}",
        str(REPO / "benchmarks" / "torchrun_llm_peer.py"),
        str(result_path),
        str(spec_path),
        str(steps),
    ]
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(result_path.read_text())
    starts, tokens, cpu = result["stepStarts"], result["tokens"], result["cpuSeconds"]
    rates = [tokens[i] / (starts[i + 1] - starts[i]) for i in range(WARMUP_STEPS, len(tokens))]
    # The same window as ours: from the end of the warm-up to the end of the step before the last.
    last = len(tokens) - 1
    cpu_rate = sum(tokens[WARMUP_STEPS:last]) / (cpu[last] - cpu[WARMUP_STEPS]) if last > WARMUP_STEPS else None
    return {
        "tokensPerWorkerCpuSecond": cpu_rate,
        "tokensPerSecond": statistics.median(rates) if rates else None,
        "stepsSeen": len(rates),
        "secondsToFirstStep": starts[1] - started,
        "wallSeconds": time.time() - started,
        "peakMemoryBytes": max(result["peakMemoryBytes"]),
        "baselineMemoryBytes": max(result["baselineMemoryBytes"]),
        "losses": result["losses"],
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """One side's runs over the rounds: the medians of their tokens/s, tokens per CPU-second, seconds to the
    first step and wall seconds."""
    keys = ("tokensPerSecond", "tokensPerWorkerCpuSecond", "tokensPerCpuSecond", "secondsToFirstStep", "wallSeconds")
    return {key: statistics.median(float(run[key]) for run in runs) for key in keys if key in runs[0]}


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (statistics.quantiles, inclusive method: within the values' range)."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def main() -> None:
    """Run both measurements, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6, help="alternated runs of each side; the median ratio counts")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: at least 2, for the spread of the rounds' ratios")
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="llm-train-bench-") as scratch:
        workdir = pathlib.Path(scratch)
        small, large = workdir / "base-small", workdir / "base-large"
        small_parameters = make_base(small, THROUGHPUT_MODEL)
        throughput_job = job_spec(small, "fsdp", args.steps, args.batch_size, args.sequence_length)
        tokens_per_step = WORKERS * args.batch_size * args.sequence_length  # packed: every sequence is full
        # Alternated rounds: other work on a shared machine comes and goes, so each round's pair is compared;
        # the side that goes first alternates too, so neither always follows the other's load.
        rounds = []
        for n in range(args.rounds):
            sides = {
                "ours": lambda n=n: run_ours(workdir / f"ours-{n}", throughput_job, args.steps, tokens_per_step),
                "torchrun": lambda: run_torchrun(workdir, throughput_job, args.steps),
            }
            order = ["ours", "torchrun"] if n % 2 == 0 else ["torchrun", "ours"]
            measured = {side: sides[side]() for side in order}
            rounds.append({**measured, "first": order[0], "load": uptime()})
            print(f"round {n}: ours {measured['ours']}\n         torchrun {measured['torchrun']}", flush=True)
        if any(r[side]["tokensPerSecond"] is None for r in rounds for side in ("ours", "torchrun")):
            raise SystemExit("too few steps after the warm-up were reported; raise --steps")
        ratios = [r["ours"]["tokensPerSecond"] / r["torchrun"]["tokensPerSecond"] for r in rounds]
        # Tokens per CPU-second hardly depend on how much of the CPU other work left each side.
        cpu_ratios = [r["ours"]["tokensPerWorkerCpuSecond"] / r["torchrun"]["tokensPerWorkerCpuSecond"] for r in rounds]
        all_cpu_ratios = [r["ours"]["tokensPerCpuSecond"] / r["torchrun"]["tokensPerWorkerCpuSecond"] for r in rounds]
        ours, peer = (summary([r[side] for r in rounds]) for side in ("ours", "torchrun"))
        large_parameters = make_base(large, MEMORY_MODEL)
        memory, peer_memory = {}, {}
        for parallelism in ("fsdp", "ddp"):
            memory_job = job_spec(large, parallelism, args.memory_steps, 1, 64)
            memory[parallelism] = run_ours(workdir / parallelism, memory_job, args.memory_steps, WORKERS * 64)
            # The same code under torchrun, to split the peak into the process's own and the training's.
            peer_memory[parallelism] = run_torchrun(workdir / f"peer-{parallelism}", memory_job, args.memory_steps)
            print(f"memory, {parallelism}: ours {memory[parallelism]}, torchrun {peer_memory[parallelism]}", flush=True)
    above = {k: v["peakMemoryBytes"] - v["baselineMemoryBytes"] for k, v in peer_memory.items()}
    result = {
        "benchmark": "llm_train",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "device": "cpu"},
        "loadBefore": load_before,
        "loadAfter": uptime(),
        "throughput": {
            "model": {**THROUGHPUT_MODEL, "parameters": small_parameters},
            "steps": args.steps,
            "batchSizePerWorker": args.batch_size,
            "sequenceLength": args.sequence_length,
            "workers": WORKERS,
            "rounds": args.rounds,
            "ours": ours,
            "torchrun": peer,
            "allRounds": [
                {
                    "first": r["first"],
                    "ours": r["ours"]["tokensPerSecond"],
                    "torchrun": r["torchrun"]["tokensPerSecond"],
                    "ratio": ratio,
                    "workerCpuRatio": cpu_ratio,
                    "allProcessesCpuRatio": all_cpu_ratio,
                    "oursSecondsToFirstStep": r["ours"]["secondsToFirstStep"],
                    "torchrunSecondsToFirstStep": r["torchrun"]["secondsToFirstStep"],
                    "loadAfter": r["load"],
                }
                for r, ratio, cpu_ratio, all_cpu_ratio in zip(rounds, ratios, cpu_ratios, all_cpu_ratios, strict=True)
            ],
            "tokensPerSecondRatio": statistics.median(ratios),
            "ratioQuartiles": quartiles(ratios),
            "ratioRange": [min(ratios), max(ratios)],
            "tokensPerWorkerCpuSecondRatio": statistics.median(cpu_ratios),
            "workerCpuRatioRange": [min(cpu_ratios), max(cpu_ratios)],
            "tokensPerCpuSecondAllProcessesRatio": statistics.median(all_cpu_ratios),
            "allProcessesCpuRatioRange": [min(all_cpu_ratios), max(all_cpu_ratios)],
        },
        "memory": {
            "model": {**MEMORY_MODEL, "parameters": large_parameters},
            "steps": args.memory_steps,
            "fsdpPeakBytes": memory["fsdp"]["peakMemoryBytes"],
            "ddpPeakBytes": memory["ddp"]["peakMemoryBytes"],
            "fsdpOverDdp": memory["fsdp"]["peakMemoryBytes"] / memory["ddp"]["peakMemoryBytes"],
            "torchrun": {
                "fsdpPeakBytes": peer_memory["fsdp"]["peakMemoryBytes"],
                "ddpPeakBytes": peer_memory["ddp"]["peakMemoryBytes"],
                "fsdpBaselineBytes": peer_memory["fsdp"]["baselineMemoryBytes"],
                "ddpBaselineBytes": peer_memory["ddp"]["baselineMemoryBytes"],
                "fsdpOverDdp": peer_memory["fsdp"]["peakMemoryBytes"] / peer_memory["ddp"]["peakMemoryBytes"],
                "aboveBaselineFsdpOverDdp": above["fsdp"] / above["ddp"],
            },
        },
    }
    out = REPO / "benchmarks" / "results" / "llm_train.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    gib = 2**30
    rows = [
        ("", "ours (launcher + Ray Train, FSDP2)", "torchrun + the same FSDP2 code", "ratio"),
        (
            f"tokens/s (median of steps > {WARMUP_STEPS}; median over {args.rounds} rounds)",
            f"{ours['tokensPerSecond']:,.0f}",
            f"{peer['tokensPerSecond']:,.0f}",
            f"{statistics.median(ratios):.2f} (median of the rounds' ratios; goal >= 0.95)",
        ),
        (
            "the rounds' ratios: quartiles, range",
            "",
            "",
            "{:.2f}-{:.2f}, {:.2f}-{:.2f}".format(*quartiles(ratios), min(ratios), max(ratios)),
        ),
        (
            "tokens per CPU-second of the 2 training processes (median; the rounds' range)",
            f"{ours['tokensPerWorkerCpuSecond']:,.0f}",
            f"{peer['tokensPerWorkerCpuSecond']:,.0f}",
            f"{statistics.median(cpu_ratios):.2f} ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f})",
        ),
        (
            "the same, ours counting every process of the job (Ray's daemons and actors too)",
            f"{ours['tokensPerCpuSecond']:,.0f}",
            "",
            f"{statistics.median(all_cpu_ratios):.2f} ({min(all_cpu_ratios):.2f}-{max(all_cpu_ratios):.2f})",
        ),
        (
            "seconds from launch to the first step (median)",
            f"{ours['secondsToFirstStep']:.1f}",
            f"{peer['secondsToFirstStep']:.1f}",
            "",
        ),
        ("", "FSDP2 (ours)", "DDP (ours)", "FSDP / DDP"),
        (
            f"peak memory per worker, {large_parameters / 1e6:.0f}M parameters",
            f"{memory['fsdp']['peakMemoryBytes'] / gib:.2f} GiB",
            f"{memory['ddp']['peakMemoryBytes'] / gib:.2f} GiB",
            f"{memory['fsdp']['peakMemoryBytes'] / memory['ddp']['peakMemoryBytes']:.2f} (goal <= 0.65)",
        ),
        (
            "the same under torchrun, above each process's memory before loading the model",
            f"{above['fsdp'] / gib:.2f} GiB",
            f"{above['ddp'] / gib:.2f} GiB",
            f"{above['fsdp'] / above['ddp']:.2f}",
        ),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("rounds' ratios, in order: " + ", ".join(f"{ratio:.2f}" for ratio in ratios))
    print(f"load before: {load_before}\nload after:  {result['loadAfter']}\nwrote {out}")


if __name__ == "__main__":
    main()
