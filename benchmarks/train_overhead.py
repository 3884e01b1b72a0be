"""What running through our launcher on Ray Train costs against plain torchrun + DDP (gloo).

The same model (the built-in MLP), data (synthetic classification), batch size, epochs and number
of workers, run in one go: first as a TrainingJob's pods would run it (our launcher: a Ray head
and two worker nodes as local processes, the built-in trainer on TorchTrainer), then with
`torchrun --nproc_per_node 2` and the trainer's own loop (benchmarks/torchrun_peer.py).

Reports training samples per second (median over epochs after the first) and the time from
launch to the first optimizer step, for each, and their ratio.

    python benchmarks/train_overhead.py [--samples 40000] [--epochs 5] [--batch-size 64] [--hidden 256]

Prints a table and writes benchmarks/results/train_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "workloads")]

from tests.workloads.train.cluster import LocalJob, spec, torchrun  # noqa: E402

WORKERS = 2


def run_ours(workdir: pathlib.Path, uri: str, epochs: int, batch_size: int, hidden: int) -> dict[str, Any]:
    trainer = {
        "model": "mlp",
        "dataset": {"uri": uri},
        "hyperparameters": {"epochs": epochs, "batchSize": batch_size},
        "modelOptions": {"hiddenSize": hidden, "layers": 2},
    }
    job_spec = spec(trainer=trainer, workers={"replicas": WORKERS, "resources": {"cpu": "1"}})
    started = time.time()
    job = LocalJob(workdir, job_spec, output_uri=(workdir / "model").as_uri()).start()
    assert job.head is not None
    first_step_at = None
    throughput: dict[int, float] = {}
    try:
        while job.head.poll() is None:
            progress = job.progress()
            if progress and progress.get("step", 0) >= 1 and first_step_at is None:
                first_step_at = time.time()
            if progress and "samples_per_second" in progress.get("metrics", {}):
                throughput[progress["epoch"]] = progress["metrics"]["samples_per_second"]
            time.sleep(0.05)
        if job.head.returncode != 0:
            raise SystemExit(f"our run failed ({job.head.returncode}):\n{job.log('head')[-3000:]}")
    finally:
        job.stop()
    if first_step_at is None or len(throughput) < 2:
        raise SystemExit(f"too few progress reports seen ({throughput}); raise --samples")
    return {
        "samplesPerSecond": [throughput[epoch] for epoch in sorted(throughput)],
        "epochsSeen": sorted(throughput),
        "secondsToFirstStep": first_step_at - started,
        "wallSeconds": time.time() - started,
    }


def run_torchrun(workdir: pathlib.Path, uri: str, epochs: int, batch_size: int, hidden: int) -> dict[str, Any]:
    result = workdir / "torchrun.json"
    arguments = [str(result), uri, str(epochs), str(batch_size), str(hidden)]
    started = torchrun(REPO / "benchmarks" / "torchrun_peer.py", arguments, WORKERS)
    timings = json.loads(result.read_text())
    return {
        "samplesPerSecond": timings["samplesPerSecond"],
        "epochsSeen": list(range(1, epochs + 1)),
        "secondsToFirstStep": timings["firstStepAt"] - started,
        "wallSeconds": time.time() - started,
    }


def steady(samples_per_second: list[float]) -> float:
    """Median over the epochs after the first (which pays for warm-up)."""
    return statistics.median(samples_per_second[1:] or samples_per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    uri = f"synthetic:classification?samples={args.samples}&features=64&classes=10"
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as scratch:
        workdir = pathlib.Path(scratch)
        ours = run_ours(workdir / "ours", uri, args.epochs, args.batch_size, args.hidden)
        peer = run_torchrun(workdir, uri, args.epochs, args.batch_size, args.hidden)
    ours["steadySamplesPerSecond"] = steady(ours["samplesPerSecond"])
    peer["steadySamplesPerSecond"] = steady(peer["samplesPerSecond"])
    result = {
        "benchmark": "train_overhead",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "device": "cpu"},
        "workload": {
            "dataset": uri,
            "model": f"mlp (2 x {args.hidden})",
            "workers": WORKERS,
            "epochs": args.epochs,
            "batchSizePerWorker": args.batch_size,
            "backend": "gloo",
        },
        "ours": ours,
        "torchrun": peer,
        "samplesPerSecondRatio": ours["steadySamplesPerSecond"] / peer["steadySamplesPerSecond"],
    }
    print(f"{'':28}{'ours (launcher + Ray Train)':>30}{'torchrun + DDP':>18}")
    print(
        f"{'samples/s (steady, median)':28}{ours['steadySamplesPerSecond']:>30,.0f}"
        f"{peer['steadySamplesPerSecond']:>18,.0f}"
    )
    print(f"{'seconds to first step':28}{ours['secondsToFirstStep']:>30.1f}{peer['secondsToFirstStep']:>18.1f}")
    print(f"{'wall seconds':28}{ours['wallSeconds']:>30.1f}{peer['wallSeconds']:>18.1f}")
    print(f"samples/s ratio (ours / torchrun): {result['samplesPerSecondRatio']:.2f}")
    output = REPO / "benchmarks" / "results" / "train_overhead.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output.relative_to(REPO)}")


if __name__ == "__main__":
    main()
