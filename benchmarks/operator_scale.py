"""How the operator scales: a burst of N TrainingJobs and M ModelServices against the emulated API server.

Runs the real operator process against KMock's emulator (server-side apply and admission
modelled), with a latency added to every request (`--api-latency-ms`, 10 by default: a real API
server's round trip for a write, so that the API server rather than this machine's CPU sets the
pace). The TrainingJobs are created first, then the ModelServices, `--create-concurrency` at a
time. Reports, per kind: the time from an object's creation to all its children being created
(p50, p99; also from the API server's answer to the create, which leaves out the time the
emulator took to take the create itself), writes per child created (1.0 is ideal), status
patches per object; then the writes in a steady state (0 is ideal), the operator's RSS before
the burst, at its peak and after it, after every object is deleted, its CPU time (which, unlike
wall-clock times, barely moves with the load other processes put on the machine), and the CPU
time of the emulated API server (this process), which shares the machine's cores with it; both
also per custom resource created (ms), until all children exist and until all are running.

    python benchmarks/operator_scale.py [--jobs 1000] [--services 1000] [--api-latency-ms 10] [--workers N]

`--operator-source DIR` runs the operator package found in DIR/operator instead (e.g. an export
of the previous version: `git archive main operator workloads | tar -x -C /tmp/previous`), for a
comparison in the same conditions. Prints a table and writes benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import kmock

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "workloads")]

from tests.operator.apiserver import ApiServer  # noqa: E402
from tests.operator.emulator import (  # noqa: E402
    NAMESPACE,
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

Arrival = tuple[float, str, str, str]
"""(when the answer was ready, method, URL, name of the object written)."""
HANDLING: contextvars.ContextVar[Any] = contextvars.ContextVar("handling")
"""The request the emulator is handling in this task (aiohttp handles each connection in a task)."""


class TimedEmulator(ApiServer):
    """The test emulator, noting when each request was answered."""

    arrivals: list[Arrival]

    def __iter__(self) -> Iterator[Any]:
        # kmock finds a request's reaction by looking for the request in its whole request log
        # (quadratic over a long run); while a request is handled, the log it sees is that request.
        current = HANDLING.get(None)
        if current is not None:
            yield current
        else:
            yield from super().__iter__()

    async def _handle(self, request: Any) -> Any:
        name = ""
        if isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name") or ""
        HANDLING.set(request)
        self._requests.clear()  # the arrivals are the benchmark's log
        response = await super()._handle(request)
        method = str(request.method).upper().rsplit(".", 1)[-1]
        self.arrivals.append((time.monotonic(), method, str(request.url), name))
        return response

    def count(self, plural: str, ready: Callable[[dict[str, Any]], bool] = lambda _: True) -> int:
        """Stored objects of a resource that satisfy `ready` (read in-process: listing over HTTP would
        cost the emulator, which shares this process, more than the operator's own requests)."""
        return sum(
            1
            for (resource, _, _), obj in list(self._objects.items())
            if resource.plural == plural and not obj.deleted and ready(obj.raw)
        )


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


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (the peak) of a process, in MB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(f"timed out waiting for {what}")


async def in_parallel(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> None:
    """Run the calls in order, `concurrency` at a time."""
    pending = iter(calls)

    async def lane() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(lane() for _ in range(concurrency)))


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") == phase


async def run(args: argparse.Namespace) -> dict[str, Any]:
    jobs, services = args.jobs, args.services
    emulator = TimedEmulator()
    emulator.arrivals = []
    load_before = os.getloadavg()
    async with emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as session:
        declare_resources(emulator)
        emulator.switches.latency_seconds = args.api_latency_ms / 1000
        cluster = Cluster(emulator, str(server.url), session)
        with tempfile.TemporaryDirectory() as scratch:
            env = {
                "MAAS_OPERATOR_RESYNC_SECONDS": str(args.resync_seconds),
                # Progress is polled from the heads, which do not exist here: fail at once.
                "MAAS_OPERATOR_PROGRESS_URL_TEMPLATE": "http://127.0.0.1:9/{namespace}/{name}",
            }
            if args.workers:
                env["MAAS_OPERATOR_WORKERS"] = str(args.workers)
            # Logs at INFO, as in production: kopf's debug log of every event costs CPU in a burst.
            operator = OperatorProcess(
                write_kubeconfig(cluster.url, pathlib.Path(scratch)),
                args.operator_log or pathlib.Path(scratch) / "operator.log",
                env,
                verbose=False,
            )
            if args.operator_source:
                source = args.operator_source
                operator.extra_env["PYTHONPATH"] = os.pathsep.join([f"{source}/operator", f"{source}/workloads"])
            operator.start()
            assert operator.process is not None
            pid = operator.process.pid
            try:
                await warm_up(emulator, cluster)
                rss_before = memory_mb(pid, "VmRSS")
                cpu_start = cpu_seconds(pid)
                created_at: dict[str, float] = {}
                answered_at: dict[str, float] = {}

                def creator(body: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
                    async def create() -> None:
                        created_at[body["metadata"]["name"]] = time.monotonic()
                        await cluster.create(body)
                        answered_at[body["metadata"]["name"]] = time.monotonic()

                    return create

                bodies = [trainingjob(i) for i in range(jobs)] + [modelservice(i) for i in range(services)]
                burst_start = time.monotonic()
                emulator_cpu_start = time.process_time()
                await in_parallel([creator(body) for body in bodies], args.create_concurrency)
                burst_created = time.monotonic() - burst_start
                await wait_until(
                    lambda: (
                        emulator.count("pods") >= jobs * (1 + WORKERS)
                        and emulator.count("networkpolicies") >= jobs
                        and emulator.count("poddisruptionbudgets") >= services
                    ),
                    900,
                    "every child",
                )
                cpu_children = cpu_seconds(pid) - cpu_start
                emulator_cpu_children = time.process_time() - emulator_cpu_start
                # Play the kubelet and the Deployment controller: everything runs.
                stored = [(r.plural, obj.raw) for (r, _, _), obj in list(emulator.objects.items()) if not obj.deleted]
                running = {"status": pod_status("Running")}
                await in_parallel(
                    [
                        *(_patcher(cluster, "Pod", o["metadata"]["name"], running) for p, o in stored if p == "pods"),
                        *(
                            _patcher(cluster, "Deployment", o["metadata"]["name"], rolled_out(o))
                            for p, o in stored
                            if p == "deployments"
                        ),
                    ],
                    args.create_concurrency,
                )
                await wait_until(
                    lambda: (
                        emulator.count("trainingjobs", phase_is("Running")) == jobs
                        and emulator.count("modelservices", phase_is("Ready")) == services
                    ),
                    900,
                    "every TrainingJob Running and every ModelService Ready",
                )
                settled = time.monotonic() - burst_start
                cpu_burst = cpu_seconds(pid) - cpu_start
                emulator_cpu_burst = time.process_time() - emulator_cpu_start
                await asyncio.sleep(2 * args.resync_seconds)  # let in-flight reconciles settle
                steady_start = time.monotonic()
                cpu_steady_start = cpu_seconds(pid)
                await asyncio.sleep(args.steady_seconds)
                steady_end = time.monotonic()
                cpu_steady = cpu_seconds(pid) - cpu_steady_start
                rss_after = memory_mb(pid, "VmRSS")
                rss_peak = memory_mb(pid, "VmHWM")
                rss_deleted = None
                if args.delete_after:
                    await _delete_everything(emulator, cluster, args.create_concurrency)
                    await asyncio.sleep(2 * args.resync_seconds + 5)
                    rss_deleted = memory_mb(pid, "VmRSS")
                cpu = cpu_seconds(pid)
            finally:
                operator.stop()

    operator_requests = [a for a in emulator.arrivals if not is_benchmark_request(a[1], a[2])]
    steady = [a for a in operator_requests if steady_start <= a[0] <= steady_end]
    return {
        "trainingJobs": jobs,
        "modelServices": services,
        "workersPerJob": WORKERS,
        "replicasPerService": SERVING_REPLICAS,
        "apiLatencyMs": args.api_latency_ms,
        "operatorWorkers": args.workers or "default",
        "operatorSource": args.operator_source or "this tree",
        "createConcurrency": args.create_concurrency,
        "resyncSeconds": args.resync_seconds,
        "loadAverage": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "burstCreateSeconds": round(burst_created, 2),
        "burstSettledSeconds": round(settled, 2),
        "trainingJob": per_kind(operator_requests, created_at, answered_at, "job-", jobs, TRAININGJOB_CHILDREN),
        "modelService": per_kind(operator_requests, created_at, answered_at, "svc-", services, MODELSERVICE_CHILDREN),
        "watchRequests": sum("watch=" in url for _, _, url, _ in operator_requests),
        "steadyStateSeconds": args.steady_seconds,
        "steadyStateWrites": sum(method in WRITE_VERBS for _, method, _, _ in steady),
        "steadyStateRequests": len([a for a in steady if "watch=" not in a[2]]),
        "rssMb": {
            "beforeBurst": round(rss_before, 1),
            "peak": round(rss_peak, 1),
            "afterBurst": round(rss_after, 1),
            "afterDelete": round(rss_deleted, 1) if rss_deleted is not None else None,
        },
        "operatorCpuSeconds": {
            "toChildren": round(cpu_children, 1),
            "burst": round(cpu_burst, 1),
            "steadyState": round(cpu_steady, 1),
            "wholeRun": round(cpu, 1),
        },
        # The emulated API server shares this process with the load driver (creates, kubelet).
        "apiServerCpuSecondsToChildren": round(emulator_cpu_children, 1),
        "apiServerCpuSecondsBurst": round(emulator_cpu_burst, 1),
        "cpuMsPerObject": {
            "operatorToChildren": round(1000 * cpu_children / (jobs + services), 2),
            "operatorBurst": round(1000 * cpu_burst / (jobs + services), 2),
            "apiServerToChildren": round(1000 * emulator_cpu_children / (jobs + services), 2),
            "apiServerBurst": round(1000 * emulator_cpu_burst / (jobs + services), 2),
        },
    }


async def warm_up(emulator: TimedEmulator, cluster: Cluster) -> None:
    """Reconcile one object of each kind, then delete them: the operator has imported and started
    everything a burst uses, so that its RSS before the burst is its resting size."""
    await cluster.create({**trainingjob(0), "metadata": {"name": "warm-up-job"}})
    await cluster.create({**modelservice(0), "metadata": {"name": "warm-up"}})
    await wait_until(
        lambda: emulator.count("trainingjobs", phase_is("Starting")) + emulator.count("poddisruptionbudgets") == 2,
        120,
        "the warm-up objects reconciled",
    )
    await _delete_everything(emulator, cluster, 8)
    await asyncio.sleep(5)


def _patcher(cluster: Cluster, kind: str, name: str, patch: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        await cluster.patch(kind, name, patch, "status")

    return call


async def _delete_everything(emulator: TimedEmulator, cluster: Cluster, concurrency: int) -> None:
    """Delete the custom resources and their children (the emulator runs no garbage collector)."""
    kinds = {"trainingjobs": "TrainingJob", "modelservices": "ModelService", "pods": "Pod", "services": "Service"}
    kinds |= {"deployments": "Deployment", "poddisruptionbudgets": "PodDisruptionBudget"}
    kinds |= {"networkpolicies": "NetworkPolicy", "horizontalpodautoscalers": "HorizontalPodAutoscaler"}
    doomed = [
        (kinds[resource.plural], name)
        for (resource, namespace, name), obj in list(emulator.objects.items())
        if resource.plural in kinds and namespace == NAMESPACE and not obj.deleted
    ]

    def deleter(kind: str, name: str) -> Callable[[], Awaitable[Any]]:
        return lambda: cluster.delete(kind, name)

    await in_parallel([deleter(kind, name) for kind, name in doomed], concurrency)


def per_kind(
    requests: list[Arrival],
    created_at: dict[str, float],
    answered_at: dict[str, float],
    prefix: str,
    count: int,
    children: tuple[str, ...],
) -> dict[str, Any]:
    """Requests per object by verb and resource, and the time from create (sent, and answered by the
    API server) to its last child create."""
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
    after_answer = [children_done[name] - answered_at[name] for name in answered_at if name in children_done]
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
        "timeFromCreateAnsweredSeconds": {
            "p50": round(statistics.median(after_answer), 3) if after_answer else None,
            "p99": round(percentile(after_answer, 0.99), 3) if after_answer else None,
        },
        "objectsWithAllChildren": len(latencies),
    }


def print_table(result: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    for label, key in (("TrainingJobs", "trainingJob"), ("ModelServices", "modelService")):
        kind = result[key]
        if not kind:
            continue
        times, answered = kind["timeToChildrenSeconds"], kind["timeFromCreateAnsweredSeconds"]
        rows += [
            (label, str(kind["objects"]), ""),
            ("  writes per child to create it", str(kind["writesPerChild"]), "goal 1.0"),
            ("  status patches per object", str(kind["statusPatchesPerObject"]), "only on change"),
            ("  time to children p50 / p99", f"{times['p50']} s / {times['p99']} s", "goal p99 < 5 s (2 s)"),
            ("  the same from the create's answer", f"{answered['p50']} s / {answered['p99']} s", ""),
        ]
    rss, cpu, load = result["rssMb"], result["operatorCpuSeconds"], result["loadAverage"]
    per_object = result["cpuMsPerObject"]
    rows += [
        (f"writes in {result['steadyStateSeconds']:.0f} s steady state", str(result["steadyStateWrites"]), "goal 0"),
        (
            "operator RSS before / peak / after the burst",
            f"{rss['beforeBurst']} / {rss['peak']} / {rss['afterBurst']} MB",
            "goal peak < 300, after within 20% of before",
        ),
        ("operator RSS after every object is deleted", f"{rss['afterDelete']} MB", ""),
        (
            "operator CPU to children / burst / steady",
            f"{cpu['toChildren']} / {cpu['burst']} / {cpu['steadyState']} s",
            "",
        ),
        (
            "emulated API server CPU to children / burst",
            f"{result['apiServerCpuSecondsToChildren']} / {result['apiServerCpuSecondsBurst']} s",
            "",
        ),
        (
            "CPU per object: operator to children / burst",
            f"{per_object['operatorToChildren']} / {per_object['operatorBurst']} ms",
            "",
        ),
        (
            "CPU per object: API server to children / burst",
            f"{per_object['apiServerToChildren']} / {per_object['apiServerBurst']} ms",
            "",
        ),
        ("creating the burst took", f"{result['burstCreateSeconds']} s", ""),
        ("load average before / after (1 min)", f"{load['before'][0]} / {load['after'][0]}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value, goal in rows:
        print(f"{label:<{width}}  {value:>24}  {goal}")
    for label, key in (("TrainingJob", "trainingJob"), ("ModelService", "modelService")):
        if result[key]:
            print(f"requests per {label} by verb:")
            for verb, count in result[key]["requestsPerObjectByVerb"].items():
                print(f"  {verb:<28} {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--api-latency-ms", type=float, default=10.0, help="added to every request (default 10)")
    parser.add_argument("--workers", type=int, default=0, help="the operator's concurrent reconciles (default its own)")
    parser.add_argument("--create-concurrency", type=int, default=32, help="creates in flight during the burst")
    parser.add_argument("--steady-seconds", type=float, default=30)
    parser.add_argument("--resync-seconds", type=float, default=10)
    parser.add_argument("--no-delete", dest="delete_after", action="store_false", help="skip the delete phase")
    parser.add_argument("--operator-source", help="a checkout whose operator/ and workloads/ to run instead")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--operator-log", type=pathlib.Path, help="keep the operator's log here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
