"""Inference throughput: our server vs KServe's Python ModelServer vs the raw model in-process.

Both servers load the same TorchScript artifact (the digits MLP and a heavier 4x2048 MLP) and
answer the same Open Inference Protocol v2 JSON request (one row). A closed-loop load
generator, in its own process and part of neither server, keeps `c` requests in flight on `c`
keep-alive connections for a fixed duration at each concurrency, `--repeats` times with the
contenders alternating (the machine is shared: the run with the median throughput counts,
every run's throughput is in the JSON). The raw model is called
in-process at several batch sizes with the same torch thread count as the servers, before and
after the servers run; its best rows/s is the physical limit on this machine.

    python benchmarks/serve_throughput.py [--duration 5] [--repeats 3] [--concurrency 1 8 32 64]

Prints a table and writes benchmarks/results/serve_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workloads")]
RESULTS = REPO / "benchmarks" / "results" / "serve_throughput.json"
THREADS = "1"
"""torch threads for every contender: two shared cores, one for the model, one for HTTP."""
WARMUP_SECONDS = 1.0


# --- the load generator (runs in its own process) -----------------------------------------
async def _worker(
    host: str, port: int, request: bytes, stop_at: float, count_from: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    clock = time.perf_counter  # uvloop's loop.time() has only millisecond resolution
    try:
        while (started := clock()) < stop_at:
            writer.write(request)
            status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
            length, chunked = 0, False
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
                    await reader.readexactly(size + 2)
                await reader.readuntil(b"\r\n")
            else:
                await reader.readexactly(length)
            if started >= count_from:
                if status == 200:
                    latencies.append(clock() - started)
                else:
                    errors += 1
    finally:
        writer.close()
    return errors


async def _load(host: str, port: int, path: str, body: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    count_from = time.perf_counter() + WARMUP_SECONDS
    stop_at = count_from + duration
    latencies: list[float] = []
    errors = await asyncio.gather(
        *(_worker(host, port, request, stop_at, count_from, latencies) for _ in range(concurrency))
    )
    latencies.sort()
    quantile = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": sum(errors),
        "throughput": len(latencies) / duration,
        "p50_ms": quantile(0.50) if latencies else None,
        "p99_ms": quantile(0.99) if latencies else None,
    }


def load_generator_main(arguments: list[str]) -> None:
    host, port, path, body_file, concurrency, duration = arguments
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    body = pathlib.Path(body_file).read_bytes()
    print(json.dumps(asyncio.run(_load(host, int(port), path, body, int(concurrency), float(duration)))))


# --- models, servers, raw ------------------------------------------------------------------
def build_artifacts(root: pathlib.Path) -> dict[str, pathlib.Path]:
    import torch
    from safetensors.torch import save_file

    from maas_workloads.artifact import TensorManifest, TensorSpec, describe_files, write_manifest

    torch.manual_seed(0)

    def mlp(widths: list[int]) -> torch.nn.Module:
        layers: list[torch.nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [torch.nn.Linear(width_in, width_out), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1]).eval()

    models = {"digits": mlp([64, 128, 10]), "mlp4x2048": mlp([64, 2048, 2048, 2048, 2048, 10])}
    directories = {}
    for name, module in models.items():
        directory = root / name
        directory.mkdir()
        torch.jit.script(module).save(str(directory / "model.pt"))
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, directory / "model.safetensors")
        manifest = TensorManifest(
            format="torchscript",
            modelFile="model.pt",
            weightsFile="model.safetensors",
            inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 64])],
            outputs=[TensorSpec(name="output", datatype="FP32", shape=[-1, 10])],
            files=describe_files(directory),
        )
        write_manifest(directory, manifest)
        directories[name] = directory
    return directories


def raw_throughput(artifact: pathlib.Path, seconds: float = 1.0, rounds: int = 3) -> dict[int, float]:
    """Rows/s of the model called directly, per batch size, in a fresh process with THREADS threads.

    The sweep is repeated and the best of each batch size kept: on a shared machine the best
    observed rate is the closest estimate of the physical limit.
    """
    code = f"""
import json, time, torch
torch.set_num_threads({THREADS})
model = torch.jit.load({str(artifact / "model.pt")!r}).eval()
result = {{}}
for _ in range({rounds}):
    for batch in (1, 8, 32, 64, 128, 256):
        x = torch.rand(batch, 64)
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            rows, started = 0, time.perf_counter()
            while time.perf_counter() - started < {seconds}:
                model(x)
                rows += batch
        result[batch] = max(result.get(batch, 0.0), rows / (time.perf_counter() - started))
print(json.dumps(result))
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {int(batch): rate for batch, rate in json.loads(output).items()}


def summarize_raw(*sweeps: dict[int, float]) -> dict[str, Any]:
    by_batch = {batch: max(sweep[batch] for sweep in sweeps) for batch in sweeps[0]}
    best = max(by_batch, key=lambda batch: by_batch[batch])
    return {"by_batch": by_batch, "best_batch": best, "throughput": by_batch[best]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(command: list[str], log: pathlib.Path, port: int, ready_path: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "PYTHONPATH": str(REPO / "workloads")}
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(f"GET {ready_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if b" 200 " in connection.recv(100):
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[:3]} never became ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_load(port: int, path: str, body: pathlib.Path, concurrency: int, duration: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--load-generator", "127.0.0.1", str(port), path, str(body)]
    output = subprocess.run([*command, str(concurrency), str(duration)], capture_output=True, text=True, check=True)
    return dict(json.loads(output.stdout))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load-generator":
        load_generator_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per concurrency")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender and concurrency (median kept)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--models", nargs="+", default=["digits", "mlp4x2048"])
    parser.add_argument("--max-batch-size", type=int, default=64, help="our server's maxBatchSize")
    options = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="serve-bench-"))
    artifacts = build_artifacts(workdir)
    body = workdir / "request.json"
    body.write_text(
        json.dumps(
            {"id": "bench", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
        )
    )

    results: dict[str, Any] = {}
    for name in options.models:
        artifact = artifacts[name]
        print(f"{name}: raw model in-process ...", flush=True)
        raw_before = raw_throughput(artifact)
        entry: dict[str, Any] = {"servers": {}}
        contenders = {
            "maas": [
                *[sys.executable, "-m", "maas_workloads.serve", "--model", str(artifact), "--model-name", name],
                *["--max-batch-size", str(options.max_batch_size)],
            ],
            "kserve": [sys.executable, str(REPO / "benchmarks" / "kserve_peer.py"), "--artifact", str(artifact)],
        }
        ports = {server: free_port() for server in contenders}
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for server, command in contenders.items():
                extra = ["--port", str(ports[server])] + (["--name", name] if server == "kserve" else [])
                log = workdir / f"{server}-{name}.log"
                processes[server] = start([*command, *extra], log, ports[server], f"/v2/models/{name}/ready")
            entry["servers"] = {server: [] for server in contenders}
            # Contenders alternate at each concurrency, first one then the other going first, so
            # that load from outside the benchmark (the machine is shared) falls on both alike.
            for concurrency in options.concurrency:
                runs: dict[str, list[dict[str, Any]]] = {server: [] for server in contenders}
                for repeat in range(options.repeats):
                    for server in list(contenders)[:: 1 if repeat % 2 == 0 else -1]:
                        print(f"{name}: {server} at concurrency {concurrency} ({repeat + 1}) ...", flush=True)
                        path = f"/v2/models/{name}/infer"
                        runs[server].append(run_load(ports[server], path, body, concurrency, options.duration))
                for server, measured in runs.items():
                    median = sorted(measured, key=lambda run: run["throughput"])[len(measured) // 2]
                    entry["servers"][server].append({**median, "runs": [run["throughput"] for run in measured]})
        finally:
            for process in processes.values():
                stop(process)
        print(f"{name}: raw model in-process again ...", flush=True)
        entry["raw"] = summarize_raw(raw_before, raw_throughput(artifact))
        results[name] = entry

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "duration_seconds": options.duration,
            "repeats": options.repeats,
            "torch_threads": int(THREADS),
            "request": "OIP v2 JSON, one row of 64 FP32",
            "maas": f"maxBatchSize {options.max_batch_size}, otherwise defaults: maxDelayMs 2, access log on",
            "kserve": "kserve.ModelServer, one worker, defaults",
        },
        "models": results,
        "ratios": ratios(results),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def ratios(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entry in results.items():
        rows = []
        for ours, theirs in zip(entry["servers"]["maas"], entry["servers"]["kserve"], strict=True):
            rows.append(
                {
                    "concurrency": ours["concurrency"],
                    "throughput_vs_kserve": ours["throughput"] / theirs["throughput"] if theirs["throughput"] else None,
                    "p99_vs_kserve": ours["p99_ms"] / theirs["p99_ms"] if theirs["p99_ms"] else None,
                    "throughput_vs_raw": ours["throughput"] / entry["raw"]["throughput"],
                    "throughput_vs_raw_at_batch_c": ours["throughput"] / raw_at(entry["raw"], ours["concurrency"]),
                }
            )
        out[name] = rows
    return out


def raw_at(raw: dict[str, Any], concurrency: int) -> float:
    """Raw rows/s at the largest measured batch no bigger than the concurrency: all a closed loop can offer."""
    batch = max(size for size in raw["by_batch"] if size <= concurrency)
    return float(raw["by_batch"][batch])


def table(report: dict[str, Any]) -> str:
    lines = [
        "| model | c | maas req/s | maas p50 / p99 ms | KServe req/s | KServe p50 / p99 ms | vs KServe "
        "| vs raw (best batch) | vs raw (batch c) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report["models"].items():
        for ours, theirs, ratio in zip(
            entry["servers"]["maas"], entry["servers"]["kserve"], report["ratios"][name], strict=True
        ):
            lines.append(
                f"| {name} | {ours['concurrency']} | {ours['throughput']:.0f} "
                f"| {ours['p50_ms']:.1f} / {ours['p99_ms']:.1f} "
                f"| {theirs['throughput']:.0f} | {theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f} "
                f"| {ratio['throughput_vs_kserve']:.1f}x | {ratio['throughput_vs_raw']:.1%} "
                f"| {ratio['throughput_vs_raw_at_batch_c']:.0%} |"
            )
    raws = ", ".join(
        f"{name} {entry['raw']['throughput']:.0f} rows/s (batch {entry['raw']['best_batch']})"
        for name, entry in report["models"].items()
    )
    errors = sum(
        run["errors"] for entry in report["models"].values() for runs in entry["servers"].values() for run in runs
    )
    return "\n".join([*lines, "", f"Raw model in-process: {raws}. Failed requests: {errors}."])


if __name__ == "__main__":
    main()
