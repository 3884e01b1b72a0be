"""How the operator scales: N TrainingJobs against the emulated API server.

Runs the real operator process against KMock's emulator and reports, per job, the API
requests it makes by verb, the time from a job's creation to all its children being
created (p50, p99), the writes it makes in a steady state, and its peak RSS.

    python benchmarks/operator_scale.py [--jobs 300] [--steady-seconds 60]

Prints a table and writes benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp
import kmock

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "workloads")]

from tests.operator.emulator import (  # noqa: E402
    Cluster,
    OperatorProcess,
    declare_resources,
    pod_status,
    write_kubeconfig,
)

RESULTS = REPO / "benchmarks" / "results" / "operator_scale.json"
WORKERS = 2
CHILDREN = 2 + WORKERS  # head Service, head pod, worker pods
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


class TimedEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """The emulator, noting when each request arrived (its request log has no clock)."""

    arrivals: list[tuple[float, str, str, str]]

    async def _handle(self, request: Any) -> Any:
        name = ""
        if isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name") or ""
        self.arrivals.append((time.monotonic(), str(request.method).upper().rsplit(".", 1)[-1], str(request.url), name))
        return await super()._handle(request)


def trainingjob(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"job-{index:04d}"},
        "spec": {
            "trainer": {"model": "mlp", "dataset": {"uri": "sklearn:digits"}},
            "workers": {"replicas": WORKERS},
            "output": {"uri": f"s3://models/job-{index:04d}"},
        },
    }


def is_benchmark_request(method: str, url: str) -> bool:
    """Requests the benchmark itself makes while playing the user and the kubelet."""
    path = url.split("?", maxsplit=1)[0]
    return (method == "POST" and path.endswith("/trainingjobs")) or (method == "PATCH" and "/pods/" in path)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


async def run(jobs: int, steady_seconds: float, resync_seconds: float) -> dict[str, Any]:
    emulator = TimedEmulator()
    emulator.arrivals = []
    async with emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as session:
        declare_resources(emulator)
        cluster = Cluster(emulator, str(server.url), session)
        with tempfile.TemporaryDirectory() as scratch:
            operator = OperatorProcess(
                write_kubeconfig(cluster.url, pathlib.Path(scratch)),
                pathlib.Path(scratch) / "operator.log",
                {"MAAS_OPERATOR_RESYNC_SECONDS": str(resync_seconds)},
            )
            operator.start()
            assert operator.process is not None
            pid = operator.process.pid
            try:
                await asyncio.sleep(3)  # let kopf list and start watching
                created_at: dict[str, float] = {}
                for index in range(jobs):
                    body = trainingjob(index)
                    created_at[body["metadata"]["name"]] = time.monotonic()
                    await cluster.create(body)

                async def all_children() -> bool:
                    return len(await cluster.list("Pod")) >= jobs * (1 + WORKERS)

                await wait_until(all_children, 300, "every child pod")
                # Play the kubelet: every pod runs.
                for pod in await cluster.list("Pod"):
                    await cluster.patch("Pod", pod["metadata"]["name"], {"status": pod_status("Running")}, "status")

                async def all_running() -> bool:
                    items = await cluster.list("TrainingJob")
                    return sum((i.get("status") or {}).get("phase") == "Running" for i in items) == jobs

                await wait_until(all_running, 300, "every TrainingJob Running")
                await asyncio.sleep(2 * resync_seconds)  # let in-flight reconciles settle
                steady_start = time.monotonic()
                await asyncio.sleep(steady_seconds)
                steady_end = time.monotonic()
                rss = peak_rss_mb(pid)
            finally:
                operator.stop()

    operator_requests = [a for a in emulator.arrivals if not is_benchmark_request(a[1], a[2])]
    by_verb: collections.Counter[str] = collections.Counter()
    for _, method, url, _ in operator_requests:
        kind = url.split("?")[0].rstrip("/").split("/")
        resource = next((part for part in reversed(kind) if part in {"pods", "services", "events", "status"}), "other")
        if "watch=" in url:
            resource = "watch"
        by_verb[f"{method} {resource}"] += 1

    children_done: dict[str, float] = {}
    for stamp, method, url, name in operator_requests:
        path = url.split("?")[0]
        if method == "POST" and (path.endswith("/pods") or path.endswith("/services")):
            job = name.rsplit("-head", 1)[0].rsplit("-worker-", 1)[0]
            children_done[job] = max(children_done.get(job, 0.0), stamp)
    latencies = [children_done[job] - created_at[job] for job in created_at if job in children_done]
    steady_writes = [a for a in operator_requests if steady_start <= a[0] <= steady_end and a[1] in WRITE_VERBS]
    pod_creates = by_verb["POST pods"]
    return {
        "jobs": jobs,
        "workersPerJob": WORKERS,
        "resyncSeconds": resync_seconds,
        "requestsPerJobByVerb": {key: round(count / jobs, 3) for key, count in sorted(by_verb.items())},
        "podCreatesPerPod": round(pod_creates / (jobs * (1 + WORKERS)), 3),
        "statusPatchesPerJob": round(by_verb["PATCH status"] / jobs, 3),
        "timeToChildrenSeconds": {
            "p50": round(statistics.median(latencies), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
        },
        "jobsWithAllChildren": len(latencies),
        "steadyStateSeconds": steady_seconds,
        "steadyStateWrites": len(steady_writes),
        "peakRssMb": round(rss, 1),
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("TrainingJobs", str(result["jobs"]), ""),
        ("pod creates per pod", str(result["podCreatesPerPod"]), "goal 1.0"),
        ("status patches per job", str(result["statusPatchesPerJob"]), "only on change"),
        ("time to children p50", f"{result['timeToChildrenSeconds']['p50']} s", ""),
        ("time to children p99", f"{result['timeToChildrenSeconds']['p99']} s", ""),
        (f"writes in {result['steadyStateSeconds']:.0f} s steady state", str(result["steadyStateWrites"]), "goal 0"),
        ("operator peak RSS", f"{result['peakRssMb']} MB", "goal < 200 MB"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, goal in rows:
        print(f"{label:<{width}}  {value:>10}  {goal}")
    print("requests per job by verb:")
    for verb, count in result["requestsPerJobByVerb"].items():
        print(f"  {verb:<20} {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.jobs, args.steady_seconds, args.resync_seconds))
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
