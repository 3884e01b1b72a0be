"""How the operator scales: N TrainingJobs and M ModelServices against the emulated API server.

Runs the real operator process against KMock's emulator and reports, per object kind, the
API requests it makes by verb, the time from an object's creation to all its children being
created (p50, p99), the writes it makes in a steady state, and its peak RSS.

    python benchmarks/operator_scale.py [--jobs 300] [--services 300] [--steady-seconds 60]

`--jobs 300 --services 0` and `--jobs 0 --services 300` measure each kind alone.

Prints a table and writes benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
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

from tests.operator.apiserver import ApiServer  # noqa: E402
from tests.operator.emulator import (  # noqa: E402
    Cluster,
    OperatorProcess,
    declare_resources,
    pod_status,
    write_kubeconfig,
)

RESULTS = REPO / "benchmarks" / "results" / "operator_scale.json"
WORKERS = 2
SERVING_REPLICAS = 2
TRAININGJOB_CHILDREN = ("pods", "services", "networkpolicies")
MODELSERVICE_CHILDREN = ("deployments", "services", "poddisruptionbudgets")
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


class TimedEmulator(ApiServer):
    """The test emulator (server-side apply, admission), noting when each request arrived."""

    arrivals: list[tuple[float, str, str, str]]

    async def _handle(self, request: Any) -> Any:
        name = ""
        if isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name") or ""
        self.arrivals.append((time.monotonic(), str(request.method).upper().rsplit(".", 1)[-1], str(request.url), name))
        # kmock matches each request against its whole request log (quadratic over a long run);
        # the arrivals above are the benchmark's log, so kmock keeps only the current request.
        del self._requests[:-1]
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


def modelservice(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": f"svc-{index:04d}"},
        "spec": {
            "model": {"uri": f"s3://models/svc-{index:04d}", "sha256": f"{index:064x}"},
            "replicas": SERVING_REPLICAS,
        },
    }


def is_benchmark_request(method: str, url: str) -> bool:
    """Requests the benchmark itself makes while playing the user, the kubelet and the Deployment controller."""
    path = url.split("?", maxsplit=1)[0]
    created = path.endswith("/trainingjobs") or path.endswith("/modelservices")
    return (method == "POST" and created) or (
        method == "PATCH" and ("/pods/" in path or (path.endswith("/status") and "/deployments/" in path))
    )


def owner_of(child: str) -> str:
    """The object a child belongs to, from the naming conventions (job-N-head, job-N-worker-i, svc-N)."""
    return child.rsplit("-head", 1)[0].rsplit("-worker-", 1)[0]


def rolled_out(deployment: dict[str, Any]) -> dict[str, Any]:
    replicas = deployment["spec"].get("replicas", 1)
    return {
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: unlike wall-clock times, barely moved by other load."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def run(jobs: int, services: int, steady_seconds: float, resync_seconds: float) -> dict[str, Any]:
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
                bodies = [trainingjob(i) for i in range(jobs)] + [modelservice(i) for i in range(services)]
                for body in bodies:
                    created_at[body["metadata"]["name"]] = time.monotonic()
                    await cluster.create(body)

                async def all_children() -> bool:
                    pods = len(await cluster.list("Pod")) >= jobs * (1 + WORKERS)
                    return pods and len(await cluster.list("PodDisruptionBudget")) >= services

                await wait_until(all_children, 600, "every child")
                # Play the kubelet and the Deployment controller: everything runs.
                for pod in await cluster.list("Pod"):
                    await cluster.patch("Pod", pod["metadata"]["name"], {"status": pod_status("Running")}, "status")
                for deployment in await cluster.list("Deployment"):
                    await cluster.patch("Deployment", deployment["metadata"]["name"], rolled_out(deployment), "status")

                async def all_settled() -> bool:
                    running = await cluster.list("TrainingJob")
                    ready = await cluster.list("ModelService")
                    return (
                        sum((i.get("status") or {}).get("phase") == "Running" for i in running) == jobs
                        and sum((i.get("status") or {}).get("phase") == "Ready" for i in ready) == services
                    )

                await wait_until(all_settled, 600, "every TrainingJob Running and ModelService Ready")
                await asyncio.sleep(2 * resync_seconds)  # let in-flight reconciles settle
                steady_start = time.monotonic()
                await asyncio.sleep(steady_seconds)
                steady_end = time.monotonic()
                rss = peak_rss_mb(pid)
                cpu = cpu_seconds(pid)
            finally:
                operator.stop()

    operator_requests = [a for a in emulator.arrivals if not is_benchmark_request(a[1], a[2])]
    return {
        "trainingJobs": jobs,
        "modelServices": services,
        "workersPerJob": WORKERS,
        "replicasPerService": SERVING_REPLICAS,
        "resyncSeconds": resync_seconds,
        "trainingJob": per_kind(operator_requests, created_at, "job-", jobs, TRAININGJOB_CHILDREN),
        "modelService": per_kind(operator_requests, created_at, "svc-", services, MODELSERVICE_CHILDREN),
        "watchRequests": sum("watch=" in url for _, _, url, _ in operator_requests),
        "steadyStateSeconds": steady_seconds,
        "steadyStateWrites": sum(
            steady_start <= stamp <= steady_end and method in WRITE_VERBS for stamp, method, _, _ in operator_requests
        ),
        "peakRssMb": round(rss, 1),
        "operatorCpuSeconds": round(cpu, 1),
    }


def per_kind(
    requests: list[tuple[float, str, str, str]],
    created_at: dict[str, float],
    prefix: str,
    count: int,
    children: tuple[str, ...],
) -> dict[str, Any]:
    """Requests per object by verb and resource, and the time from create to its last child create."""
    if count == 0:
        return {}
    by_verb: collections.Counter[str] = collections.Counter()
    children_done: dict[str, float] = {}
    for stamp, method, url, name in requests:
        path = url.split("?")[0].rstrip("/")
        parts = path.split("/")
        if "watch=" in url:
            continue
        subject = name or next((p for p in reversed(parts) if p.startswith(prefix)), "")
        if not owner_of(subject).startswith(prefix):
            continue
        resource = "status" if parts[-1] == "status" else next((p for p in reversed(parts) if p.endswith("s")), "?")
        by_verb[f"{method} {resource}"] += 1
        if (method == "POST" and parts[-1] in children) or (method == "PATCH" and parts[-2] in children):
            owner = owner_of(subject)  # created (POST) or applied (PATCH: created when missing)
            children_done[owner] = max(children_done.get(owner, 0.0), stamp)
    latencies = [children_done[name] - created_at[name] for name in created_at if name in children_done]
    writes = sum(n for key, n in by_verb.items() if key.split()[0] in ("POST", "PATCH") and key.split()[1] in children)
    # A TrainingJob's children: head and worker pods, head Service, NetworkPolicy.
    child_count = count * ((1 + WORKERS + 2) if prefix == "job-" else len(children))
    return {
        "objects": count,
        "requestsPerObjectByVerb": {key: round(n / count, 3) for key, n in sorted(by_verb.items())},
        "writesPerChild": round(writes / child_count, 3),
        "statusPatchesPerObject": round(by_verb["PATCH status"] / count, 3),
        "timeToChildrenSeconds": {
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p99": round(percentile(latencies, 0.99), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "objectsWithAllChildren": len(latencies),
    }


def print_table(result: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    for label, key in (("TrainingJobs", "trainingJob"), ("ModelServices", "modelService")):
        kind = result[key]
        if not kind:
            continue
        rows += [
            (label, str(kind["objects"]), ""),
            ("  writes per child to create it", str(kind["writesPerChild"]), "goal 1.0"),
            ("  status patches per object", str(kind["statusPatchesPerObject"]), "only on change"),
            ("  time to children p50", f"{kind['timeToChildrenSeconds']['p50']} s", ""),
            ("  time to children p99", f"{kind['timeToChildrenSeconds']['p99']} s", ""),
        ]
    rows += [
        (f"writes in {result['steadyStateSeconds']:.0f} s steady state", str(result["steadyStateWrites"]), "goal 0"),
        ("operator peak RSS", f"{result['peakRssMb']} MB", "goal < 200 MB"),
        ("operator CPU time, whole run", f"{result['operatorCpuSeconds']} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, goal in rows:
        print(f"{label:<{width}}  {value:>10}  {goal}")
    for label, key in (("TrainingJob", "trainingJob"), ("ModelService", "modelService")):
        if result[key]:
            print(f"requests per {label} by verb:")
            for verb, count in result[key]["requestsPerObjectByVerb"].items():
                print(f"  {verb:<28} {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.jobs, args.services, args.steady_seconds, args.resync_seconds))
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
